/**
 * A thin TypeScript client for rules-sidecar, on Connect-ES speaking the gRPC protocol (HTTP/2).
 *
 * The generated protobuf-es code (./gen) already reads `google.protobuf.Struct` as a plain
 * `JsonObject`, so visitor variables go in and extracted variables come out as plain objects.
 * This module adds only a client from an address ("host:port" or "unix:/path") with a default
 * deadline, a `SidecarError` whose `violations` are the request's invalid fields, and `jsonValue`
 * for the `google.protobuf.Value` fields of nodes (operands, defaults, body templates).
 *
 * ```ts
 * const sidecar = new RulesSidecarClient("127.0.0.1:50051", { timeoutMs: 2000 });
 * const answer = await sidecar.evaluateNode(node, { order_number: "A-10023" });
 * console.log(answer.target, answer.variables?.order_status);
 * sidecar.close();
 * ```
 *
 * A sidecar that requires tokens or serves TLS takes them as options:
 * `new RulesSidecarClient("rules.internal:50051", { token: tokenFile(path), tls: { caFile } })`.
 */
import { readFileSync } from "node:fs";
import { readFile, stat } from "node:fs/promises";
import * as net from "node:net";
import { fromJson, type JsonObject, type JsonValue, type MessageInitShape } from "@bufbuild/protobuf";
import { ValueSchema, type Value } from "@bufbuild/protobuf/wkt";
import {
  Code,
  ConnectError,
  createClient,
  type CallOptions,
  type Client,
  type Interceptor,
} from "@connectrpc/connect";
import { createGrpcTransport, Http2SessionManager } from "@connectrpc/connect-node";
import { BadRequestSchema } from "./gen/google/rpc/error_details_pb.js";
import {
  EvaluationMode,
  RulesSidecarService,
  type Connector,
  type ConnectorSchema,
  type EvaluateNodeResponse,
  type ExtractionSchema,
  type ExtractVariablesResponse,
  type NodeSchema,
  type RegisterConnectorResponse,
} from "./gen/rulesidecar/v1/rules_sidecar_pb.js";

export * from "./gen/rulesidecar/v1/rules_sidecar_pb.js";
export { Code } from "@connectrpc/connect";

/** Default deadline of every call, in milliseconds. */
export const DEFAULT_TIMEOUT_MS = 5000;

/** One invalid field of a request: its path (`connector.url_template`) and what is wrong. */
export interface FieldViolation {
  readonly field: string;
  readonly description: string;
}

/**
 * A failed call: a `ConnectError` (`.code` is a gRPC code, e.g. `Code.InvalidArgument` or
 * `Code.DeadlineExceeded`) with the field violations of the error's `google.rpc.BadRequest`.
 */
export class SidecarError extends ConnectError {
  /** The invalid fields an INVALID_ARGUMENT names; empty for other errors. */
  readonly violations: readonly FieldViolation[];

  constructor(error: ConnectError) {
    super(error.rawMessage, error.code, error.metadata, undefined, error.cause);
    this.details = error.details;
    this.violations = error
      .findDetails(BadRequestSchema)
      .flatMap((badRequest) => badRequest.fieldViolations)
      .map(({ field, description }) => ({ field, description }));
  }

  // ConnectError's own check recognises only its direct instances (and look-alikes named
  // "ConnectError", which this one stays, so `instanceof ConnectError` holds too).
  static override [Symbol.hasInstance](value: unknown): boolean {
    return typeof value === "object" && value !== null && SidecarError.prototype.isPrototypeOf(value);
  }
}

/** A bearer token, asked before every call (`tokenFile(path)` re-reads a mounted Secret). */
export type TokenProvider = () => string | Promise<string>;

/**
 * How to reach a sidecar that serves TLS. The CA as PEM (`ca`) or a file (`caFile`); neither
 * trusts Node's default roots. The client certificate and key likewise, for a sidecar that
 * requires one (mTLS). `serverName` overrides the name checked in the sidecar's certificate.
 */
export interface TlsOptions {
  readonly ca?: string | Buffer;
  readonly caFile?: string;
  readonly cert?: string | Buffer;
  readonly certFile?: string;
  readonly key?: string | Buffer;
  readonly keyFile?: string;
  readonly serverName?: string;
}

/**
 * Options of a client. `timeoutMs` is the deadline of a call that does not pass its own.
 * `token` is sent as `authorization: Bearer <token>`: a string or a provider. `tls` makes the
 * connection TLS (mTLS with a client certificate). A token travels in plaintext only to a
 * loopback address or a unix socket, unless `allowTokenWithoutTls` says the network is trusted
 * (a service mesh that encrypts the hop); otherwise the constructor throws.
 */
export interface ClientOptions {
  readonly timeoutMs?: number;
  readonly token?: string | TokenProvider;
  readonly tls?: TlsOptions;
  readonly allowTokenWithoutTls?: boolean;
}

/**
 * The token held in the file at `path` (surrounding whitespace trimmed), read again when the file
 * changes: a token mounted from a Kubernetes Secret is rotated without a restart. One stat per
 * call; the file is read again when its inode, size or modification time changes.
 */
export function tokenFile(path: string): TokenProvider {
  let seen = "";
  let token = "";
  return async () => {
    const info = await stat(path, { bigint: true });
    const now = `${info.ino}:${info.size}:${info.mtimeNs}`;
    if (now !== seen) {
      token = (await readFile(path, "utf8")).trim();
      seen = now;
    }
    return token;
  };
}

/** Options of one call: its own deadline, or a signal to cancel it. */
export type CallOverrides = Pick<CallOptions, "timeoutMs" | "signal">;

/** Turns a plain JSON value into a `google.protobuf.Value`, e.g. an operand: `jsonValue("2xx")`. */
export function jsonValue(value: JsonValue): Value {
  return fromJson(ValueSchema, value);
}

