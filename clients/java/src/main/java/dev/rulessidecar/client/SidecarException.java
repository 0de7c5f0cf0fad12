package dev.rulessidecar.client;

import com.google.protobuf.Any;
import com.google.protobuf.InvalidProtocolBufferException;
import com.google.rpc.BadRequest;
import io.grpc.StatusRuntimeException;
import io.grpc.protobuf.StatusProto;
import java.util.ArrayList;
import java.util.List;

/**
 * A failed call: a {@link StatusRuntimeException} (so {@code getStatus().getCode()} is the gRPC code,
 * e.g. {@code INVALID_ARGUMENT} or {@code DEADLINE_EXCEEDED}) with the field violations of the
 * error's {@code google.rpc.BadRequest}.
 *
 * <pre>{@code
 * try {
 *   sidecar.registerConnector(connector);
 * } catch (SidecarException e) {
 *   e.getViolations().forEach(v -> System.out.println(v.field() + ": " + v.description()));
 * }
 * }</pre>
 */
public final class SidecarException extends StatusRuntimeException {
  private static final long serialVersionUID = 1L;

  private final List<FieldViolation> violations;

  SidecarException(StatusRuntimeException cause) {
    super(cause.getStatus().withCause(cause), cause.getTrailers());
    this.violations = List.copyOf(violationsOf(cause));
  }

  /** The invalid fields an INVALID_ARGUMENT names; empty for other errors. */
  public List<FieldViolation> getViolations() {
    return violations;
  }

  private static List<FieldViolation> violationsOf(StatusRuntimeException cause) {
    List<FieldViolation> found = new ArrayList<>();
    com.google.rpc.Status status = StatusProto.fromThrowable(cause);
    if (status == null) {
      return found;
    }
    for (Any detail : status.getDetailsList()) {
      if (!detail.is(BadRequest.class)) {
        continue;
      }
      try {
        for (BadRequest.FieldViolation violation :
            detail.unpack(BadRequest.class).getFieldViolationsList()) {
          found.add(new FieldViolation(violation.getField(), violation.getDescription()));
        }
      } catch (InvalidProtocolBufferException malformed) {
        // A detail that does not decode names no field; the status message still says what failed.
      }
    }
    return found;
  }
}
