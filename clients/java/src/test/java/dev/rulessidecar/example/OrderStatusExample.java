package dev.rulessidecar.example;

import dev.rulessidecar.client.Evaluation;
import dev.rulessidecar.client.RulesSidecarClient;
import dev.rulessidecar.client.SidecarException;
import dev.rulessidecar.client.Values;
import dev.rulessidecar.v1.ApiKeyAuth;
import dev.rulessidecar.v1.Auth;
import dev.rulessidecar.v1.Branch;
import dev.rulessidecar.v1.Condition;
import dev.rulessidecar.v1.Connector;
import dev.rulessidecar.v1.ConnectorStatus;
import dev.rulessidecar.v1.Extraction;
import dev.rulessidecar.v1.Node;
import dev.rulessidecar.v1.Operator;
import dev.rulessidecar.v1.RegisterConnectorResponse;
import dev.rulessidecar.v1.Subject;
import dev.rulessidecar.v1.SubjectKind;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;

/**
 * Registers an order-status connector with a running sidecar, evaluates a "Where is my order?"
 * node for one order and prints the branch and the extracted status.
 *
 * <p>With {@code make run} and {@code .venv/bin/python examples/demo_order_api.py} running: {@code
 * mvn -q test-compile exec:java -Dexec.args="[sidecar address] [order API base URL]"}. With
 * RULES_SIDECAR_TOKEN_FILE set (as deploy/examples/chat-backend sets it), sends that file's token,
 * read again when the file changes.
 */
public final class OrderStatusExample {
  private OrderStatusExample() {}

  public static void main(String[] args) {
    String address = args.length > 0 ? args[0] : "127.0.0.1:50051";
    String orderApi = args.length > 1 ? args[1] : "http://127.0.0.1:8081";
    RulesSidecarClient.Builder builder =
        RulesSidecarClient.builder(address).timeout(Duration.ofSeconds(5));
    String tokenFile = System.getenv("RULES_SIDECAR_TOKEN_FILE");
    if (tokenFile != null && !tokenFile.isEmpty()) {
      builder.tokenFile(Path.of(tokenFile));
    }
    try (RulesSidecarClient sidecar = builder.build()) {
      RegisterConnectorResponse registered = sidecar.registerConnector(Connector.newBuilder()
          .setId("order-status-example")
          .setDisplayName("Where is my order? (client example)")
          .setStatus(ConnectorStatus.CONNECTOR_STATUS_LIVE)
          .setUrlTemplate(orderApi + "/orders/{{order_number}}")
          .setAuth(Auth.newBuilder().setApiKey(
              ApiKeyAuth.newBuilder().setName("X-API-Key").setValueSecret("demo_store_api_key")))
          .build());
      System.out.printf("registered %s version %d%n",
          registered.getConnector().getId(), registered.getConnector().getVersion());

      Node node = Node.newBuilder()
          .setId("where-is-my-order")
          .setConnectorId("order-status-example")
          .addBranches(Branch.newBuilder()
              .setTarget("show-status")
              .addConditions(Condition.newBuilder()
                  .setSubject(Subject.newBuilder().setKind(SubjectKind.SUBJECT_KIND_STATUS))
                  .setOperator(Operator.OPERATOR_STATUS_CLASS)
                  .setOperand(Values.toValue("2xx"))))
          .setElseTarget("ask-for-the-number-again")
          .setErrorTarget("hand-off-to-an-agent")
          .addExtractions(
              Extraction.newBuilder().setVariable("order_status").setPath("status").setRequired(true))
          .build();
      for (String order : List.of("A-10023", "Z-1")) {
        Evaluation evaluation = sidecar.evaluateNode(node, Map.of("order_number", order));
        System.out.printf("order %s: %s branch=%d target=%s order_status=%s%n", order,
            evaluation.outcome(), evaluation.branchIndex().orElse(-1), evaluation.target(),
            evaluation.variables().getOrDefault("order_status", "<nil>"));
      }

      try {
        sidecar.registerConnector(Connector.newBuilder().setId("Bad Id").build());
      } catch (SidecarException e) {
        System.out.println("invalid connector: " + e.getStatus().getCode());
        e.getViolations().forEach(v -> System.out.printf("  %s: %s%n", v.field(), v.description()));
      }
    }
  }
}
