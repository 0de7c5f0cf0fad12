// Starts clients/testdata/harness.py (a real sidecar and a loopback upstream) for a test file.
import { spawn, type ChildProcess } from "node:child_process";
import { once } from "node:events";
import assert from "node:assert/strict";
import { readFileSync } from "node:fs";
import { createInterface } from "node:readline";
import { fileURLToPath } from "node:url";

import { SidecarError } from "../src/index.js";

const repoRoot = fileURLToPath(new URL("../../../../", import.meta.url)); // from dist/test/
export const testdata = `${repoRoot}clients/testdata/`;

/**
 * What the harness prints once the sidecars are SERVING: the plain sidecar, and the secured ones
 * (tokens and TLS; mTLS) with their CA, client certificate and tokens.
 */
export interface Addresses {
  sidecar: string;
  sidecar_unix: string;
  upstream: string;
  silent: string;
  secure_sidecar: string;
  mtls_sidecar: string;
  ca_file: string;
  client_cert_file: string;
  client_key_file: string;
  admin_token: string;
  evaluation_token: string;
}

export interface Harness {
  addresses: Addresses;
  stop(): Promise<void>;
}

export async function startHarness(): Promise<Harness> {
  const child: ChildProcess = spawn(`${repoRoot}.venv/bin/python`, [`${testdata}harness.py`], {
    stdio: ["pipe", "pipe", "inherit"],
  });
  const lines = createInterface({ input: child.stdout! });
  const exited = once(child, "exit").then(() => {
    throw new Error("the harness exited before it was ready (run scripts/bootstrap first)");
  });
  const [line] = (await Promise.race([once(lines, "line"), exited])) as [string];
  return {
    addresses: JSON.parse(line) as Addresses,
    async stop() {
      const done = once(child, "exit");
      child.stdin!.end(); // the harness stops the sidecar and cleans up
      lines.close();
      await done;
    },
  };
}

/** One case of clients/testdata/vectors.json; connector and node are proto3 JSON. */
export interface Vector {
  name: string;
  mode?: string;
  connector: Record<string, unknown>;
  node: Record<string, unknown>;
  variables: Record<string, unknown>;
  expect: {
    outcome: string;
    reason: string;
    target: string;
    branch_index: number | null;
    http_status: number;
    variables: Record<string, unknown>;
  };
}

export function loadVectors(): Vector[] {
  return (JSON.parse(readFileSync(`${testdata}vectors.json`, "utf8")) as { cases: Vector[] }).cases;
}

/** The SidecarError a call is expected to reject with; fails the test if it succeeds. */
export async function rejection(promise: Promise<unknown>): Promise<SidecarError> {
  try {
    await promise;
  } catch (error) {
    assert.ok(error instanceof SidecarError, `want a SidecarError, got ${String(error)}`);
    return error;
  }
  assert.fail("the call succeeded");
}
