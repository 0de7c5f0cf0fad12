package dev.rulessidecar.client;

import dev.rulessidecar.v1.Connector;
import dev.rulessidecar.v1.DeleteConnectorRequest;
import dev.rulessidecar.v1.EvaluateNodeRequest;
import dev.rulessidecar.v1.EvaluationMode;
import dev.rulessidecar.v1.ExtractVariablesRequest;
import dev.rulessidecar.v1.ExtractVariablesResponse;
import dev.rulessidecar.v1.Extraction;
import dev.rulessidecar.v1.GetConnectorRequest;
import dev.rulessidecar.v1.Node;
import dev.rulessidecar.v1.RegisterConnectorRequest;
import dev.rulessidecar.v1.RegisterConnectorResponse;
import dev.rulessidecar.v1.RulesSidecarServiceGrpc;
import dev.rulessidecar.v1.RulesSidecarServiceGrpc.RulesSidecarServiceBlockingStub;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.MethodDescriptor;
import io.grpc.StatusRuntimeException;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.concurrent.TimeUnit;
import java.util.function.Supplier;

/**
 * A connection to one sidecar, with plain Java maps for variables, a default deadline and {@link
 * SidecarException} for failed calls. Thread-safe; close it when done.
 *
 * <pre>{@code
 * try (var sidecar = new RulesSidecarClient("127.0.0.1:50051", Duration.ofSeconds(2))) {
 *   Evaluation evaluation = sidecar.evaluateNode(node, Map.of("order_number", "A-10023"));
 *   System.out.println(evaluation.target() + " " + evaluation.variables().get("order_status"));
 * }
 * }</pre>
 */
public final class RulesSidecarClient implements AutoCloseable {
  private final ManagedChannel channel;
  private final RulesSidecarServiceBlockingStub stub;

  /**
   * Connects (lazily, on the first call) to {@code address}: {@code host:port} or {@code
   * unix:/path/to/socket}, plaintext as a sidecar on loopback or a socket is. Every call without a
   * deadline of its own gets {@code timeout}.
   */
  public RulesSidecarClient(String address, Duration timeout) {
    this.channel = Grpc.newChannelBuilder(address, InsecureChannelCredentials.create()).build();
    Channel withDeadline = ClientInterceptors.intercept(channel, new DefaultDeadline(timeout));
    this.stub = RulesSidecarServiceGrpc.newBlockingStub(withDeadline);
  }

  /**
   * The generated blocking stub on the same connection and default deadline, for what this class
   * does not wrap (ListConnectors, explanations ...). It throws grpc's StatusRuntimeException.
   */
  public RulesSidecarServiceBlockingStub service() {
    return stub;
  }

  /** Creates or replaces a connector and returns it as stored, with its new version. */
  public RegisterConnectorResponse registerConnector(Connector connector) {
    return call(() -> stub.registerConnector(
        RegisterConnectorRequest.newBuilder().setConnector(connector).build()));
  }

  /** Like {@link #registerConnector(Connector)}, if the stored version is still {@code expected}. */
  public RegisterConnectorResponse registerConnector(Connector connector, long expectedVersion) {
    return call(() -> stub.registerConnector(RegisterConnectorRequest.newBuilder()
        .setConnector(connector)
        .setExpectedVersion(expectedVersion)
        .build()));
  }

  /** One connector; an unknown id throws with {@code NOT_FOUND}. */
  public Connector getConnector(String id) {
    return call(() -> stub.getConnector(GetConnectorRequest.newBuilder().setId(id).build()))
        .getConnector();
  }

  /** Deletes a connector and returns the version that was deleted. */
  public long deleteConnector(String id) {
    return call(() -> stub.deleteConnector(DeleteConnectorRequest.newBuilder().setId(id).build()))
        .getDeletedVersion();
  }

  /** Evaluates a node for one conversation whose variables are plain values. */
  public Evaluation evaluateNode(Node node, Map<String, ?> variables) {
    return evaluateNode(node, variables, EvaluationMode.EVALUATION_MODE_UNSPECIFIED);
  }

  /** Evaluates a node in a mode ({@code EVALUATION_MODE_TEST} also runs DRAFT connectors). */
  public Evaluation evaluateNode(Node node, Map<String, ?> variables, EvaluationMode mode) {
    EvaluateNodeRequest request = EvaluateNodeRequest.newBuilder()
        .setNode(node)
        .setVariables(Values.toStruct(variables))
        .setMode(mode)
        .build();
    return Evaluation.of(call(() -> stub.evaluateNode(request)));
  }

  /** Applies extractions to a document you already have (plain values); no HTTP call is made. */
  public Extracted extractVariables(List<Extraction> extractions, Object document) {
    ExtractVariablesRequest request = ExtractVariablesRequest.newBuilder()
        .addAllExtractions(extractions)
        .setJson(Values.toValue(document))
        .build();
    ExtractVariablesResponse response = call(() -> stub.extractVariables(request));
    return new Extracted(Values.toMap(response.getVariables()), response.getComplete(), response);
  }

  /** Closes the connection, waiting briefly for calls in flight. */
  @Override
  public void close() {
    channel.shutdown();
    try {
      if (!channel.awaitTermination(5, TimeUnit.SECONDS)) {
        channel.shutdownNow();
      }
    } catch (InterruptedException e) {
      channel.shutdownNow();
      Thread.currentThread().interrupt();
    }
  }

  private static <T> T call(Supplier<T> rpc) {
    try {
      return rpc.get();
    } catch (StatusRuntimeException e) {
      throw new SidecarException(e);
    }
  }

  /** Gives every call without a deadline the client's default. */
  private static final class DefaultDeadline implements ClientInterceptor {
    private final long timeoutNanos;

    DefaultDeadline(Duration timeout) {
      this.timeoutNanos = timeout.toNanos();
    }

    @Override
    public <Q, R> ClientCall<Q, R> interceptCall(
        MethodDescriptor<Q, R> method, CallOptions options, Channel next) {
      if (options.getDeadline() == null) {
        options = options.withDeadlineAfter(timeoutNanos, TimeUnit.NANOSECONDS);
      }
      return next.newCall(method, options);
    }
  }
}
