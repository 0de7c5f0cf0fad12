package dev.rulessidecar.client;

import static org.junit.jupiter.api.Assertions.assertEquals;
import static org.junit.jupiter.api.Assertions.assertThrows;
import static org.junit.jupiter.api.Assertions.assertTrue;

import dev.rulessidecar.v1.Connector;
import dev.rulessidecar.v1.ConnectorStatus;
import dev.rulessidecar.v1.Extraction;
import io.grpc.Status;
import java.io.IOException;
import java.nio.file.Files;
import java.nio.file.Path;
import java.nio.file.StandardCopyOption;
import java.time.Duration;
import java.util.ArrayList;
import java.util.Iterator;
import java.util.List;
import java.util.Map;
import org.junit.jupiter.api.AfterAll;
import org.junit.jupiter.api.AfterEach;
import org.junit.jupiter.api.BeforeAll;
import org.junit.jupiter.api.Test;
import org.junit.jupiter.api.io.TempDir;

/** The Java client's credentials against sidecars that require tokens and serve TLS (and mTLS). */
class CredentialsTest {
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

  private RulesSidecarClient keep(RulesSidecarClient client) {
    clients.add(client);
    return client;
  }

  /** A builder for the TLS sidecar, trusting the harness's CA. */
  private RulesSidecarClient.Builder secure() {
    return RulesSidecarClient.builder(harness.secureSidecar).trustCertificates(harness.caFile);
  }

  private static Object extractStatus(RulesSidecarClient sidecar) {
    Extraction status = Extraction.newBuilder()
        .setVariable("status").setPath("order.status").setRequired(true).build();
    return sidecar.extractVariables(List.of(status), Map.of("order", Map.of("status", "shipped")))
        .variables().get("status");
  }

  private static Status.Code refusal(RulesSidecarClient sidecar) {
    return assertThrows(SidecarException.class, () -> extractStatus(sidecar)).getStatus().getCode();
  }

  private static Connector connector(String id) {
    return Connector.newBuilder()
        .setId(id)
        .setStatus(ConnectorStatus.CONNECTOR_STATUS_LIVE)
        .setUrlTemplate("https://x.test/")
        .build();
  }

  @Test
  void theRightTokensOverTlsAreAccepted() {
    assertEquals("shipped", extractStatus(keep(secure().token(harness.evaluationToken).build())));
    RulesSidecarClient admin = keep(secure().token(harness.adminToken).build());
    assertEquals("java-secure", admin.registerConnector(connector("java-secure")).getConnector().getId());
    assertEquals(1, admin.deleteConnector("java-secure"));
  }

  @Test
  void noTokenOrAWrongOneIsUnauthenticated() {
    assertEquals(Status.Code.UNAUTHENTICATED, refusal(keep(secure().build())));
    assertEquals(Status.Code.UNAUTHENTICATED,
        refusal(keep(secure().token("x" + harness.adminToken).build())));
  }

  @Test
  void theEvaluationTokenMayNotRegister() {
    RulesSidecarClient reader = keep(secure().token(harness.evaluationToken).build());
    SidecarException refused = assertThrows(
        SidecarException.class, () -> reader.registerConnector(connector("java-denied")));
    assertEquals(Status.Code.PERMISSION_DENIED, refused.getStatus().getCode());
  }

  @Test
  void aRotatedTokenFileIsReadAgain(@TempDir Path scratch) throws IOException {
    Path token = scratch.resolve("token");
    Files.writeString(token, "an-old-token-000000000\n");
    RulesSidecarClient sidecar = keep(secure().tokenFile(token).build());
    assertEquals(Status.Code.UNAUTHENTICATED, refusal(sidecar));
    // As the kubelet does: a new file renamed over the old one.
    Path staged = Files.writeString(scratch.resolve("token.new"), harness.evaluationToken + "\n");
    Files.move(staged, token, StandardCopyOption.REPLACE_EXISTING, StandardCopyOption.ATOMIC_MOVE);
    assertEquals("shipped", extractStatus(sidecar));
  }

  @Test
  void aTokenSupplierIsAskedBeforeEveryCall() {
    Iterator<String> tokens = List.of(harness.evaluationToken, "revoked-token-0000000000").iterator();
    RulesSidecarClient sidecar = keep(secure().tokenSupplier(tokens::next).build());
    assertEquals("shipped", extractStatus(sidecar));
    assertEquals(Status.Code.UNAUTHENTICATED, refusal(sidecar));
  }

  @Test
  void mtlsNeedsTheClientCertificate() {
    RulesSidecarClient certified = keep(RulesSidecarClient.builder(harness.mtlsSidecar)
        .token(harness.evaluationToken)
        .trustCertificates(harness.caFile)
        .clientCertificate(harness.clientCertFile, harness.clientKeyFile)
        .build());
    assertEquals("shipped", extractStatus(certified));
    RulesSidecarClient uncertified = keep(RulesSidecarClient.builder(harness.mtlsSidecar)
        .timeout(Duration.ofSeconds(2))
        .token(harness.evaluationToken)
        .trustCertificates(harness.caFile)
        .build());
    assertEquals(Status.Code.UNAVAILABLE, refusal(uncertified));
  }

  @Test
  void theClientCertificateAsBytes() throws IOException {
    RulesSidecarClient sidecar = keep(RulesSidecarClient.builder(harness.mtlsSidecar)
        .token(harness.evaluationToken)
        .trustCertificates(Files.readAllBytes(harness.caFile))
        .clientCertificate(
            Files.readAllBytes(harness.clientCertFile), Files.readAllBytes(harness.clientKeyFile))
        .build());
    assertEquals("shipped", extractStatus(sidecar));
  }

  @Test
  void aServerTheCaDoesNotVouchForIsUnavailable() {
    // The JDK's roots do not know the harness's throwaway CA. The handshake fails at once; the
    // deadline is generous so a loaded machine cannot turn UNAVAILABLE into DEADLINE_EXCEEDED.
    RulesSidecarClient sidecar = keep(RulesSidecarClient.builder(harness.secureSidecar)
        .timeout(Duration.ofSeconds(30))
        .token(harness.evaluationToken)
        .useTls()
        .build());
    assertEquals(Status.Code.UNAVAILABLE, refusal(sidecar));
  }

  @Test
  void aTokenInPlaintextGoesToLoopbackOnly() {
    // The plain sidecar requires no token: the calls show the token is accepted on loopback.
    assertEquals("shipped", extractStatus(keep(
        RulesSidecarClient.builder(harness.sidecar).token(harness.evaluationToken).build())));
    assertEquals("shipped", extractStatus(keep(
        RulesSidecarClient.builder(harness.sidecarUnix).token(harness.evaluationToken).build())));
    IllegalStateException refused = assertThrows(IllegalStateException.class,
        () -> RulesSidecarClient.builder("rules.internal:50051").token(harness.adminToken).build());
    assertTrue(refused.getMessage().contains("allowTokenWithoutTls"), refused.getMessage());
    keep(RulesSidecarClient.builder("rules.internal:50051")
        .token(harness.adminToken).allowTokenWithoutTls().build());
  }

  @Test
  void loopbackIsToldFromTheNetwork() {
    for (String local : List.of("127.0.0.1:50051", "localhost:50051", "[::1]:50051", "unix:/run/s.sock")) {
      assertTrue(RulesSidecarClient.isLocal(local), local);
    }
    for (String remote : List.of("10.0.0.7:50051", "rules.internal:50051", "[2001:db8::1]:50051")) {
      assertTrue(!RulesSidecarClient.isLocal(remote), remote);
    }
  }
}
