package dev.rulessidecar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;

import com.google.protobuf.Struct;
import com.google.protobuf.Value;
import com.google.protobuf.util.JsonFormat;
import dev.rulessidecar.v1.Connector;
import dev.rulessidecar.v1.EvaluationMode;
import dev.rulessidecar.v1.Node;
import java.io.IOException;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.stream.Stream;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.DynamicTest;
import org.junit.jupiter.api.TestFactory;

/** clients/testdata/vectors.json through the Java client: the same cases every client runs. */
class VectorsTest {
  private static Harness harness;
  private static RulesSidecarClient sidecar;

  @BeforeAll
  static void start() throws IOException {
    harness = Harness.start();
    sidecar = new RulesSidecarClient(harness.sidecar, Duration.ofSeconds(5));
  }

  @AfterAll
  static void stop() throws Exception {
    sidecar.close();
    harness.close();
  }

  @TestFactory
  Stream<DynamicTest> vectors() throws IOException {
    return Harness.vectors().stream().map(vector -> DynamicTest.dynamicTest(
        vector.getFieldsOrThrow("name").getStringValue(), () -> run(vector)));
  }

  private static void run(Struct vector) throws IOException {
    String connectorJson = JsonFormat.printer().print(vector.getFieldsOrThrow("connector"))
        .replace("${UPSTREAM}", harness.upstream);
    Connector.Builder connector = Connector.newBuilder();
    JsonFormat.parser().merge(connectorJson, connector);
    Node.Builder node = Node.newBuilder();
    JsonFormat.parser().merge(JsonFormat.printer().print(vector.getFieldsOrThrow("node")), node);
    EvaluationMode mode = EvaluationMode.valueOf(vector.getFieldsOrDefault(
        "mode", Value.newBuilder().setStringValue("EVALUATION_MODE_UNSPECIFIED").build())
        .getStringValue());

    sidecar.registerConnector(connector.build());
    Evaluation evaluation = sidecar.evaluateNode(
        node.build(), Values.toMap(vector.getFieldsOrThrow("variables").getStructValue()), mode);

    Map<String, Object> expect = Values.toMap(vector.getFieldsOrThrow("expect").getStructValue());
    Object branchIndex = evaluation.branchIndex().isPresent()
        ? (Object) (long) evaluation.branchIndex().getAsInt() : null;
    assertEquals(
        List.of(expect.get("outcome"), expect.get("reason"), expect.get("target"),
            String.valueOf(expect.get("branch_index")), expect.get("http_status")),
        List.of(evaluation.outcome().name(), evaluation.reason().name(), evaluation.target(),
            String.valueOf(branchIndex), (long) evaluation.httpStatus()),
        evaluation.message());
    assertEquals(expect.get("variables"), evaluation.variables());
  }
}
