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
import io.grpc.CallCredentials;
import io.grpc.CallOptions;
import io.grpc.Channel;
import io.grpc.ChannelCredentials;
import io.grpc.ClientCall;
import io.grpc.ClientInterceptor;
import io.grpc.ClientInterceptors;
import io.grpc.CompositeChannelCredentials;
import io.grpc.Grpc;
import io.grpc.InsecureChannelCredentials;
import io.grpc.ManagedChannel;
import io.grpc.ManagedChannelBuilder;
import io.grpc.Metadata;
import io.grpc.MethodDescriptor;
import io.grpc.Status;
import io.grpc.StatusRuntimeException;
import io.grpc.TlsChannelCredentials;
import java.io.ByteArrayInputStream;
import java.io.IOException;
import java.io.UncheckedIOException;
import java.net.InetAddress;
import java.net.UnknownHostException;
import java.nio.file.Path;
import java.time.Duration;
import java.util.List;
import java.util.Map;
import java.util.Objects;
import java.util.concurrent.Executor;
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
 *
 * <p>A sidecar that requires tokens or serves TLS takes them through {@link #builder(String)}:
 *
 * <pre>{@code
 * var sidecar = RulesSidecarClient.builder("rules.internal:50051")
 *     .tokenFile(Path.of("/var/run/secrets/rules-sidecar/token"))
 *     .trustCertificates(Path.of("/etc/rules-sidecar/ca.pem"))
 *     .build();
 * }</pre>
 */
public final class RulesSidecarClient implements AutoCloseable {
  private static final Metadata.Key<String> AUTHORIZATION =
      Metadata.Key.of("authorization", Metadata.ASCII_STRING_MARSHALLER);

  private final ManagedChannel channel;
  private final RulesSidecarServiceBlockingStub stub;

  /**
   * Connects (lazily, on the first call) to {@code address}: {@code host:port} or {@code
   * unix:/path/to/socket}, plaintext as a sidecar on loopback or a socket is. Every call without a
   * deadline of its own gets {@code timeout}.
   */
  public RulesSidecarClient(String address, Duration timeout) {
    this(Grpc.newChannelBuilder(address, InsecureChannelCredentials.create()), timeout);
  }

  private RulesSidecarClient(ManagedChannelBuilder<?> builder, Duration timeout) {
    this.channel = builder.build();
    Channel withDeadline = ClientInterceptors.intercept(channel, new DefaultDeadline(timeout));
    this.stub = RulesSidecarServiceGrpc.newBlockingStub(withDeadline);
  }

  /** A builder for a client of {@code address} with a token, TLS or mTLS. */
  public static Builder builder(String address) {
    return new Builder(address);
  }

  /**
   * Settings of a client beyond address and deadline. A token is sent as {@code authorization:
   * Bearer <token>} call credentials; TLS comes from grpc's {@link TlsChannelCredentials}. A token
   * travels in plaintext only to a loopback address or a unix socket, unless {@link
   * #allowTokenWithoutTls()} says the network is trusted (a service mesh that encrypts the hop);
   * otherwise {@link #build()} throws IllegalStateException.
   */
  public static final class Builder {
    private final String address;
    private Duration timeout = Duration.ofSeconds(5);
    private Supplier<String> token;
    private TlsChannelCredentials.Builder tls;
    private ChannelCredentials channelCredentials;
    private boolean allowTokenWithoutTls;

    private Builder(String address) {
      this.address = Objects.requireNonNull(address);
    }

    /** The deadline of every call that has none of its own (5 s unless set). */
    public Builder timeout(Duration timeout) {
      this.timeout = Objects.requireNonNull(timeout);
      return this;
    }

    /** Sends this token with every call. */
    public Builder token(String token) {
      Objects.requireNonNull(token);
      return tokenSupplier(() -> token);
    }

    /**
     * Sends the token held in {@code path}, read again when the file changes ({@link TokenFile}):
     * a token mounted from a Kubernetes Secret is rotated without a restart.
     */
    public Builder tokenFile(Path path) {
      return tokenSupplier(new TokenFile(path));
    }

    /** Sends the token {@code supplier} returns, asked before every call (off the caller's thread). */
    public Builder tokenSupplier(Supplier<String> supplier) {
      this.token = Objects.requireNonNull(supplier);
      return this;
    }

    /** TLS, trusting the CA certificates in this PEM file (without it: the JDK's roots). */
    public Builder trustCertificates(Path caFile) {
      try {
        tls().trustManager(caFile.toFile());
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read the CA file " + caFile, e);
      }
      return this;
    }

    /** TLS, trusting the CA certificates in these PEM bytes. */
    public Builder trustCertificates(byte[] caPem) {
      try {
        tls().trustManager(new ByteArrayInputStream(caPem));
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read the CA certificates", e);
      }
      return this;
    }

    /** TLS with a client certificate (mTLS): a PEM chain and its PKCS#8 PEM key. */
    public Builder clientCertificate(Path certificateChainFile, Path privateKeyFile) {
      try {
        tls().keyManager(certificateChainFile.toFile(), privateKeyFile.toFile());
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read the client certificate or key", e);
      }
      return this;
    }

    /** TLS with a client certificate (mTLS) from PEM bytes (the key PKCS#8). */
    public Builder clientCertificate(byte[] certificateChainPem, byte[] privateKeyPem) {
      try {
        tls().keyManager(
            new ByteArrayInputStream(certificateChainPem), new ByteArrayInputStream(privateKeyPem));
      } catch (IOException e) {
        throw new UncheckedIOException("cannot read the client certificate or key", e);
      }
      return this;
    }

    /** TLS trusting the JDK's default roots (no CA of your own, no client certificate). */
    public Builder useTls() {
      tls();
      return this;
    }

    /** Channel credentials of your own (they replace the TLS settings above). */
    public Builder channelCredentials(ChannelCredentials credentials) {
      this.channelCredentials = Objects.requireNonNull(credentials);
      return this;
    }

    /** Lets a token travel without TLS to an address that is not loopback or a unix socket. */
    public Builder allowTokenWithoutTls() {
      this.allowTokenWithoutTls = true;
      return this;
    }

    /** The client; the connection is made lazily, on the first call. */
    public RulesSidecarClient build() {
      ChannelCredentials transport = channelCredentials;
      if (transport == null) {
        transport = tls != null ? tls.build() : InsecureChannelCredentials.create();
      }
      boolean plaintext = transport instanceof InsecureChannelCredentials;
      if (token != null && plaintext && !allowTokenWithoutTls && !isLocal(address)) {
        throw new IllegalStateException("a bearer token to " + address + " without TLS would "
            + "cross the network in plaintext: set trustCertificates/useTls, or "
            + "allowTokenWithoutTls() if the network is trusted");
      }
      if (token != null) {
        transport = CompositeChannelCredentials.create(transport, new BearerToken(token));
      }
      return new RulesSidecarClient(Grpc.newChannelBuilder(address, transport), timeout);
    }

    private TlsChannelCredentials.Builder tls() {
      if (tls == null) {
        tls = TlsChannelCredentials.newBuilder();
      }
      return tls;
    }
  }

  /** A unix socket or a loopback address (127.0.0.1:50051, localhost:50051, [::1]:50051). */
  static boolean isLocal(String address) {
    if (address.startsWith("unix:")) {
      return true;
    }
    String host = address.replaceFirst("^dns:///", "");
    if (host.startsWith("[")) {
      int end = host.indexOf(']');
      host = end < 0 ? host : host.substring(1, end);
    } else if (host.indexOf(':') == host.lastIndexOf(':') && host.contains(":")) {
      host = host.substring(0, host.indexOf(':'));
    }
    if (host.equals("localhost")) {
      return true;
    }
    if (!host.matches("[0-9.]+|[0-9a-fA-F:]+")) {
      return false; // a name: no DNS lookup to decide
    }
    try {
      return InetAddress.getByName(host).isLoopbackAddress();
    } catch (UnknownHostException e) {
      return false;
    }
  }

  /** The token as call credentials, asked on grpc's application executor (it may read a file). */
  private static final class BearerToken extends CallCredentials {
    private final Supplier<String> token;

    BearerToken(Supplier<String> token) {
      this.token = token;
    }

    @Override
    public void applyRequestMetadata(
        RequestInfo requestInfo, Executor appExecutor, MetadataApplier applier) {
      appExecutor.execute(() -> {
        try {
          Metadata headers = new Metadata();
          headers.put(AUTHORIZATION, "Bearer " + token.get());
          applier.apply(headers);
        } catch (RuntimeException e) {
          applier.fail(Status.UNAUTHENTICATED
              .withDescription("cannot get the bearer token: " + e.getMessage())
              .withCause(e));
        }
      });
    }
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
