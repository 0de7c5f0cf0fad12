"""OpenTelemetry traces and metrics, configured once from the standard OTEL_* variables.

One EvaluateNode call, traced:

    SERVER    rulesidecar.v1.RulesSidecarService/EvaluateNode   interceptors.layered
      └ INTERNAL  evaluate_node                                 servicer, `Telemetry.evaluation`
          └ CLIENT  GET     one span per HTTP attempt            egress, `Telemetry.http_attempt`

The SERVER span follows the RPC conventions (`rpc.system`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`) and is parented on the caller's W3C `traceparent`; the CLIENT spans follow
the stable HTTP client conventions and their context goes out as `traceparent`/`tracestate`/
`baggage` unless the connector sets `disable_trace_propagation` (the egress asks
`Telemetry.trace_headers` and decides). Our own attributes live under `rules_sidecar.`
(`attributes`). Nothing recorded ever holds a secret, a header value or a visitor's variable:
`url.full` shows every query value and every path segment that came from a placeholder as
`REDACTED` (`redaction`), and exceptions are recorded by type only (their text may quote input).
The evaluation and the attempt are observed by the context managers of `scopes`.

Metrics (instrumentation scope `rules-sidecar`):

| instrument | kind | attributes |
|---|---|---|
| `rpc.server.call.duration` (s) | histogram, per unary call | RPC (below), grpc status code |
| `rules_sidecar.rpc.in_flight` | observable up-down counter | RPC (below) |
| `http.client.request.duration` (s) | histogram, per attempt | HTTP client (below), connector id |
| `rules_sidecar.evaluations` | counter | connector id, outcome, reason |
| `rules_sidecar.evaluations.in_flight` | observable up-down counter | - |
| `rules_sidecar.egress.retries` | counter | connector id |
| `rules_sidecar.response_cache.lookups` | counter | connector id, cache status |
| `rules_sidecar.egress.breaker.state` | observable gauge: 0 closed, 1 half-open, 2 open | origin |
| `rules_sidecar.store.connected` | observable gauge: 1 connected, 0 not (store_url only) | - |
| `process.cpu.time`, `process.memory.usage`, ... | observable (`process`) | cpu.mode |

The RPC instruments carry the attributes of the SERVER span (the RPC conventions' `rpc.system`,
`rpc.service`, `rpc.method`, and `rpc.grpc.status_code` once the call ended), so a metric and a
trace of one call agree; health and reflection calls are not measured (the probes would drown
the API's own calls). The HTTP histogram carries the stable HTTP client attributes
(`http.request.method`, `server.address`, `server.port`, `http.response.status_code` when
answered, `error.type` when failed), so stock dashboards read it, plus the connector id.
Attribute sets are built once per distinct combination and reused: a call records with a
dictionary look-up, not a dictionary built for it.

Exporters and the scrape endpoint are chosen in `config`; with nothing exported, no span is
started and no instrument is touched: the hot path checks two booleans.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from typing import TYPE_CHECKING, Any, Final

from opentelemetry import propagate, trace
from opentelemetry.metrics import CallbackOptions, Histogram, Meter, NoOpMeter, Observation

from sidecar.core.model import Node, Outcome, OutcomeKind, Reason
from sidecar.core.model.exchange import Origin, OutboundRequest, SendOptions
from sidecar.errors import ConfigError
from sidecar.telemetry.attributes import (
    CACHE_AGE,
    CACHE_STATUS,
    CONNECTOR_ID,
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    HTTP_STATUS_CODE,
    OUTCOME,
    REASON,
    RPC_GRPC_STATUS_CODE,
    RPC_METHOD,
    RPC_SERVICE,
    RPC_SYSTEM,
    SERVER_ADDRESS,
    SERVER_PORT,
    UNKNOWN_CONNECTOR,
    URL_SCHEME,
)
from sidecar.telemetry.config import PrometheusEndpoint, TelemetryConfig, sidecar_version
from sidecar.telemetry.process import observe_process
from sidecar.telemetry.scopes import (
    SILENT_ATTEMPT,
    SILENT_EVALUATION,
    AttemptScope,
    EvaluationLineSampling,
    EvaluationScope,
    evaluation_log,
)

if TYPE_CHECKING:
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.trace import TracerProvider

SCOPE: Final = "rules-sidecar"
# API latency, 5 ms to the 30 s ceiling of a connector's timeout.
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0,
)  # fmt: skip
# A gRPC call may answer in well under a millisecond (ExtractVariables, GetConnector).
RPC_DURATION_BUCKETS: Final = (0.0005, 0.001, 0.0025, *DURATION_BUCKETS)
# Distinct attribute sets kept for reuse; past this many (a sign of churn, e.g. connectors
# registered and deleted all day) the cache starts over rather than grow without end.
ATTRIBUTE_SETS_KEPT: Final = 4096
BREAKER_STATE_VALUES: Final = {"closed": 0, "half_open": 1, "open": 2}
# At shutdown, how long the last spans and metrics may take to leave.
FLUSH_SECONDS: Final = 3.0


class Telemetry:
    """The tracer and instruments of one sidecar, or none of them.

    Built once by the composition root; the servicer, the egress and the observing layer
    share it. Tests pass their own providers (in-memory exporter and reader):

    >>> from opentelemetry.sdk.metrics import MeterProvider
    >>> from opentelemetry.sdk.metrics.export import InMemoryMetricReader
    >>> from opentelemetry.sdk.trace import TracerProvider
    >>> telemetry = Telemetry(TracerProvider(), MeterProvider([InMemoryMetricReader()]))
    >>> telemetry.tracing, telemetry.metrics
    (True, True)
    >>> Telemetry().tracing                            # nothing configured: every hook is a no-op
    False
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        prometheus: PrometheusEndpoint | None = None,
        evaluation_log_every: int = 1,
    ) -> None:
        self.tracing = tracer_provider is not None
        # Which evaluations write their INFO line (the setting of the same name; 1: all).
        self.evaluation_lines = EvaluationLineSampling(evaluation_log_every)
        self.metrics = meter_provider is not None
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._prometheus = prometheus
        self._prometheus_server: Any = None
        version = sidecar_version()
        self.tracer: trace.Tracer = trace.NoOpTracer()
        if tracer_provider is not None:
            from sidecar.telemetry.spans import lean_tracer  # imports the SDK

            self.tracer = lean_tracer(tracer_provider, SCOPE, version)
        meter: Meter = (
            meter_provider.get_meter(SCOPE, version)
            if meter_provider is not None
            else NoOpMeter(SCOPE)
        )
        self._meter = meter
        self._request_duration = meter.create_histogram(
            "http.client.request.duration",
            unit="s",
            description="Duration of each outbound HTTP attempt, by connector and status class.",
            explicit_bucket_boundaries_advisory=DURATION_BUCKETS,
        )
        self._evaluations = meter.create_counter(
            "rules_sidecar.evaluations",
            unit="{evaluation}",
            description="EvaluateNode answers, by connector, outcome and reason.",
        )
        self._retries = meter.create_counter(
            "rules_sidecar.egress.retries",
            unit="{retry}",
            description="Outbound attempts that repeated a failed or retryable one.",
        )
        self._rpc_duration = meter.create_histogram(
            "rpc.server.call.duration",
            unit="s",
            description="Duration of each unary gRPC call served, by method and status code.",
            explicit_bucket_boundaries_advisory=RPC_DURATION_BUCKETS,
        )
        self._rpc_methods: dict[str, RpcMethodMetrics] = {}
        self._attempt_attributes: dict[tuple[Any, ...], dict[str, Any]] = {}
        self._evaluation_attributes: dict[tuple[str, OutcomeKind, Reason], dict[str, str]] = {}
        if self.metrics:
            meter.create_observable_up_down_counter(
                "rules_sidecar.rpc.in_flight",
                callbacks=[self._observe_rpc_in_flight],
                unit="{call}",
                description="Unary gRPC calls being served now, by method.",
            )
            observe_process(meter)
        self._cache_lookups = meter.create_counter(
            "rules_sidecar.response_cache.lookups",
            unit="{lookup}",
            description="Answers of cached connectors, by connector and cache status (MISS, HIT, "
            "STALE, STALE_IF_ERROR, COALESCED, BYPASS).",
        )

    @classmethod
    def from_config(cls, config: TelemetryConfig, *, evaluation_log_every: int = 1) -> Telemetry:
        """Exporters and providers as the configuration asks."""
        providers = config.providers()
        return cls(
            providers.tracer,
            providers.meter,
            prometheus=providers.prometheus,
            evaluation_log_every=evaluation_log_every,
        )

    def start(self) -> None:
        """Open the Prometheus scrape endpoint, if configured (ConfigError if it cannot)."""
        if self._prometheus is None or self._prometheus_server is not None:
            return
        from prometheus_client import start_http_server

        endpoint = self._prometheus
        try:
            self._prometheus_server, _ = start_http_server(
                endpoint.port, addr=endpoint.host, registry=endpoint.registry
            )
        except OSError as exc:
            raise ConfigError(
                f"metrics_prometheus_port: cannot serve metrics on {endpoint.host}:"
                f"{endpoint.port}: {exc}"
            ) from exc

    def shutdown(self, timeout_seconds: float = FLUSH_SECONDS) -> bool:
        """Flush and stop exporting, waiting at most `timeout_seconds` (blocking: run it off
        the event loop). An unreachable collector must not hold up a SIGTERM: the SDK would
        retry each signal for up to its export timeout. False when a flush was left unfinished."""
        if self._prometheus_server is not None:
            self._prometheus_server.shutdown()
            self._prometheus_server.server_close()
            self._prometheus_server = None
        providers = [p for p in (self._tracer_provider, self._meter_provider) if p is not None]
        flushes = [
            threading.Thread(target=provider.shutdown, name="telemetry-flush", daemon=True)
            for provider in providers
        ]
        deadline = time.monotonic() + timeout_seconds
        for flush in flushes:
            flush.start()
        for flush in flushes:
            flush.join(max(deadline - time.monotonic(), 0))
        return not any(flush.is_alive() for flush in flushes)

    def rpc_method(self, full_method: str) -> RpcMethodMetrics | None:
        """The RPC instruments of one method (`/package.Service/Method`), bound once per
        method by the observing layer; None when metrics are off."""
        if not self.metrics:
            return None
        metrics = self._rpc_methods.get(full_method)
        if metrics is None:
            service, _, name = full_method.lstrip("/").rpartition("/")
            metrics = RpcMethodMetrics(self._rpc_duration, service, name)
            self._rpc_methods[full_method] = metrics
        return metrics

    def _observe_rpc_in_flight(self, options: CallbackOptions) -> Iterable[Observation]:
        # Runs on the exporter's thread while the event loop may add a method: list() copies
        # the values in one step under the GIL.
        methods = list(self._rpc_methods.values())
        return [Observation(method.active, method.attributes) for method in methods]

    def watch(
        self,
        *,
        in_flight: Callable[[], int],
        breakers: Callable[[], Mapping[Origin, str]],
    ) -> None:
        """Register the observed instruments: evaluations in flight and breaker states."""
        if not self.metrics:
            return

        def observe_in_flight(options: CallbackOptions) -> Iterable[Observation]:
            return (Observation(in_flight()),)

        def observe_breakers(options: CallbackOptions) -> Iterable[Observation]:
            # Runs on the exporter's thread while the event loop may add an upstream.
            for _ in range(3):
                try:
                    states = breakers()
                    break
                except RuntimeError:  # dictionary changed size during iteration
                    continue
            else:
                return ()
            return [
                Observation(
                    BREAKER_STATE_VALUES.get(str(state), 0),
                    {
                        URL_SCHEME: origin.scheme,
                        SERVER_ADDRESS: origin.host,
                        SERVER_PORT: origin.port,
                    },
                )
                for origin, state in states.items()
            ]

        self._meter.create_observable_up_down_counter(
            "rules_sidecar.evaluations.in_flight",
            callbacks=[observe_in_flight],
            unit="{evaluation}",
            description="EvaluateNode calls being evaluated now.",
        )
        self._meter.create_observable_gauge(
            "rules_sidecar.egress.breaker.state",
            callbacks=[observe_breakers],
            unit="1",
            description="Circuit breaker of each upstream origin: 0 closed, 1 half-open, 2 open.",
        )

    def watch_store(self, connected: Callable[[], bool]) -> None:
        """Register the shared store's connectivity (0/1): a replica in an outage still serves
        from memory, so readiness cannot show it; this gauge and the Store health name do."""
        if not self.metrics:
            return

        def observe_store(options: CallbackOptions) -> Iterable[Observation]:
            return (Observation(1 if connected() else 0),)

        self._meter.create_observable_gauge(
            "rules_sidecar.store.connected",
            callbacks=[observe_store],
            unit="1",
            description="1 while this replica's change feed from the shared store (store_url) is "
            "connected, 0 during an outage (evaluations go on from memory; writes fail).",
        )

    # -- the evaluation (servicer) ---------------------------------------------------------

    def evaluation(self, node: Node) -> EvaluationScope:
        """The INTERNAL span, the evaluations counter and the log line of one evaluation.

        Usage::

            with telemetry.evaluation(compiled.node) as evaluation:
                evaluation.record(await engine.evaluate(compiled, variables))
        """
        if self.tracing or self.metrics or evaluation_log.isEnabledFor(logging.INFO):
            return EvaluationScope(self, node)
        return SILENT_EVALUATION

    # -- one outbound attempt (egress) -----------------------------------------------------

    def http_attempt(
        self,
        request: OutboundRequest,
        options: SendOptions,
        origin: Origin,
        *,
        resend_count: int = 0,
        retry: bool = False,
    ) -> AttemptScope:
        """The CLIENT span and the duration of one outbound attempt, which the egress performs
        inside it (and `trace_headers` reads the span's context from there).

        Usage::

            with telemetry.http_attempt(request, options, origin) as attempt:
                attempt.record(await transport.attempt(request, cap))
        """
        if not (self.tracing or self.metrics):
            return SILENT_ATTEMPT
        if retry and self.metrics:
            self._retries.add(1, {CONNECTOR_ID: options.connector_id})
        return AttemptScope(self, request, options, origin, resend_count)

    def trace_headers(self) -> dict[str, str]:
        """The current context as traceparent/tracestate/baggage (OTEL_PROPAGATORS); nothing
        when traces are off. Whether they go on the wire is the egress's decision."""
        carrier: dict[str, str] = {}
        if self.tracing:
            propagate.inject(carrier)
        return carrier

    def record_attempt_duration(
        self,
        seconds: float,
        connector_id: str,
        method: str,
        origin: Origin,
        status: int,
        error_type: str | None,
    ) -> None:
        """One point of `http.client.request.duration` (status 0: no answer; error_type: why
        the attempt failed, the status for a 4xx/5xx, None when it did not)."""
        key = (connector_id, method, origin.host, origin.port, status, error_type)
        attributes = self._attempt_attributes.get(key)
        if attributes is None:
            attributes = {
                HTTP_REQUEST_METHOD: method,
                SERVER_ADDRESS: origin.host,
                SERVER_PORT: origin.port,
                CONNECTOR_ID: connector_id,
            }
            if status:
                attributes[HTTP_STATUS_CODE] = status
            if error_type is not None:
                attributes[ERROR_TYPE] = error_type
            _keep(self._attempt_attributes, key, attributes)
        self._request_duration.record(seconds, attributes)

    def count_evaluation(self, connector_id: str, outcome: Outcome) -> None:
        """One point of `rules_sidecar.evaluations` (an unknown connector id is not a label)."""
        reason = outcome.reason
        if reason is Reason.CONNECTOR_NOT_FOUND:
            connector_id = UNKNOWN_CONNECTOR
        key = (connector_id, outcome.kind, reason)
        attributes = self._evaluation_attributes.get(key)
        if attributes is None:
            attributes = {
                CONNECTOR_ID: connector_id,
                OUTCOME: outcome.kind.value,
                REASON: reason.value,
            }
            _keep(self._evaluation_attributes, key, attributes)
        self._evaluations.add(1, attributes)

    def cache_lookup(self, connector_id: str, status: str, age_seconds: float) -> None:
        """One point of `rules_sidecar.response_cache.lookups`, and the status and age on the
        current span (the evaluation's: the response cache answers inside it)."""
        if self.metrics:
            self._cache_lookups.add(1, {CONNECTOR_ID: connector_id, CACHE_STATUS: status})
        if self.tracing:
            span = trace.get_current_span()
            span.set_attribute(CACHE_STATUS, status)
            span.set_attribute(CACHE_AGE, age_seconds)


