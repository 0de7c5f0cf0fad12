package dev.rulessidecar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertFalse;
import static org.junit.jupiter.api.Assertions.assertInstanceOf;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;
import static org.junit.jupiter.api.Assertions.fail;

import dev.rulessidecar.v1.Branch;
import dev.rulessidecar.v1.Connector;
import dev.rulessidecar.v1.ConnectorStatus;
import dev.rulessidecar.v1.Extraction;
import dev.rulessidecar.v1.Node;
import dev.rulessidecar.v1.Reason;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import java.io.IOException;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Arrays;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.Timeout;

/** The Java client against the real sidecar: registry calls, errors, deadlines, addresses. */
class RulesSidecarClientTest {
  private static Harness harness;
  private final List<RulesSidecarClient> clients = new ArrayList<>();

  @BeforeAll
  static void start() throws IOException {
    harness = Harness.start();
  }

  @AfterAll
  static void stop() throws Exception {
    harness.close();
  }

  @AfterEach
  void closeClients() {
    clients.forEach(RulesSidecarClient::close);
  }

  private RulesSidecarClient connect(String address, Duration timeout) {
    RulesSidecarClient client = new RulesSidecarClient(address, timeout);
    clients.add(client);
    return client;
  }

  private static Connector liveConnector(String id, String url) {
    return Connector.newBuilder()
        .setId(id)
        .setStatus(ConnectorStatus.CONNECTOR_STATUS_LIVE)
        .setUrlTemplate(url)
        .build();
  }

  @Test
  void registerBumpsTheVersionAndTheRegistryReadsItBack() {
    RulesSidecarClient sidecar = connect(harness.sidecar, Duration.ofSeconds(5));
    Connector connector = liveConnector("java-registry", harness.upstream + "/vectors/x/{{n}}");
    var first = sidecar.registerConnector(connector);
    var second = sidecar.registerConnector(connector, 1);
    assertEquals(List.of(true, 1L, false, 2L), List.of(first.getCreated(),
        first.getConnector().getVersion(), second.getCreated(), second.getConnector().getVersion()));
    assertEquals(connector.getUrlTemplate(), sidecar.getConnector("java-registry").getUrlTemplate());
    assertEquals(2, sidecar.deleteConnector("java-registry"));
    SidecarException missing =
        assertThrows(SidecarException.class, () -> sidecar.getConnector("java-registry"));
    assertEquals(Status.Code.NOT_FOUND, missing.getStatus().getCode());
  }

  @Test
  void validationErrorCarriesTheFieldViolations() {
    RulesSidecarClient sidecar = connect(harness.sidecar, Duration.ofSeconds(5));
    SidecarException error = assertThrows(SidecarException.class, () -> sidecar.registerConnector(
        liveConnector("Bad Id", "https://{{tenant}}.example.com/x")));
    assertEquals(Status.Code.INVALID_ARGUMENT, error.getStatus().getCode());
    assertInstanceOf(StatusRuntimeException.class, error);
    List<String> fields = error.getViolations().stream().map(FieldViolation::field).toList();
    assertTrue(fields.containsAll(List.of("connector.id", "connector.url_template")), fields.toString());
    assertTrue(error.getViolations().stream().noneMatch(v -> v.description().isEmpty()));
  }

  @Test
  void staleExpectedVersionIsAborted() {
    RulesSidecarClient sidecar = connect(harness.sidecar, Duration.ofSeconds(5));
    SidecarException error = assertThrows(SidecarException.class, () -> sidecar.registerConnector(
        liveConnector("java-conditional", harness.upstream + "/vectors/x/y"), 7));
    assertEquals(Status.Code.ABORTED, error.getStatus().getCode());
    assertEquals(List.of(), error.getViolations());
  }

  @Test
  void unixSocketAddress() {
    RulesSidecarClient sidecar = connect(harness.sidecarUnix, Duration.ofSeconds(5));
    var response = sidecar.registerConnector(
        liveConnector("java-unix", harness.upstream + "/vectors/x/y"));
    assertEquals("java-unix", response.getConnector().getId());
  }

  @Test
  void extractVariablesFromANativeDocument() {
    RulesSidecarClient sidecar = connect(harness.sidecar, Duration.ofSeconds(5));
    Map<String, Object> document = Map.of("order",
        Map.of("status", "shipped", "items", List.of(Map.of("qty", 2), Map.of("qty", 1))));
    Extracted extracted = sidecar.extractVariables(List.of(
        Extraction.newBuilder().setVariable("status").setPath("order.status").setRequired(true).build(),
        Extraction.newBuilder().setVariable("quantities").setPath("order.items[*].qty").build(),
        Extraction.newBuilder().setVariable("coupon").setPath("order.coupon").setRequired(true).build()),
        document);
    assertEquals(Map.of("status", "shipped", "quantities", List.of(2L, 1L)), extracted.variables());
    assertFalse(extracted.complete());
  }

  @Test
  void valuesRoundTripPlainJavaValues() {
    Map<String, Object> plain = new java.util.LinkedHashMap<>();
    plain.put("text", "x");
    plain.put("count", 3L);
    plain.put("ratio", 2.5);
    plain.put("flag", true);
    plain.put("nothing", null);
    plain.put("list", Arrays.asList(1L, "two", null));
    plain.put("nested", Map.of("a", List.of()));
    assertEquals(plain, Values.toMap(Values.toStruct(plain)));
  }

  // Without the default deadline the call never ends and @Timeout fails it; elapsed time is not
  // asserted (timing belongs in the benchmark, not in pass/fail tests).
  @Test
  @Timeout(60)
  void defaultDeadlineBoundsACallToASilentServer() {
    RulesSidecarClient sidecar = connect(harness.silent, Duration.ofMillis(300));
    SidecarException error =
        assertThrows(SidecarException.class, () -> sidecar.getConnector("anything"));
    assertEquals(Status.Code.DEADLINE_EXCEEDED, error.getStatus().getCode());
  }

  @Test
  void deadlineReachesTheSidecarBeforeASlowUpstream() {
    RulesSidecarClient sidecar = connect(harness.sidecar, Duration.ofSeconds(1));
    sidecar.registerConnector(liveConnector("java-slow", harness.upstream + "/slow/x"));
    Node node = Node.newBuilder()
        .setConnectorId("java-slow")
        .addBranches(Branch.newBuilder().setTarget("ok"))
        .setErrorTarget("agent")
        .build();
    // The sidecar keeps 20 ms of the caller's deadline to answer ERROR/TIMEOUT in time; on a busy
    // machine the client's own timer may fire first. Either way the call ends at the deadline: a
    // call without one would wait out the upstream's 5 s and answer MATCHED "ok", which fails here.
    try {
      Evaluation evaluation = sidecar.evaluateNode(node, Map.of());
      assertEquals(List.of(Reason.REASON_TIMEOUT, "agent"),
          List.of(evaluation.reason(), evaluation.target()));
    } catch (SidecarException e) {
      if (e.getStatus().getCode() != Status.Code.DEADLINE_EXCEEDED) {
        fail(e);
      }
    }
  }
}
