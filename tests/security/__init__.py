"""The hardening suites of issue 8: SSRF, secrets, hostile upstreams, resilience and access."""
