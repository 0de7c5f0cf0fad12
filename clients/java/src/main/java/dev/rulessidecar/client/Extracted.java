package dev.rulessidecar.client;

import dev.rulessidecar.v1.ExtractVariablesResponse;
import java.util.Map;

/**
 * ExtractVariables' result with the values as plain Java values.
 *
 * @param complete whether every required extraction succeeded
 */
public record Extracted(
    Map<String, Object> variables, boolean complete, ExtractVariablesResponse response) {}
