"""Generated gRPC contract of rules-sidecar (package rulesidecar.v1) and a thin client."""
