package dev.rulessidecar.client;

import dev.rulessidecar.v1.EvaluateNodeResponse;
import dev.rulessidecar.v1.Outcome;
import dev.rulessidecar.v1.Reason;
import java.util.Map;
import java.util.OptionalInt;

/**
 * EvaluateNode's verdict with the extracted variables as plain Java values (see {@link Values}).
 *
 * @param branchIndex the winning branch; empty unless the outcome is {@code OUTCOME_MATCHED}
 * @param response the whole answer: extractions one by one, latency, attempts, explanation
 */
public record Evaluation(
    Outcome outcome,
    Reason reason,
    String message,
    String target,
    OptionalInt branchIndex,
    Map<String, Object> variables,
    int httpStatus,
    EvaluateNodeResponse response) {

  static Evaluation of(EvaluateNodeResponse response) {
    return new Evaluation(
        response.getOutcome(),
        response.getReason(),
        response.getMessage(),
        response.getTarget(),
        response.hasBranchIndex() ? OptionalInt.of(response.getBranchIndex()) : OptionalInt.empty(),
        Values.toMap(response.getVariables()),
        response.getHttpStatus(),
        response);
  }
}
