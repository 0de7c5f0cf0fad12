// Registers an order-status connector with a running sidecar, evaluates a "Where is my order?"
// node for one order and prints the branch and the extracted status.
//
// With `make run` and `.venv/bin/python examples/demo_order_api.py` running:
//   npm run example -- [sidecar address] [order API base URL]
// With RULES_SIDECAR_TOKEN_FILE set (as deploy/examples/chat-backend sets it), sends that file's
// token, read again when the file changes.
import {
  Code,
  ConnectorStatus,
  Operator,
  OutcomeSchema,
  RulesSidecarClient,
  SidecarError,
  SubjectKind,
  jsonValue,
  tokenFile,
} from "../src/index.js";

const [address = "127.0.0.1:50051", orderApi = "http://127.0.0.1:8081"] = process.argv.slice(2);
const tokenPath = process.env.RULES_SIDECAR_TOKEN_FILE;
const sidecar = new RulesSidecarClient(address, {
  timeoutMs: 5000,
  ...(tokenPath ? { token: tokenFile(tokenPath) } : {}),
});
try {
  const registered = await sidecar.registerConnector({
    id: "order-status-example",
    displayName: "Where is my order? (client example)",
    status: ConnectorStatus.LIVE,
    urlTemplate: `${orderApi}/orders/{{order_number}}`,
    auth: { scheme: { case: "apiKey", value: { name: "X-API-Key", valueSecret: "demo_store_api_key" } } },
  });
  console.log(`registered ${registered.connector?.id} version ${registered.connector?.version}`);

  const node = {
    id: "where-is-my-order",
    connectorId: "order-status-example",
    branches: [
      {
        target: "show-status",
        conditions: [
          { subject: { kind: SubjectKind.STATUS }, operator: Operator.STATUS_CLASS, operand: jsonValue("2xx") },
        ],
      },
    ],
    elseTarget: "ask-for-the-number-again",
    errorTarget: "hand-off-to-an-agent",
    extractions: [{ variable: "order_status", path: "status", required: true }],
  };
  for (const order of ["A-10023", "Z-1"]) {
    const answer = await sidecar.evaluateNode(node, { order_number: order });
    const outcome = OutcomeSchema.value[answer.outcome]?.name;
    console.log(
      `order ${order}: ${outcome} branch=${answer.branchIndex ?? -1} target=${answer.target} ` +
        `order_status=${String(answer.variables?.order_status ?? "<nil>")}`,
    );
  }

  try {
    await sidecar.registerConnector({ id: "Bad Id" });
  } catch (error) {
    if (!(error instanceof SidecarError)) throw error;
    console.log(`invalid connector: ${Code[error.code]}`);
    for (const violation of error.violations) console.log(`  ${violation.field}: ${violation.description}`);
  }
} finally {
  sidecar.close();
}
