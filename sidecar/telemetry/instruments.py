"""OpenTelemetry traces and metrics, configured once from the standard OTEL_* variables.

One EvaluateNode call, traced:

    SERVER    rulesidecar.v1.RulesSidecarService/EvaluateNode   interceptors.TracingInterceptor
      └ INTERNAL  evaluate_node                                 servicer, `Telemetry.evaluation`
          └ CLIENT  GET     one span per HTTP attempt            egress, `Telemetry.http_attempt`

The SERVER span follows the RPC conventions (`rpc.system`, `rpc.service`, `rpc.method`,
`rpc.grpc.status_code`) and is parented on the caller's W3C `traceparent`; the CLIENT spans follow
the stable HTTP client conventions and their context goes out as `traceparent`/`tracestate`/
`baggage` unless the connector sets `disable_trace_propagation`. Our own attributes live under
`rules_sidecar.` (the constants below). Nothing recorded ever holds a secret, a header value or a
visitor's variable: `url.full` shows every query value and every path segment that came from a
placeholder as `REDACTED`, and exceptions are recorded by type only (their text may quote input).

Metrics (instrumentation scope `rules-sidecar`):

| instrument | kind | attributes |
|---|---|---|
| `http.client.request.duration` (s) | histogram, per attempt | connector id, status class |
| `rules_sidecar.evaluations` | counter | connector id, outcome, reason |
| `rules_sidecar.evaluations.in_flight` | observable up-down counter | - |
| `rules_sidecar.egress.retries` | counter | connector id |
| `rules_sidecar.egress.breaker.state` | observable gauge: 0 closed, 1 half-open, 2 open | origin |

Switching on: traces and metrics are exported only when an exporter is configured
(`OTEL_TRACES_EXPORTER` / `OTEL_METRICS_EXPORTER` = `otlp`, `console` or `none`; when unset,
`otlp` if an OTLP endpoint is set, else nothing), and `OTEL_SDK_DISABLED=true` turns everything
off. Settings hands us the OTEL_* variables (`Settings.otel_variables`) to take those decisions;
the SDK reads the variables it owns itself (sampler and ratio, endpoint, headers, batch and
export intervals, propagators, resource). With nothing exported, no span is started and no
instrument is touched: the hot path checks two booleans.
"""

from __future__ import annotations

import asyncio
import functools
import importlib.metadata
import logging
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import urlsplit, urlunsplit

from opentelemetry import context, propagate, trace
from opentelemetry.metrics import CallbackOptions, Meter, NoOpMeter, Observation
from opentelemetry.trace import Span, SpanKind, StatusCode

from sidecar.core.model import Node, Outcome, OutcomeKind, Reason
from sidecar.core.model.exchange import (
    HttpResponse,
    Origin,
    OutboundRequest,
    SendError,
    SendOptions,
)
from sidecar.errors import ConfigError
from sidecar.settings import Settings

if TYPE_CHECKING:  # the SDK is imported only when something is exported (~130 ms at start-up)
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

SCOPE: Final = "rules-sidecar"
SERVICE_NAME: Final = "rules-sidecar"

# Our attributes (spans, metrics and the evaluation log line use the same names).
CONNECTOR_ID: Final = "rules_sidecar.connector.id"
CONNECTOR_VERSION: Final = "rules_sidecar.connector.version"
NODE_ID: Final = "rules_sidecar.node.id"
OUTCOME: Final = "rules_sidecar.outcome"
REASON: Final = "rules_sidecar.reason"
BRANCH_INDEX: Final = "rules_sidecar.branch_index"
ATTEMPTS: Final = "rules_sidecar.attempts"
STATUS_CLASS: Final = "rules_sidecar.http.status_class"
# Semantic-convention attributes.
ERROR_TYPE: Final = "error.type"
HTTP_REQUEST_METHOD: Final = "http.request.method"
HTTP_RESEND_COUNT: Final = "http.request.resend_count"
HTTP_STATUS_CODE: Final = "http.response.status_code"
SERVER_ADDRESS: Final = "server.address"
SERVER_PORT: Final = "server.port"
URL_FULL: Final = "url.full"
URL_SCHEME: Final = "url.scheme"

