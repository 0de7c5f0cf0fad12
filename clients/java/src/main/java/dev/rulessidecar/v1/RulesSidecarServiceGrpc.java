package dev.rulessidecar.v1;

import static io.grpc.MethodDescriptor.generateFullMethodName;

/**
 * <pre>
 * RulesSidecarService is the whole API of the sidecar: a connector registry and the evaluation of
 * API-conditional workflow nodes against those connectors.
 * </pre>
 */
@io.grpc.stub.annotations.GrpcGenerated
public final class RulesSidecarServiceGrpc {

  private RulesSidecarServiceGrpc() {}

  public static final java.lang.String SERVICE_NAME = "rulesidecar.v1.RulesSidecarService";

  // Static method descriptors that strictly reflect the proto.
  private static volatile io.grpc.MethodDescriptor<dev.rulessidecar.v1.RegisterConnectorRequest,
      dev.rulessidecar.v1.RegisterConnectorResponse> getRegisterConnectorMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "RegisterConnector",
      requestType = dev.rulessidecar.v1.RegisterConnectorRequest.class,
      responseType = dev.rulessidecar.v1.RegisterConnectorResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.rulessidecar.v1.RegisterConnectorRequest,
      dev.rulessidecar.v1.RegisterConnectorResponse> getRegisterConnectorMethod() {
    io.grpc.MethodDescriptor<dev.rulessidecar.v1.RegisterConnectorRequest, dev.rulessidecar.v1.RegisterConnectorResponse> getRegisterConnectorMethod;
    if ((getRegisterConnectorMethod = RulesSidecarServiceGrpc.getRegisterConnectorMethod) == null) {
      synchronized (RulesSidecarServiceGrpc.class) {
        if ((getRegisterConnectorMethod = RulesSidecarServiceGrpc.getRegisterConnectorMethod) == null) {
          RulesSidecarServiceGrpc.getRegisterConnectorMethod = getRegisterConnectorMethod =
              io.grpc.MethodDescriptor.<dev.rulessidecar.v1.RegisterConnectorRequest, dev.rulessidecar.v1.RegisterConnectorResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "RegisterConnector"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.RegisterConnectorRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.RegisterConnectorResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RulesSidecarServiceMethodDescriptorSupplier("RegisterConnector"))
              .build();
        }
      }
    }
    return getRegisterConnectorMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.rulessidecar.v1.GetConnectorRequest,
      dev.rulessidecar.v1.GetConnectorResponse> getGetConnectorMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "GetConnector",
      requestType = dev.rulessidecar.v1.GetConnectorRequest.class,
      responseType = dev.rulessidecar.v1.GetConnectorResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.rulessidecar.v1.GetConnectorRequest,
      dev.rulessidecar.v1.GetConnectorResponse> getGetConnectorMethod() {
    io.grpc.MethodDescriptor<dev.rulessidecar.v1.GetConnectorRequest, dev.rulessidecar.v1.GetConnectorResponse> getGetConnectorMethod;
    if ((getGetConnectorMethod = RulesSidecarServiceGrpc.getGetConnectorMethod) == null) {
      synchronized (RulesSidecarServiceGrpc.class) {
        if ((getGetConnectorMethod = RulesSidecarServiceGrpc.getGetConnectorMethod) == null) {
          RulesSidecarServiceGrpc.getGetConnectorMethod = getGetConnectorMethod =
              io.grpc.MethodDescriptor.<dev.rulessidecar.v1.GetConnectorRequest, dev.rulessidecar.v1.GetConnectorResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "GetConnector"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.GetConnectorRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.GetConnectorResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RulesSidecarServiceMethodDescriptorSupplier("GetConnector"))
              .build();
        }
      }
    }
    return getGetConnectorMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.rulessidecar.v1.ListConnectorsRequest,
      dev.rulessidecar.v1.ListConnectorsResponse> getListConnectorsMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ListConnectors",
      requestType = dev.rulessidecar.v1.ListConnectorsRequest.class,
      responseType = dev.rulessidecar.v1.ListConnectorsResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.rulessidecar.v1.ListConnectorsRequest,
      dev.rulessidecar.v1.ListConnectorsResponse> getListConnectorsMethod() {
    io.grpc.MethodDescriptor<dev.rulessidecar.v1.ListConnectorsRequest, dev.rulessidecar.v1.ListConnectorsResponse> getListConnectorsMethod;
    if ((getListConnectorsMethod = RulesSidecarServiceGrpc.getListConnectorsMethod) == null) {
      synchronized (RulesSidecarServiceGrpc.class) {
        if ((getListConnectorsMethod = RulesSidecarServiceGrpc.getListConnectorsMethod) == null) {
          RulesSidecarServiceGrpc.getListConnectorsMethod = getListConnectorsMethod =
              io.grpc.MethodDescriptor.<dev.rulessidecar.v1.ListConnectorsRequest, dev.rulessidecar.v1.ListConnectorsResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ListConnectors"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.ListConnectorsRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.ListConnectorsResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RulesSidecarServiceMethodDescriptorSupplier("ListConnectors"))
              .build();
        }
      }
    }
    return getListConnectorsMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.rulessidecar.v1.DeleteConnectorRequest,
      dev.rulessidecar.v1.DeleteConnectorResponse> getDeleteConnectorMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "DeleteConnector",
      requestType = dev.rulessidecar.v1.DeleteConnectorRequest.class,
      responseType = dev.rulessidecar.v1.DeleteConnectorResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.rulessidecar.v1.DeleteConnectorRequest,
      dev.rulessidecar.v1.DeleteConnectorResponse> getDeleteConnectorMethod() {
    io.grpc.MethodDescriptor<dev.rulessidecar.v1.DeleteConnectorRequest, dev.rulessidecar.v1.DeleteConnectorResponse> getDeleteConnectorMethod;
    if ((getDeleteConnectorMethod = RulesSidecarServiceGrpc.getDeleteConnectorMethod) == null) {
      synchronized (RulesSidecarServiceGrpc.class) {
        if ((getDeleteConnectorMethod = RulesSidecarServiceGrpc.getDeleteConnectorMethod) == null) {
          RulesSidecarServiceGrpc.getDeleteConnectorMethod = getDeleteConnectorMethod =
              io.grpc.MethodDescriptor.<dev.rulessidecar.v1.DeleteConnectorRequest, dev.rulessidecar.v1.DeleteConnectorResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "DeleteConnector"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.DeleteConnectorRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.DeleteConnectorResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RulesSidecarServiceMethodDescriptorSupplier("DeleteConnector"))
              .build();
        }
      }
    }
    return getDeleteConnectorMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.rulessidecar.v1.EvaluateNodeRequest,
      dev.rulessidecar.v1.EvaluateNodeResponse> getEvaluateNodeMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "EvaluateNode",
      requestType = dev.rulessidecar.v1.EvaluateNodeRequest.class,
      responseType = dev.rulessidecar.v1.EvaluateNodeResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.rulessidecar.v1.EvaluateNodeRequest,
      dev.rulessidecar.v1.EvaluateNodeResponse> getEvaluateNodeMethod() {
    io.grpc.MethodDescriptor<dev.rulessidecar.v1.EvaluateNodeRequest, dev.rulessidecar.v1.EvaluateNodeResponse> getEvaluateNodeMethod;
    if ((getEvaluateNodeMethod = RulesSidecarServiceGrpc.getEvaluateNodeMethod) == null) {
      synchronized (RulesSidecarServiceGrpc.class) {
        if ((getEvaluateNodeMethod = RulesSidecarServiceGrpc.getEvaluateNodeMethod) == null) {
          RulesSidecarServiceGrpc.getEvaluateNodeMethod = getEvaluateNodeMethod =
              io.grpc.MethodDescriptor.<dev.rulessidecar.v1.EvaluateNodeRequest, dev.rulessidecar.v1.EvaluateNodeResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "EvaluateNode"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.EvaluateNodeRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.EvaluateNodeResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RulesSidecarServiceMethodDescriptorSupplier("EvaluateNode"))
              .build();
        }
      }
    }
    return getEvaluateNodeMethod;
  }