class RpcMethodMetrics:
    """The RPC instruments of one gRPC method: calls in flight (`active`, read by the observed
    counter) and the duration histogram with its attribute sets bound once per status code.

    >>> from opentelemetry.metrics import NoOpMeter
    >>> histogram = NoOpMeter("doc").create_histogram("rpc.server.call.duration")
    >>> method = RpcMethodMetrics(histogram, "rulesidecar.v1.RulesSidecarService", "EvaluateNode")
    >>> method.record(0, 0.004)
    >>> method.attributes["rpc.method"], method.active
    ('EvaluateNode', 0)
    """

    __slots__ = ("_by_code", "_histogram", "active", "attributes")

    def __init__(self, histogram: Histogram, service: str, method: str) -> None:
        self._histogram = histogram
        self.attributes: Final = {RPC_SYSTEM: "grpc", RPC_SERVICE: service, RPC_METHOD: method}
        self._by_code: dict[int, dict[str, Any]] = {}
        self.active = 0

    def record(self, status_code: int, seconds: float) -> None:
        """One finished call with its numeric gRPC status code."""
        attributes = self._by_code.get(status_code)
        if attributes is None:
            attributes = self._by_code[status_code] = {
                **self.attributes,
                RPC_GRPC_STATUS_CODE: status_code,
            }
        self._histogram.record(seconds, attributes)


def _keep(cache: dict[Any, Any], key: Any, value: Any) -> None:
    if len(cache) >= ATTRIBUTE_SETS_KEPT:
        cache.clear()
    cache[key] = value