EVALUATION_SPAN: Final = "evaluate_node"
REDACTED: Final = "REDACTED"
# A connector id the registry does not know is caller input: it never becomes a metric label.
UNKNOWN_CONNECTOR: Final = "_OTHER"
# API latency, 5 ms to the 30 s ceiling of a connector's timeout.
DURATION_BUCKETS: Final = (
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0, 20.0, 30.0,
)  # fmt: skip
BREAKER_STATE_VALUES: Final = {"closed": 0, "half_open": 1, "open": 2}
EXPORTERS: Final = frozenset({"otlp", "console", "none"})
# At shutdown, how long the last spans and metrics may take to leave.
FLUSH_SECONDS: Final = 3.0

evaluation_log = logging.getLogger("sidecar.evaluations")


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What to switch on, decided from the OTEL_* variables and the settings."""

    traces: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    prometheus: tuple[str, int] | None = None
    resource_attributes: Mapping[str, str] | None = None

    @classmethod
    def of(cls, settings: Settings) -> TelemetryConfig:
        """The configuration; ConfigError naming the variable if one is not understood."""
        variables = settings.otel_variables()
        if variables.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            return cls()
        for name in (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ):
            protocol = variables.get(name, "grpc").strip().lower()
            if protocol not in ("grpc", ""):
                raise ConfigError(f"{name}={protocol}: the sidecar exports OTLP over grpc only")
        prometheus = None
        if settings.metrics_prometheus_port is not None:
            prometheus = (settings.metrics_prometheus_host, settings.metrics_prometheus_port)
        resource = None
        named = "service.name=" in variables.get("OTEL_RESOURCE_ATTRIBUTES", "")
        if not variables.get("OTEL_SERVICE_NAME") and not named:
            resource = {"service.name": SERVICE_NAME}
        return cls(
            traces=_exporters(variables, "TRACES"),
            metrics=_exporters(variables, "METRICS"),
            prometheus=prometheus,
            resource_attributes=resource,
        )


def _exporters(variables: Mapping[str, str], signal: str) -> tuple[str, ...]:
    """OTEL_<SIGNAL>_EXPORTER as a list; unset means otlp when an OTLP endpoint is given."""
    name = f"OTEL_{signal}_EXPORTER"
    given = variables.get(name, "").strip().lower()
    if not given:
        endpoints = ("OTEL_EXPORTER_OTLP_ENDPOINT", f"OTEL_EXPORTER_OTLP_{signal}_ENDPOINT")
        return ("otlp",) if any(variables.get(e, "").strip() for e in endpoints) else ()
    chosen = tuple(dict.fromkeys(part.strip() for part in given.split(",") if part.strip()))
    unknown = [part for part in chosen if part not in EXPORTERS]
    if unknown:
        hint = " (use the metrics_prometheus_port setting)" if "prometheus" in unknown else ""
        raise ConfigError(
            f"{name}={given}: {', '.join(unknown)} not supported; use otlp, console or none{hint}"
        )
    return tuple(part for part in chosen if part != "none")


class Telemetry:
    """The tracer and instruments of one sidecar, or none of them.

    Built once by the composition root; the servicer, the egress and the tracing interceptor
    share it. Tests pass their own providers (in-memory exporter and reader):

    >>> telemetry = Telemetry(TracerProvider(), MeterProvider([InMemoryMetricReader()]))  # +SKIP
    >>> Telemetry().tracing                            # nothing configured: every hook is a no-op
    False
    """

    def __init__(
        self,
        tracer_provider: TracerProvider | None = None,
        meter_provider: MeterProvider | None = None,
        *,
        prometheus: PrometheusEndpoint | None = None,
    ) -> None:
        self.tracing = tracer_provider is not None
        self.metrics = meter_provider is not None
        self._tracer_provider = tracer_provider
        self._meter_provider = meter_provider
        self._prometheus = prometheus
        self._prometheus_server: Any = None
        version = _version()
        self.tracer: trace.Tracer = (
            tracer_provider.get_tracer(SCOPE, version)
            if tracer_provider is not None
            else trace.NoOpTracer()
        )
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

    @classmethod
    def from_settings(cls, settings: Settings) -> Telemetry:
        """Exporters and providers as the OTEL_* variables and the settings ask."""
        config = TelemetryConfig.of(settings)
        if not (config.traces or config.metrics or config.prometheus):
            return cls()
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {**(config.resource_attributes or {}), "service.version": _version()}
        )
        tracer_provider = None
        if config.traces:
            # The sampler comes from OTEL_TRACES_SAMPLER(_ARG); the SDK's default is
            # parentbased_always_on, so a caller's sampling decision is followed.
            tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            for name in config.traces:
                tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name)))
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(_metric_exporter(name)) for name in config.metrics
        ]
        prometheus = None
        if config.prometheus is not None:
            prometheus = PrometheusEndpoint.on(*config.prometheus)
            readers.append(prometheus.reader)
        meter_provider = (
            MeterProvider(readers, resource=resource, shutdown_on_exit=False) if readers else None
        )
        return cls(tracer_provider, meter_provider, prometheus=prometheus)

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

    def shutdown(self, timeout_seconds: float = FLUSH_SECONDS) -> None:
        """Flush and stop exporting, waiting at most `timeout_seconds` (blocking: run it off
        the event loop). An unreachable collector must not hold up a SIGTERM: the SDK would
        retry each signal for up to its export timeout."""
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

    # -- the evaluation (servicer) ---------------------------------------------------------

    def evaluation(self, node: Node) -> EvaluationScope:
        """The INTERNAL span, the evaluations counter and the log line of one evaluation.

        >>> with telemetry.evaluation(compiled.node) as evaluation:      # doctest: +SKIP
        ...     evaluation.record(await engine.evaluate(compiled, variables))
        """
        if self.tracing or self.metrics or evaluation_log.isEnabledFor(logging.INFO):
            return EvaluationScope(self, node)
        return _SILENT_EVALUATION

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

        >>> with telemetry.http_attempt(request, options, origin) as attempt:   # doctest: +SKIP
        ...     attempt.record(await transport.attempt(request, cap))
        """
        if not (self.tracing or self.metrics):
            return _SILENT_ATTEMPT
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

    def _count_evaluation(self, connector_id: str, outcome: Outcome) -> None:
        if outcome.reason is Reason.CONNECTOR_NOT_FOUND:
            connector_id = UNKNOWN_CONNECTOR
        self._evaluations.add(
            1,
            {CONNECTOR_ID: connector_id, OUTCOME: outcome.kind.value, REASON: outcome.reason.value},
        )


