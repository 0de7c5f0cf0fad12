"""Multi-process suites of a fleet: several `rules-sidecar serve` on one real PostgreSQL."""
