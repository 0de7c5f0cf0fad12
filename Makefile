# The one place the project's commands live; CI (.ci/run) only calls `make test`.
# Every target first runs the (idempotent, quick when done) setup it needs, so a fresh clone can
# run any single target; tests/test_makefile.py checks that each target does.
.DEFAULT_GOAL := help
SHELL := bash
VENV := .venv/bin
BUF := proto/node_modules/.bin/buf

.PHONY: bench bench-hostile help run test test-fast setup lint typecheck proto-lint generate check-generated postgres pytest test-clients

help: ## list the targets
	@grep -E '^[a-z-]+:.*## ' $(MAKEFILE_LIST) | awk -F':.*## ' '{printf "  make %-16s %s\n", $$1, $$2}'

run: ## set up, then run the sidecar on 127.0.0.1:50051 with the example connectors
	@scripts/bootstrap --python-only
	$(VENV)/rules-sidecar serve --config examples/sidecar.yaml

test: setup check-version lint typecheck proto-lint check-generated check-chart check-monitoring check-image-command postgres pytest test-clients ## set up, then run every check and test (what CI runs)

test-fast: ## the developer loop: lint, types, unit tests and doctests (no e2e/process/fleet marks)
	@scripts/bootstrap --python-only
	@$(MAKE) --no-print-directory lint typecheck
	$(VENV)/pytest -q -m "not e2e and not process and not fleet"

setup: ## install uv, the locked Python environment and buf (idempotent)
	@scripts/bootstrap

lint: ## ruff lint and format check; the import contracts of ARCHITECTURE.md (pyproject.toml)
	@scripts/bootstrap --python-only
	$(VENV)/ruff check .
	$(VENV)/ruff format --check .
	$(VENV)/lint-imports --no-cache

typecheck: ## mypy --strict on sidecar/
	@scripts/bootstrap --python-only
	$(VENV)/mypy

proto-lint: ## buf lint (STANDARD), buf format, and buf breaking against the last release (proto/releases)
	@scripts/bootstrap
	cd proto && node_modules/.bin/buf lint && node_modules/.bin/buf format --diff --exit-code
	scripts/check-breaking

generate: ## regenerate all generated code from proto/ (Python, Go, TypeScript, Java)
	@scripts/bootstrap --codegen
	scripts/generate

check-generated: ## fail if generated code is stale
	@scripts/bootstrap --codegen
	scripts/check-generated

bench: ## the benchmark: sidecar vs direct baseline (ARGS=--quick for a short run)
	scripts/bench $(ARGS)

bench-hostile: ## the hostile set (issue 14): worst event-loop stall, peak RSS, SIGTERM exit time (ARGS="--tree DIR" runs another source tree)
	scripts/bootstrap --python-only
	.venv/bin/python bench/hostile.py $(ARGS)

postgres: ## install Debian's PostgreSQL server when missing (the fleet tests start their own clusters)
	scripts/postgres install

pytest: ## the test suites
	@scripts/bootstrap
	$(VENV)/pytest

.PHONY: check-chart check-image-command check-monitoring check-version

check-version: ## fail when a copy of the version differs from pyproject.toml's (scripts/version stamp fixes it)
	scripts/version check

check-chart: ## helm lint + helm template per mode, manifests validated against the Kubernetes schemas (offline)
	scripts/check-chart

check-monitoring: ## promtool (pinned) checks and unit-tests the alerting rules; dashboard and rules against a real scrape
	scripts/check-monitoring

check-image-command: ## run the Dockerfile's exact command line outside a container: SERVING, then SIGTERM exits 0
	@scripts/bootstrap --python-only
	$(VENV)/python scripts/check-image-command

test-clients: ## the Python, Go, TypeScript and Java clients' tests against a real sidecar
	scripts/test-clients