class EvaluationScope:
    """The telemetry of one evaluation: enter before the engine runs, `record` its outcome."""

    __slots__ = ("_node", "_span", "_started", "_telemetry", "_token")

    def __init__(self, telemetry: Telemetry | None, node: Node | None) -> None:
        self._telemetry = telemetry
        self._node = node
        self._span: Span | None = None
        self._token: object = None
        self._started = 0.0

    def __enter__(self) -> EvaluationScope:
        telemetry, node = self._telemetry, self._node
        if telemetry is None or node is None:
            return self
        self._started = time.perf_counter()
        if telemetry.tracing:
            self._span = telemetry.tracer.start_span(
                EVALUATION_SPAN,
                kind=SpanKind.INTERNAL,
                attributes={CONNECTOR_ID: node.connector_id, NODE_ID: node.id},
            )
            self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def record(self, outcome: Outcome) -> None:
        """Attributes, counter and the one INFO log line of the evaluation (within its span)."""
        telemetry, node = self._telemetry, self._node
        if telemetry is None or node is None:
            return
        span = self._span
        if span is not None and span.is_recording():
            span.set_attributes(
                {
                    CONNECTOR_VERSION: outcome.connector_version,
                    OUTCOME: outcome.kind.value,
                    REASON: outcome.reason.value,
                    ATTEMPTS: outcome.attempts,
                }
            )
            if outcome.branch_index is not None:
                span.set_attribute(BRANCH_INDEX, outcome.branch_index)
            if outcome.http_status:
                span.set_attribute(HTTP_STATUS_CODE, outcome.http_status)
            if outcome.kind is OutcomeKind.ERROR:
                span.set_attribute(ERROR_TYPE, outcome.reason.value)
                span.set_status(StatusCode.ERROR, outcome.reason.value)
        if telemetry.metrics:
            telemetry._count_evaluation(node.connector_id, outcome)
        if evaluation_log.isEnabledFor(logging.INFO):
            _log_evaluation(node, outcome, time.perf_counter() - self._started)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        if exc_type is not None and span.is_recording():
            span.set_attribute(ERROR_TYPE, exc_type.__qualname__)
            span.set_status(StatusCode.ERROR, exc_type.__qualname__)
        context.detach(self._token)  # type: ignore[arg-type]
        span.end()


