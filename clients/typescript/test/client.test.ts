// The TypeScript client against the real sidecar: registry calls, errors, deadlines, addresses.
import assert from "node:assert/strict";
import { after, before, describe, test } from "node:test";
import { ConnectError } from "@connectrpc/connect";
import {
  Code,
  ConnectorStatus,
  Reason,
  RulesSidecarClient,
  SidecarError,
} from "../src/index.js";
import { rejection, startHarness, type Harness } from "./harness.js";

function liveConnector(id: string, urlTemplate: string) {
  return { id, status: ConnectorStatus.LIVE, urlTemplate };
}

describe("client", () => {
  let harness: Harness;
  const clients: RulesSidecarClient[] = [];
  const connect = (address: string, timeoutMs = 5000) => {
    const client = new RulesSidecarClient(address, { timeoutMs });
    clients.push(client);
    return client;
  };
  before(async () => {
    harness = await startHarness();
  });
  after(async () => {
    clients.forEach((client) => client.close());
    await harness.stop();
  });

  test("register bumps the version and the registry reads it back", async () => {
    const sidecar = connect(harness.addresses.sidecar);
    const connector = liveConnector("ts-registry", `${harness.addresses.upstream}/vectors/x/{{n}}`);
    const first = await sidecar.registerConnector(connector);
    const second = await sidecar.registerConnector(connector, 1n);
    assert.deepEqual([first.created, first.connector?.version, second.created, second.connector?.version], [true, 1n, false, 2n]);
    assert.equal((await sidecar.getConnector("ts-registry")).urlTemplate, connector.urlTemplate);
    assert.equal(await sidecar.deleteConnector("ts-registry"), 2n);
    assert.equal((await rejection(sidecar.getConnector("ts-registry"))).code, Code.NotFound);
  });

  test("a validation error carries the field violations", async () => {
    const sidecar = connect(harness.addresses.sidecar);
    const error = await rejection(sidecar.registerConnector(liveConnector("Bad Id", "https://{{tenant}}.example.com/x")));
    assert.equal(error.code, Code.InvalidArgument);
    assert.ok(error instanceof ConnectError);
    const fields = error.violations.map((violation) => violation.field);
    assert.ok(fields.includes("connector.id") && fields.includes("connector.url_template"), fields.join(", "));
    assert.ok(error.violations.every((violation) => violation.description.length > 0));
  });

  test("a stale expected version is aborted", async () => {
    const sidecar = connect(harness.addresses.sidecar);
    const error = await rejection(
      sidecar.registerConnector(liveConnector("ts-conditional", `${harness.addresses.upstream}/vectors/x/y`), 7n),
    );
    assert.equal(error.code, Code.Aborted);
    assert.deepEqual(error.violations, []);
  });

  test("a unix socket address", async () => {
    const sidecar = connect(harness.addresses.sidecar_unix);
    const response = await sidecar.registerConnector(liveConnector("ts-unix", `${harness.addresses.upstream}/vectors/x/y`));
    assert.equal(response.connector?.id, "ts-unix");
  });

  test("extract variables from a native document", async () => {
    const sidecar = connect(harness.addresses.sidecar);
    const extracted = await sidecar.extractVariables(
      [
        { variable: "status", path: "order.status", required: true },
        { variable: "quantities", path: "order.items[*].qty" },
        { variable: "coupon", path: "order.coupon", required: true },
      ],
      { order: { status: "shipped", items: [{ qty: 2 }, { qty: 1 }] } },
    );
    assert.deepEqual(extracted.variables, { status: "shipped", quantities: [2, 1] });
    assert.equal(extracted.complete, false);
  });

  // Without the default deadline the call never ends and the test's own timeout fails it; elapsed
  // time is not asserted (timing belongs in the benchmark, not in pass/fail tests).
  test("the default deadline bounds a call to a silent server", { timeout: 60_000 }, async () => {
    const error = await rejection(connect(harness.addresses.silent, 300).getConnector("anything"));
    assert.equal(error.code, Code.DeadlineExceeded);
  });

  test("the deadline reaches the sidecar before a slow upstream", async () => {
    const sidecar = connect(harness.addresses.sidecar, 1000);
    await sidecar.registerConnector(liveConnector("ts-slow", `${harness.addresses.upstream}/slow/x`));
    const node = { connectorId: "ts-slow", branches: [{ target: "ok" }], errorTarget: "agent" };
    // The sidecar keeps 20 ms of the caller's deadline to answer ERROR/TIMEOUT in time; on a busy
    // machine the client's own timer may fire first. Either way the call ends at the deadline: a
    // call without one would wait out the upstream's 5 s and answer MATCHED "ok", which fails here.
    try {
      const answer = await sidecar.evaluateNode(node);
      assert.deepEqual([answer.reason, answer.target], [Reason.TIMEOUT, "agent"]);
    } catch (error) {
      assert.ok(error instanceof SidecarError && error.code === Code.DeadlineExceeded, String(error));
    }
  });
});
