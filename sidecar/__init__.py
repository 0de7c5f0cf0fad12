"""rules-sidecar: an API-conditional workflow node as a gRPC sidecar."""