_SILENT_EVALUATION = EvaluationScope(None, None)


def _log_evaluation(node: Node, outcome: Outcome, elapsed: float) -> None:
    fields: dict[str, Any] = {
        "connector": node.connector_id,
        "connector_version": outcome.connector_version,
        "node_id": node.id,
        "outcome": outcome.kind.value,
        "reason": outcome.reason.value,
        "branch_index": outcome.branch_index,
        "http_status": outcome.http_status,
        "attempts": outcome.attempts,
        "latency_ms": round(elapsed * 1000, 3),
        "upstream_latency_ms": round(outcome.upstream_latency_seconds * 1000, 3),
    }
    evaluation_log.info("node evaluated", extra={"fields": fields})


class AttemptScope:
    """The telemetry of one outbound attempt: a CLIENT span made current while the egress
    performs the attempt, and its duration; `record` the response when there is one.

    A failure is told by what leaves the block: a SendError by its reason, a cancellation (the
    exchange's total budget ran out) as `cancelled`, anything else by its type only.
    """

    __slots__ = (
        "_options",
        "_origin",
        "_request",
        "_resend_count",
        "_span",
        "_started",
        "_status",
        "_telemetry",
        "_token",
    )

    def __init__(
        self,
        telemetry: Telemetry | None,
        request: OutboundRequest | None,
        options: SendOptions | None,
        origin: Origin | None,
        resend_count: int = 0,
    ) -> None:
        self._telemetry = telemetry
        self._request = request
        self._options = options
        self._origin = origin
        self._resend_count = resend_count
        self._span: Span | None = None
        self._token: object = None
        self._started = 0.0
        self._status = 0

    def __enter__(self) -> AttemptScope:
        telemetry, request, options, origin = (
            self._telemetry,
            self._request,
            self._options,
            self._origin,
        )
        if telemetry is None or request is None or options is None or origin is None:
            return self
        if telemetry.tracing:
            span = self._span = telemetry.tracer.start_span(
                request.method,
                kind=SpanKind.CLIENT,
                attributes={
                    HTTP_REQUEST_METHOD: request.method,
                    SERVER_ADDRESS: origin.host,
                    SERVER_PORT: origin.port,
                },
            )
            if span.is_recording():
                span.set_attribute(URL_FULL, redacted_url(request.url, options.url_template))
                span.set_attribute(CONNECTOR_ID, options.connector_id)
                if self._resend_count:
                    span.set_attribute(HTTP_RESEND_COUNT, self._resend_count)
            self._token = context.attach(trace.set_span_in_context(span))
        self._started = time.perf_counter()
        return self

    def record(self, response: HttpResponse) -> None:
        """The attempt got an answer (any status)."""
        self._status = response.status

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        telemetry, options = self._telemetry, self._options
        if telemetry is None or options is None:
            return
        status = self._status
        error_type: str | None
        if isinstance(exc, SendError):
            error_type = exc.reason.value
        elif isinstance(exc, asyncio.CancelledError):
            error_type = "cancelled"  # the exchange's total budget ran out mid-attempt
        elif exc_type is not None:
            error_type = exc_type.__qualname__
        elif status:
            error_type = str(status) if status >= 400 else None
        else:
            error_type = "_OTHER"  # left without an answer and without an exception
        if telemetry.metrics:
            status_class = f"{status // 100}xx" if status else "error"
            telemetry._request_duration.record(
                time.perf_counter() - self._started,
                {CONNECTOR_ID: options.connector_id, STATUS_CLASS: status_class},
            )
        span = self._span
        if span is not None:
            if span.is_recording():
                if status:
                    span.set_attribute(HTTP_STATUS_CODE, status)
                if error_type is not None:
                    span.set_attribute(ERROR_TYPE, error_type)
                    span.set_status(StatusCode.ERROR, error_type)
            context.detach(self._token)  # type: ignore[arg-type]
            span.end()


