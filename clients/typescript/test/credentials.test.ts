// The TypeScript client's credentials against sidecars that require tokens and serve TLS (and mTLS).
import assert from "node:assert/strict";
import { mkdtempSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { after, before, describe, test } from "node:test";
import {
  Code,
  ConnectorStatus,
  RulesSidecarClient,
  tokenFile,
  type ClientOptions,
  type TokenProvider,
} from "../src/index.js";
import { rejection, startHarness, type Harness } from "./harness.js";

describe("credentials", () => {
  let harness: Harness;
  let scratch: string;
  const clients: RulesSidecarClient[] = [];
  const connect = (address: string, options: ClientOptions) => {
    const client = new RulesSidecarClient(address, options);
    clients.push(client);
    return client;
  };
  const secure = (token?: string | TokenProvider, timeoutMs = 5000) =>
    connect(harness.addresses.secure_sidecar, {
      timeoutMs,
      tls: { caFile: harness.addresses.ca_file },
      ...(token === undefined ? {} : { token }),
    });
  const mutual = { caFile: "", certFile: "", keyFile: "" };
  const extractStatus = async (sidecar: RulesSidecarClient) =>
    (await sidecar.extractVariables([{ variable: "status", path: "order.status", required: true }], { order: { status: "shipped" } }))
      .variables?.status;
  const refusal = async (sidecar: RulesSidecarClient) => (await rejection(extractStatus(sidecar))).code;

  before(async () => {
    harness = await startHarness();
    scratch = mkdtempSync(join(tmpdir(), "ts-credentials-"));
    Object.assign(mutual, {
      caFile: harness.addresses.ca_file,
      certFile: harness.addresses.client_cert_file,
      keyFile: harness.addresses.client_key_file,
    });
  });
  after(async () => {
    clients.forEach((client) => client.close());
    rmSync(scratch, { recursive: true, force: true });
    await harness.stop();
  });

  test("the right tokens over TLS are accepted", async () => {
    assert.equal(await extractStatus(secure(harness.addresses.evaluation_token)), "shipped");
    const admin = secure(harness.addresses.admin_token);
    const registered = await admin.registerConnector({ id: "ts-secure", status: ConnectorStatus.LIVE, urlTemplate: "https://x.test/" });
    assert.equal(registered.connector?.id, "ts-secure");
    assert.equal(await admin.deleteConnector("ts-secure"), 1n);
  });

  test("no token or a wrong one is unauthenticated", async () => {
    assert.equal(await refusal(secure()), Code.Unauthenticated);
    assert.equal(await refusal(secure(`x${harness.addresses.admin_token}`)), Code.Unauthenticated);
  });

  test("the evaluation token may not register", async () => {
    const reader = secure(harness.addresses.evaluation_token);
    const error = await rejection(reader.registerConnector({ id: "ts-denied", status: ConnectorStatus.LIVE, urlTemplate: "https://x.test/" }));
    assert.equal(error.code, Code.PermissionDenied);
  });

  test("a rotated token file is read again", async () => {
    const path = join(scratch, "token");
    writeFileSync(path, "an-old-token-000000000\n");
    const sidecar = secure(tokenFile(path));
    assert.equal(await refusal(sidecar), Code.Unauthenticated);
    writeFileSync(`${path}.new`, `${harness.addresses.evaluation_token}\n`); // as the kubelet does:
    renameSync(`${path}.new`, path); // a new file renamed over the old one
    assert.equal(await extractStatus(sidecar), "shipped");
  });

  test("a token provider is asked before every call", async () => {
    const tokens = [harness.addresses.evaluation_token, "revoked-token-0000000000"];
    const sidecar = secure(() => tokens.shift() ?? "");
    assert.equal(await extractStatus(sidecar), "shipped");
    assert.equal(await refusal(sidecar), Code.Unauthenticated);
  });

  test("mTLS needs the client certificate", async () => {
    const token = harness.addresses.evaluation_token;
    assert.equal(await extractStatus(connect(harness.addresses.mtls_sidecar, { token, tls: mutual })), "shipped");
    const uncertified = connect(harness.addresses.mtls_sidecar, { token, timeoutMs: 2000, tls: { caFile: mutual.caFile } });
    // In TLS 1.3 the server refuses the missing certificate after the client's handshake is done;
    // Node's HTTP/2 then reports a cancelled stream or a failed session, depending on which it
    // sees first: the call fails either way, and never succeeds.
    const code = await refusal(uncertified);
    assert.ok([Code.Canceled, Code.Unavailable, Code.Internal].includes(code), Code[code]);
  });

  test("the client certificate as PEM", async () => {
    const tls = {
      ca: readFileSync(mutual.caFile, "utf8"),
      cert: readFileSync(mutual.certFile, "utf8"),
      key: readFileSync(mutual.keyFile),
    };
    const sidecar = connect(harness.addresses.mtls_sidecar, { token: harness.addresses.evaluation_token, tls });
    assert.equal(await extractStatus(sidecar), "shipped");
  });

  test("a server the CA does not vouch for is refused", async () => {
    // Node's default roots do not know the harness's throwaway CA.
    const sidecar = connect(harness.addresses.secure_sidecar, { token: harness.addresses.evaluation_token, timeoutMs: 2000, tls: {} });
    const error = await rejection(extractStatus(sidecar));
    assert.equal(error.code, Code.Internal);
    assert.match(error.message, /certificate/);
  });

  test("a token in plaintext goes to loopback only", async () => {
    // The plain sidecar requires no token: the calls show the token is accepted on loopback.
    const token = harness.addresses.evaluation_token;
    assert.equal(await extractStatus(connect(harness.addresses.sidecar, { token })), "shipped");
    assert.equal(await extractStatus(connect(harness.addresses.sidecar_unix, { token })), "shipped");
    assert.throws(() => connect("rules.internal:50051", { token }), /allowTokenWithoutTls/);
    assert.ok(connect("rules.internal:50051", { token, allowTokenWithoutTls: true }) instanceof RulesSidecarClient);
  });

  test("a certificate without its key is refused", () => {
    assert.throws(() => connect(harness.addresses.mtls_sidecar, { tls: { certFile: mutual.certFile } }), /needs its key/);
  });
});
