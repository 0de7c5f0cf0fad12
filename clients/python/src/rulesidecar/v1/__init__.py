"""Generated from proto/rulesidecar/v1 by scripts/generate; do not edit."""