/** A connection to one sidecar; `close()` it when done. */
export class RulesSidecarClient {
  /** The generated Connect client on the same connection, with the same default deadline. */
  readonly service: Client<typeof RulesSidecarService>;
  readonly #sessions: Http2SessionManager;

  /**
   * `address` is "host:port" (plaintext HTTP/2, as on loopback, unless `options.tls`) or
   * "unix:/path/to/socket". A bad TLS file or a token refused in plaintext throws here.
   */
  constructor(address: string, options: ClientOptions = {}) {
    const socketPath = address.startsWith("unix:") ? address.slice("unix:".length) : undefined;
    const scheme = options.tls === undefined ? "http" : "https";
    const baseUrl = socketPath === undefined ? `${scheme}://${address}` : `${scheme}://localhost`;
    const plaintextToken = options.token !== undefined && options.tls === undefined;
    if (plaintextToken && !options.allowTokenWithoutTls && !isLocal(address)) {
      throw new Error(
        `a bearer token to ${address} without TLS would cross the network in plaintext: ` +
          "pass tls, or allowTokenWithoutTls: true if the network is trusted",
      );
    }
    this.#sessions = new Http2SessionManager(baseUrl, undefined, {
      ...(options.tls === undefined ? {} : tlsSessionOptions(options.tls)),
      ...(socketPath === undefined ? {} : { createConnection: () => net.connect(socketPath) }),
    });
    const transport = createGrpcTransport({
      baseUrl,
      sessionManager: this.#sessions,
      defaultTimeoutMs: options.timeoutMs ?? DEFAULT_TIMEOUT_MS,
      interceptors: options.token === undefined ? [] : [bearer(options.token)],
    });
    this.service = createClient(RulesSidecarService, transport);
  }

  /** Creates or replaces a connector; `expectedVersion` makes it conditional (ABORTED). */
  registerConnector(
    connector: MessageInitShape<typeof ConnectorSchema>,
    expectedVersion?: bigint,
    call?: CallOverrides,
  ): Promise<RegisterConnectorResponse> {
    return sidecarCall(this.service.registerConnector({ connector, expectedVersion }, call));
  }

  /** One connector; an unknown id rejects with `Code.NotFound`. */
  async getConnector(id: string, call?: CallOverrides): Promise<Connector> {
    const response = await sidecarCall(this.service.getConnector({ id }, call));
    if (response.connector === undefined) {
      throw new SidecarError(new ConnectError("the answer has no connector", Code.Internal));
    }
    return response.connector;
  }

  /** Deletes a connector and resolves to the version that was deleted. */
  async deleteConnector(id: string, expectedVersion?: bigint, call?: CallOverrides): Promise<bigint> {
    const response = await sidecarCall(this.service.deleteConnector({ id, expectedVersion }, call));
    return response.deletedVersion;
  }

  /**
   * Evaluates a node for one conversation. The answer's `variables` is a plain object, and
   * `branchIndex` is undefined unless a branch matched.
   */
  evaluateNode(
    node: MessageInitShape<typeof NodeSchema>,
    variables: JsonObject = {},
    options: { explain?: boolean; mode?: EvaluationMode } & CallOverrides = {},
  ): Promise<EvaluateNodeResponse> {
    const { explain = false, mode = EvaluationMode.UNSPECIFIED, ...call } = options;
    return sidecarCall(this.service.evaluateNode({ node, variables, explain, mode }, call));
  }

  /** Applies extractions to a JSON document you already have; no HTTP call is made. */
  extractVariables(
    extractions: MessageInitShape<typeof ExtractionSchema>[],
    document: JsonValue,
    call?: CallOverrides,
  ): Promise<ExtractVariablesResponse> {
    return sidecarCall(
      this.service.extractVariables(
        { extractions, document: { case: "json", value: jsonValue(document) } },
        call,
      ),
    );
  }

  /** Closes the HTTP/2 connection. */
  close(): void {
    this.#sessions.abort();
  }
}

function bearer(token: string | TokenProvider): Interceptor {
  const provide = typeof token === "string" ? () => token : token;
  return (next) => async (request) => {
    request.header.set("authorization", `Bearer ${await provide()}`);
    return next(request);
  };
}

function tlsSessionOptions(tls: TlsOptions) {
  const ca = pem(tls.ca, tls.caFile, "ca");
  const cert = pem(tls.cert, tls.certFile, "cert");
  const key = pem(tls.key, tls.keyFile, "key");
  if ((cert === undefined) !== (key === undefined)) {
    throw new Error("tls: a client certificate needs its key, and a key its certificate");
  }
  return {
    ...(ca === undefined ? {} : { ca }),
    ...(cert === undefined ? {} : { cert, key }),
    ...(tls.serverName === undefined ? {} : { servername: tls.serverName }),
  };
}

function pem(
  value: string | Buffer | undefined,
  file: string | undefined,
  name: string,
): string | Buffer | undefined {
  if (value !== undefined && file !== undefined) {
    throw new Error(`tls: give ${name} or ${name}File, not both`);
  }
  return file === undefined ? value : readFileSync(file);
}

/** A unix socket or a loopback address ("127.0.0.1:50051", "localhost:50051", "[::1]:50051"). */
function isLocal(address: string): boolean {
  if (address.startsWith("unix:")) {
    return true;
  }
  const host = address.replace(/:\d+$/, "").replace(/^\[(.*)\]$/, "$1");
  return host === "localhost" || host === "::1" || (net.isIPv4(host) && host.startsWith("127."));
}

async function sidecarCall<T>(call: Promise<T>): Promise<T> {
  try {
    return await call;
  } catch (error) {
    throw new SidecarError(ConnectError.from(error));
  }
}