_SILENT_ATTEMPT = AttemptScope(None, None, None, None)


def redacted_url(url: str, url_template: str = "") -> str:
    """`url` for `url.full`: query values and placeholder path segments shown as REDACTED.

    A path segment that the connector's template fills from a variable may carry a visitor's
    input (an order number, an email): it is redacted. A path the template does not describe (a
    followed redirect elsewhere, or no template) has every segment redacted.

    >>> redacted_url("https://api.example.com/orders/A-1?key=s3cret&x",
    ...              "https://api.example.com/orders/{{order}}")
    'https://api.example.com/orders/REDACTED?key=REDACTED&x'
    """
    parts = urlsplit(url)
    segments = parts.path.split("/")
    template = _template_segments(url_template)
    described = len(template) == len(segments) and all(
        expected is None or expected == segment
        for expected, segment in zip(template, segments, strict=True)
    )
    path = "/".join(
        segment if not segment or (described and template[index] is not None) else REDACTED
        for index, segment in enumerate(segments)
    )
    query = "&".join(
        f"{name}={REDACTED}" if separator else name
        for name, separator, _ in (item.partition("=") for item in parts.query.split("&") if item)
    )
    netloc = parts.netloc.rpartition("@")[2]  # never userinfo
    return urlunsplit((parts.scheme, netloc, path, query, ""))


@functools.lru_cache(maxsize=1024)
def _template_segments(url_template: str) -> tuple[str | None, ...]:
    """The template's path segments: the literal text, or None where a placeholder is."""
    if not url_template:
        return ()
    path = urlsplit(url_template).path
    return tuple(None if "{{" in segment else segment for segment in path.split("/"))


@functools.cache
def _version() -> str:
    try:
        return importlib.metadata.version("rules-sidecar")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"


def _span_exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    return OTLPSpanExporter()


def _metric_exporter(name: str) -> MetricExporter:
    if name == "console":
        from opentelemetry.sdk.metrics.export import ConsoleMetricExporter

        return ConsoleMetricExporter()
    from opentelemetry.exporter.otlp.proto.grpc.metric_exporter import OTLPMetricExporter

    return OTLPMetricExporter()


@dataclass(frozen=True, slots=True)
class PrometheusEndpoint:
    """The scrape endpoint: a reader on its own registry (two sidecars in a process never clash)."""

    host: str
    port: int
    reader: MetricReader
    registry: Any

    @classmethod
    def on(cls, host: str, port: int) -> PrometheusEndpoint:
        from opentelemetry.exporter.prometheus import PrometheusMetricReader
        from prometheus_client import CollectorRegistry

        registry = CollectorRegistry(auto_describe=True)
        return cls(host, port, PrometheusMetricReader(registry=registry), registry)
