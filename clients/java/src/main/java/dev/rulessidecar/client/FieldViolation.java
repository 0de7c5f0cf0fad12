package dev.rulessidecar.client;

/** One invalid field of a request: its path ({@code connector.url_template}) and the problem. */
public record FieldViolation(String field, String description) {}