  private static volatile io.grpc.MethodDescriptor<dev.rulessidecar.v1.ExtractVariablesRequest,
      dev.rulessidecar.v1.ExtractVariablesResponse> getExtractVariablesMethod;

  @io.grpc.stub.annotations.RpcMethod(
      fullMethodName = SERVICE_NAME + '/' + "ExtractVariables",
      requestType = dev.rulessidecar.v1.ExtractVariablesRequest.class,
      responseType = dev.rulessidecar.v1.ExtractVariablesResponse.class,
      methodType = io.grpc.MethodDescriptor.MethodType.UNARY)
  public static io.grpc.MethodDescriptor<dev.rulessidecar.v1.ExtractVariablesRequest,
      dev.rulessidecar.v1.ExtractVariablesResponse> getExtractVariablesMethod() {
    io.grpc.MethodDescriptor<dev.rulessidecar.v1.ExtractVariablesRequest, dev.rulessidecar.v1.ExtractVariablesResponse> getExtractVariablesMethod;
    if ((getExtractVariablesMethod = RulesSidecarServiceGrpc.getExtractVariablesMethod) == null) {
      synchronized (RulesSidecarServiceGrpc.class) {
        if ((getExtractVariablesMethod = RulesSidecarServiceGrpc.getExtractVariablesMethod) == null) {
          RulesSidecarServiceGrpc.getExtractVariablesMethod = getExtractVariablesMethod =
              io.grpc.MethodDescriptor.<dev.rulessidecar.v1.ExtractVariablesRequest, dev.rulessidecar.v1.ExtractVariablesResponse>newBuilder()
              .setType(io.grpc.MethodDescriptor.MethodType.UNARY)
              .setFullMethodName(generateFullMethodName(SERVICE_NAME, "ExtractVariables"))
              .setSampledToLocalTracing(true)
              .setRequestMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.ExtractVariablesRequest.getDefaultInstance()))
              .setResponseMarshaller(io.grpc.protobuf.ProtoUtils.marshaller(
                  dev.rulessidecar.v1.ExtractVariablesResponse.getDefaultInstance()))
              .setSchemaDescriptor(new RulesSidecarServiceMethodDescriptorSupplier("ExtractVariables"))
              .build();
        }
      }
    }
    return getExtractVariablesMethod;
  }

  /**
   * Creates a new async stub that supports all call types for the service
   */
  public static RulesSidecarServiceStub newStub(io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceStub>() {
        @java.lang.Override
        public RulesSidecarServiceStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new RulesSidecarServiceStub(channel, callOptions);
        }
      };
    return RulesSidecarServiceStub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports all types of calls on the service
   */
  public static RulesSidecarServiceBlockingV2Stub newBlockingV2Stub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceBlockingV2Stub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceBlockingV2Stub>() {
        @java.lang.Override
        public RulesSidecarServiceBlockingV2Stub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new RulesSidecarServiceBlockingV2Stub(channel, callOptions);
        }
      };
    return RulesSidecarServiceBlockingV2Stub.newStub(factory, channel);
  }

  /**
   * Creates a new blocking-style stub that supports unary and streaming output calls on the service
   */
  public static RulesSidecarServiceBlockingStub newBlockingStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceBlockingStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceBlockingStub>() {
        @java.lang.Override
        public RulesSidecarServiceBlockingStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new RulesSidecarServiceBlockingStub(channel, callOptions);
        }
      };
    return RulesSidecarServiceBlockingStub.newStub(factory, channel);
  }

  /**
   * Creates a new ListenableFuture-style stub that supports unary calls on the service
   */
  public static RulesSidecarServiceFutureStub newFutureStub(
      io.grpc.Channel channel) {
    io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceFutureStub> factory =
      new io.grpc.stub.AbstractStub.StubFactory<RulesSidecarServiceFutureStub>() {
        @java.lang.Override
        public RulesSidecarServiceFutureStub newStub(io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
          return new RulesSidecarServiceFutureStub(channel, callOptions);
        }
      };
    return RulesSidecarServiceFutureStub.newStub(factory, channel);
  }

  /**
   * <pre>
   * RulesSidecarService is the whole API of the sidecar: a connector registry and the evaluation of
   * API-conditional workflow nodes against those connectors.
   * </pre>
   */
  public interface AsyncService {

    /**
     * <pre>
     * RegisterConnector creates a connector or replaces the one with the same id, and bumps its version.
     * Invalid definitions answer INVALID_ARGUMENT with a google.rpc.BadRequest naming every bad field;
     * a mismatching expected_version answers ABORTED.
     * </pre>
     */
    default void registerConnector(dev.rulessidecar.v1.RegisterConnectorRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.RegisterConnectorResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getRegisterConnectorMethod(), responseObserver);
    }

    /**
     * <pre>
     * GetConnector returns one connector by id, or NOT_FOUND.
     * </pre>
     */
    default void getConnector(dev.rulessidecar.v1.GetConnectorRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.GetConnectorResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getGetConnectorMethod(), responseObserver);
    }

    /**
     * <pre>
     * ListConnectors pages through the connectors in id order.
     * </pre>
     */
    default void listConnectors(dev.rulessidecar.v1.ListConnectorsRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.ListConnectorsResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getListConnectorsMethod(), responseObserver);
    }

    /**
     * <pre>
     * DeleteConnector removes a connector, or answers NOT_FOUND.
     * </pre>
     */
    default void deleteConnector(dev.rulessidecar.v1.DeleteConnectorRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.DeleteConnectorResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getDeleteConnectorMethod(), responseObserver);
    }

    /**
     * <pre>
     * EvaluateNode renders the connector's request from the conversation's variables, calls the API,
     * and answers which branch of the node fires. Evaluation failures are answers (outcome ERROR with a
     * reason), not RPC errors; the RPC fails only for a malformed request.
     * </pre>
     */
    default void evaluateNode(dev.rulessidecar.v1.EvaluateNodeRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.EvaluateNodeResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getEvaluateNodeMethod(), responseObserver);
    }

    /**
     * <pre>
     * ExtractVariables applies extraction rules to a JSON document the caller already has; no HTTP call.
     * </pre>
     */
    default void extractVariables(dev.rulessidecar.v1.ExtractVariablesRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.ExtractVariablesResponse> responseObserver) {
      io.grpc.stub.ServerCalls.asyncUnimplementedUnaryCall(getExtractVariablesMethod(), responseObserver);
    }
  }

  /**
   * Base class for the server implementation of the service RulesSidecarService.
   * <pre>
   * RulesSidecarService is the whole API of the sidecar: a connector registry and the evaluation of
   * API-conditional workflow nodes against those connectors.
   * </pre>
   */
  public static abstract class RulesSidecarServiceImplBase
      implements io.grpc.BindableService, AsyncService {

    @java.lang.Override public final io.grpc.ServerServiceDefinition bindService() {
      return RulesSidecarServiceGrpc.bindService(this);
    }
  }

  /**
   * A stub to allow clients to do asynchronous rpc calls to service RulesSidecarService.
   * <pre>
   * RulesSidecarService is the whole API of the sidecar: a connector registry and the evaluation of
   * API-conditional workflow nodes against those connectors.
   * </pre>
   */
  public static final class RulesSidecarServiceStub
      extends io.grpc.stub.AbstractAsyncStub<RulesSidecarServiceStub> {
    private RulesSidecarServiceStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected RulesSidecarServiceStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new RulesSidecarServiceStub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterConnector creates a connector or replaces the one with the same id, and bumps its version.
     * Invalid definitions answer INVALID_ARGUMENT with a google.rpc.BadRequest naming every bad field;
     * a mismatching expected_version answers ABORTED.
     * </pre>
     */
    public void registerConnector(dev.rulessidecar.v1.RegisterConnectorRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.RegisterConnectorResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getRegisterConnectorMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * GetConnector returns one connector by id, or NOT_FOUND.
     * </pre>
     */
    public void getConnector(dev.rulessidecar.v1.GetConnectorRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.GetConnectorResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getGetConnectorMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * ListConnectors pages through the connectors in id order.
     * </pre>
     */
    public void listConnectors(dev.rulessidecar.v1.ListConnectorsRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.ListConnectorsResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getListConnectorsMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * DeleteConnector removes a connector, or answers NOT_FOUND.
     * </pre>
     */
    public void deleteConnector(dev.rulessidecar.v1.DeleteConnectorRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.DeleteConnectorResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getDeleteConnectorMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * EvaluateNode renders the connector's request from the conversation's variables, calls the API,
     * and answers which branch of the node fires. Evaluation failures are answers (outcome ERROR with a
     * reason), not RPC errors; the RPC fails only for a malformed request.
     * </pre>
     */
    public void evaluateNode(dev.rulessidecar.v1.EvaluateNodeRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.EvaluateNodeResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getEvaluateNodeMethod(), getCallOptions()), request, responseObserver);
    }

    /**
     * <pre>
     * ExtractVariables applies extraction rules to a JSON document the caller already has; no HTTP call.
     * </pre>
     */
    public void extractVariables(dev.rulessidecar.v1.ExtractVariablesRequest request,
        io.grpc.stub.StreamObserver<dev.rulessidecar.v1.ExtractVariablesResponse> responseObserver) {
      io.grpc.stub.ClientCalls.asyncUnaryCall(
          getChannel().newCall(getExtractVariablesMethod(), getCallOptions()), request, responseObserver);
    }
  }

  /**
   * A stub to allow clients to do synchronous rpc calls to service RulesSidecarService.
   * <pre>
   * RulesSidecarService is the whole API of the sidecar: a connector registry and the evaluation of
   * API-conditional workflow nodes against those connectors.
   * </pre>
   */
  public static final class RulesSidecarServiceBlockingV2Stub
      extends io.grpc.stub.AbstractBlockingStub<RulesSidecarServiceBlockingV2Stub> {
    private RulesSidecarServiceBlockingV2Stub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected RulesSidecarServiceBlockingV2Stub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new RulesSidecarServiceBlockingV2Stub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterConnector creates a connector or replaces the one with the same id, and bumps its version.
     * Invalid definitions answer INVALID_ARGUMENT with a google.rpc.BadRequest naming every bad field;
     * a mismatching expected_version answers ABORTED.
     * </pre>
     */
    public dev.rulessidecar.v1.RegisterConnectorResponse registerConnector(dev.rulessidecar.v1.RegisterConnectorRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getRegisterConnectorMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetConnector returns one connector by id, or NOT_FOUND.
     * </pre>
     */
    public dev.rulessidecar.v1.GetConnectorResponse getConnector(dev.rulessidecar.v1.GetConnectorRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getGetConnectorMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListConnectors pages through the connectors in id order.
     * </pre>
     */
    public dev.rulessidecar.v1.ListConnectorsResponse listConnectors(dev.rulessidecar.v1.ListConnectorsRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getListConnectorsMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * DeleteConnector removes a connector, or answers NOT_FOUND.
     * </pre>
     */
    public dev.rulessidecar.v1.DeleteConnectorResponse deleteConnector(dev.rulessidecar.v1.DeleteConnectorRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getDeleteConnectorMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * EvaluateNode renders the connector's request from the conversation's variables, calls the API,
     * and answers which branch of the node fires. Evaluation failures are answers (outcome ERROR with a
     * reason), not RPC errors; the RPC fails only for a malformed request.
     * </pre>
     */
    public dev.rulessidecar.v1.EvaluateNodeResponse evaluateNode(dev.rulessidecar.v1.EvaluateNodeRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getEvaluateNodeMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ExtractVariables applies extraction rules to a JSON document the caller already has; no HTTP call.
     * </pre>
     */
    public dev.rulessidecar.v1.ExtractVariablesResponse extractVariables(dev.rulessidecar.v1.ExtractVariablesRequest request) throws io.grpc.StatusException {
      return io.grpc.stub.ClientCalls.blockingV2UnaryCall(
          getChannel(), getExtractVariablesMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do limited synchronous rpc calls to service RulesSidecarService.
   * <pre>
   * RulesSidecarService is the whole API of the sidecar: a connector registry and the evaluation of
   * API-conditional workflow nodes against those connectors.
   * </pre>
   */
  public static final class RulesSidecarServiceBlockingStub
      extends io.grpc.stub.AbstractBlockingStub<RulesSidecarServiceBlockingStub> {
    private RulesSidecarServiceBlockingStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected RulesSidecarServiceBlockingStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new RulesSidecarServiceBlockingStub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterConnector creates a connector or replaces the one with the same id, and bumps its version.
     * Invalid definitions answer INVALID_ARGUMENT with a google.rpc.BadRequest naming every bad field;
     * a mismatching expected_version answers ABORTED.
     * </pre>
     */
    public dev.rulessidecar.v1.RegisterConnectorResponse registerConnector(dev.rulessidecar.v1.RegisterConnectorRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getRegisterConnectorMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * GetConnector returns one connector by id, or NOT_FOUND.
     * </pre>
     */
    public dev.rulessidecar.v1.GetConnectorResponse getConnector(dev.rulessidecar.v1.GetConnectorRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getGetConnectorMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ListConnectors pages through the connectors in id order.
     * </pre>
     */
    public dev.rulessidecar.v1.ListConnectorsResponse listConnectors(dev.rulessidecar.v1.ListConnectorsRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getListConnectorsMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * DeleteConnector removes a connector, or answers NOT_FOUND.
     * </pre>
     */
    public dev.rulessidecar.v1.DeleteConnectorResponse deleteConnector(dev.rulessidecar.v1.DeleteConnectorRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getDeleteConnectorMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * EvaluateNode renders the connector's request from the conversation's variables, calls the API,
     * and answers which branch of the node fires. Evaluation failures are answers (outcome ERROR with a
     * reason), not RPC errors; the RPC fails only for a malformed request.
     * </pre>
     */
    public dev.rulessidecar.v1.EvaluateNodeResponse evaluateNode(dev.rulessidecar.v1.EvaluateNodeRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getEvaluateNodeMethod(), getCallOptions(), request);
    }

    /**
     * <pre>
     * ExtractVariables applies extraction rules to a JSON document the caller already has; no HTTP call.
     * </pre>
     */
    public dev.rulessidecar.v1.ExtractVariablesResponse extractVariables(dev.rulessidecar.v1.ExtractVariablesRequest request) {
      return io.grpc.stub.ClientCalls.blockingUnaryCall(
          getChannel(), getExtractVariablesMethod(), getCallOptions(), request);
    }
  }

  /**
   * A stub to allow clients to do ListenableFuture-style rpc calls to service RulesSidecarService.
   * <pre>
   * RulesSidecarService is the whole API of the sidecar: a connector registry and the evaluation of
   * API-conditional workflow nodes against those connectors.
   * </pre>
   */
  public static final class RulesSidecarServiceFutureStub
      extends io.grpc.stub.AbstractFutureStub<RulesSidecarServiceFutureStub> {
    private RulesSidecarServiceFutureStub(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      super(channel, callOptions);
    }

    @java.lang.Override
    protected RulesSidecarServiceFutureStub build(
        io.grpc.Channel channel, io.grpc.CallOptions callOptions) {
      return new RulesSidecarServiceFutureStub(channel, callOptions);
    }

    /**
     * <pre>
     * RegisterConnector creates a connector or replaces the one with the same id, and bumps its version.
     * Invalid definitions answer INVALID_ARGUMENT with a google.rpc.BadRequest naming every bad field;
     * a mismatching expected_version answers ABORTED.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.rulessidecar.v1.RegisterConnectorResponse> registerConnector(
        dev.rulessidecar.v1.RegisterConnectorRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getRegisterConnectorMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * GetConnector returns one connector by id, or NOT_FOUND.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.rulessidecar.v1.GetConnectorResponse> getConnector(
        dev.rulessidecar.v1.GetConnectorRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getGetConnectorMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * ListConnectors pages through the connectors in id order.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.rulessidecar.v1.ListConnectorsResponse> listConnectors(
        dev.rulessidecar.v1.ListConnectorsRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getListConnectorsMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * DeleteConnector removes a connector, or answers NOT_FOUND.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.rulessidecar.v1.DeleteConnectorResponse> deleteConnector(
        dev.rulessidecar.v1.DeleteConnectorRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getDeleteConnectorMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * EvaluateNode renders the connector's request from the conversation's variables, calls the API,
     * and answers which branch of the node fires. Evaluation failures are answers (outcome ERROR with a
     * reason), not RPC errors; the RPC fails only for a malformed request.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.rulessidecar.v1.EvaluateNodeResponse> evaluateNode(
        dev.rulessidecar.v1.EvaluateNodeRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getEvaluateNodeMethod(), getCallOptions()), request);
    }

    /**
     * <pre>
     * ExtractVariables applies extraction rules to a JSON document the caller already has; no HTTP call.
     * </pre>
     */
    public com.google.common.util.concurrent.ListenableFuture<dev.rulessidecar.v1.ExtractVariablesResponse> extractVariables(
        dev.rulessidecar.v1.ExtractVariablesRequest request) {
      return io.grpc.stub.ClientCalls.futureUnaryCall(
          getChannel().newCall(getExtractVariablesMethod(), getCallOptions()), request);
    }
  }

  private static final int METHODID_REGISTER_CONNECTOR = 0;
  private static final int METHODID_GET_CONNECTOR = 1;
  private static final int METHODID_LIST_CONNECTORS = 2;
  private static final int METHODID_DELETE_CONNECTOR = 3;
  private static final int METHODID_EVALUATE_NODE = 4;
  private static final int METHODID_EXTRACT_VARIABLES = 5;

  private static final class MethodHandlers<Req, Resp> implements
      io.grpc.stub.ServerCalls.UnaryMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ServerStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.ClientStreamingMethod<Req, Resp>,
      io.grpc.stub.ServerCalls.BidiStreamingMethod<Req, Resp> {
    private final AsyncService serviceImpl;
    private final int methodId;

    MethodHandlers(AsyncService serviceImpl, int methodId) {
      this.serviceImpl = serviceImpl;
      this.methodId = methodId;
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public void invoke(Req request, io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        case METHODID_REGISTER_CONNECTOR:
          serviceImpl.registerConnector((dev.rulessidecar.v1.RegisterConnectorRequest) request,
              (io.grpc.stub.StreamObserver<dev.rulessidecar.v1.RegisterConnectorResponse>) responseObserver);
          break;
        case METHODID_GET_CONNECTOR:
          serviceImpl.getConnector((dev.rulessidecar.v1.GetConnectorRequest) request,
              (io.grpc.stub.StreamObserver<dev.rulessidecar.v1.GetConnectorResponse>) responseObserver);
          break;
        case METHODID_LIST_CONNECTORS:
          serviceImpl.listConnectors((dev.rulessidecar.v1.ListConnectorsRequest) request,
              (io.grpc.stub.StreamObserver<dev.rulessidecar.v1.ListConnectorsResponse>) responseObserver);
          break;
        case METHODID_DELETE_CONNECTOR:
          serviceImpl.deleteConnector((dev.rulessidecar.v1.DeleteConnectorRequest) request,
              (io.grpc.stub.StreamObserver<dev.rulessidecar.v1.DeleteConnectorResponse>) responseObserver);
          break;
        case METHODID_EVALUATE_NODE:
          serviceImpl.evaluateNode((dev.rulessidecar.v1.EvaluateNodeRequest) request,
              (io.grpc.stub.StreamObserver<dev.rulessidecar.v1.EvaluateNodeResponse>) responseObserver);
          break;
        case METHODID_EXTRACT_VARIABLES:
          serviceImpl.extractVariables((dev.rulessidecar.v1.ExtractVariablesRequest) request,
              (io.grpc.stub.StreamObserver<dev.rulessidecar.v1.ExtractVariablesResponse>) responseObserver);
          break;
        default:
          throw new AssertionError();
      }
    }

    @java.lang.Override
    @java.lang.SuppressWarnings("unchecked")
    public io.grpc.stub.StreamObserver<Req> invoke(
        io.grpc.stub.StreamObserver<Resp> responseObserver) {
      switch (methodId) {
        default:
          throw new AssertionError();
      }
    }
  }

  public static final io.grpc.ServerServiceDefinition bindService(AsyncService service) {
    return io.grpc.ServerServiceDefinition.builder(getServiceDescriptor())
        .addMethod(
          getRegisterConnectorMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.rulessidecar.v1.RegisterConnectorRequest,
              dev.rulessidecar.v1.RegisterConnectorResponse>(
                service, METHODID_REGISTER_CONNECTOR)))
        .addMethod(
          getGetConnectorMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.rulessidecar.v1.GetConnectorRequest,
              dev.rulessidecar.v1.GetConnectorResponse>(
                service, METHODID_GET_CONNECTOR)))
        .addMethod(
          getListConnectorsMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.rulessidecar.v1.ListConnectorsRequest,
              dev.rulessidecar.v1.ListConnectorsResponse>(
                service, METHODID_LIST_CONNECTORS)))
        .addMethod(
          getDeleteConnectorMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.rulessidecar.v1.DeleteConnectorRequest,
              dev.rulessidecar.v1.DeleteConnectorResponse>(
                service, METHODID_DELETE_CONNECTOR)))
        .addMethod(
          getEvaluateNodeMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.rulessidecar.v1.EvaluateNodeRequest,
              dev.rulessidecar.v1.EvaluateNodeResponse>(
                service, METHODID_EVALUATE_NODE)))
        .addMethod(
          getExtractVariablesMethod(),
          io.grpc.stub.ServerCalls.asyncUnaryCall(
            new MethodHandlers<
              dev.rulessidecar.v1.ExtractVariablesRequest,
              dev.rulessidecar.v1.ExtractVariablesResponse>(
                service, METHODID_EXTRACT_VARIABLES)))
        .build();
  }

  private static abstract class RulesSidecarServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoFileDescriptorSupplier, io.grpc.protobuf.ProtoServiceDescriptorSupplier {
    RulesSidecarServiceBaseDescriptorSupplier() {}

    @java.lang.Override
    public com.google.protobuf.Descriptors.FileDescriptor getFileDescriptor() {
      return dev.rulessidecar.v1.RulesSidecarProto.getDescriptor();
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.ServiceDescriptor getServiceDescriptor() {
      return getFileDescriptor().findServiceByName("RulesSidecarService");
    }
  }

  private static final class RulesSidecarServiceFileDescriptorSupplier
      extends RulesSidecarServiceBaseDescriptorSupplier {
    RulesSidecarServiceFileDescriptorSupplier() {}
  }

  private static final class RulesSidecarServiceMethodDescriptorSupplier
      extends RulesSidecarServiceBaseDescriptorSupplier
      implements io.grpc.protobuf.ProtoMethodDescriptorSupplier {
    private final java.lang.String methodName;

    RulesSidecarServiceMethodDescriptorSupplier(java.lang.String methodName) {
      this.methodName = methodName;
    }

    @java.lang.Override
    public com.google.protobuf.Descriptors.MethodDescriptor getMethodDescriptor() {
      return getServiceDescriptor().findMethodByName(methodName);
    }
  }

  private static volatile io.grpc.ServiceDescriptor serviceDescriptor;

  public static io.grpc.ServiceDescriptor getServiceDescriptor() {
    io.grpc.ServiceDescriptor result = serviceDescriptor;
    if (result == null) {
      synchronized (RulesSidecarServiceGrpc.class) {
        result = serviceDescriptor;
        if (result == null) {
          serviceDescriptor = result = io.grpc.ServiceDescriptor.newBuilder(SERVICE_NAME)
              .setSchemaDescriptor(new RulesSidecarServiceFileDescriptorSupplier())
              .addMethod(getRegisterConnectorMethod())
              .addMethod(getGetConnectorMethod())
              .addMethod(getListConnectorsMethod())
              .addMethod(getDeleteConnectorMethod())
              .addMethod(getEvaluateNodeMethod())
              .addMethod(getExtractVariablesMethod())
              .build();
        }
      }
    }
    return result;
  }
}
