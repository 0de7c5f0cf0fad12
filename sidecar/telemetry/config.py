"""What telemetry switches on, decided once from the OTEL_* variables and the settings.

Traces and metrics are exported only when an exporter is configured (`OTEL_TRACES_EXPORTER` /
`OTEL_METRICS_EXPORTER` = `otlp`, `console` or `none`; when unset, `otlp` if an OTLP endpoint is
set, else nothing), and `OTEL_SDK_DISABLED=true` turns everything off. The composition root hands
us the OTEL_* variables (`Settings.otel_variables`) to take those decisions; the SDK reads the
variables it owns itself (sampler and ratio, endpoint, headers, batch and export intervals,
propagators, resource). Metrics may also be scraped from a Prometheus endpoint (the root passes
the `metrics_prometheus_host`/`_port` settings). Nothing here reads Settings.
With nothing exported, the SDK is never imported.
"""

from __future__ import annotations

import functools
import importlib.metadata
import logging
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final, NamedTuple

from sidecar.errors import ConfigError

if TYPE_CHECKING:  # the SDK is imported only when something is exported (~130 ms at start-up)
    from opentelemetry.sdk.metrics import MeterProvider
    from opentelemetry.sdk.metrics.export import MetricExporter, MetricReader
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import SpanExporter

log = logging.getLogger(__name__)

SERVICE_NAME: Final = "rules-sidecar"
EXPORTERS: Final = frozenset({"otlp", "console", "none"})


class SdkProviders(NamedTuple):
    """What `TelemetryConfig.providers` builds; None where nothing is exported."""

    tracer: TracerProvider | None = None
    meter: MeterProvider | None = None
    prometheus: PrometheusEndpoint | None = None


@dataclass(frozen=True, slots=True)
class TelemetryConfig:
    """What to switch on, decided from the OTEL_* variables and the settings."""

    traces: tuple[str, ...] = ()
    metrics: tuple[str, ...] = ()
    prometheus: tuple[str, int] | None = None
    resource_attributes: Mapping[str, str] | None = None

    @classmethod
    def of(
        cls, variables: Mapping[str, str], *, prometheus: tuple[str, int] | None
    ) -> TelemetryConfig:
        """The configuration from the OTEL_* variables and the scrape endpoint (host, port), if
        one is asked for; ConfigError naming the variable if one is not understood."""
        if variables.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
            if prometheus is not None:
                # The standard switch wins, but a scrape endpoint that was asked for and is
                # not there must be told, not found out from an empty dashboard.
                log.warning(
                    "OTEL_SDK_DISABLED=true switches off all telemetry: the Prometheus endpoint "
                    "asked for on %s:%d (metrics_prometheus_port) is not served",
                    *prometheus,
                )
            return cls()
        for name in (
            "OTEL_EXPORTER_OTLP_PROTOCOL",
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
            "OTEL_EXPORTER_OTLP_METRICS_PROTOCOL",
        ):
            protocol = variables.get(name, "grpc").strip().lower()
            if protocol not in ("grpc", ""):
                raise ConfigError(f"{name}={protocol}: the sidecar exports OTLP over grpc only")
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

    def providers(self) -> SdkProviders:
        """The SDK's providers and readers for this configuration (none when nothing is
        exported: the SDK is then never imported)."""
        if not (self.traces or self.metrics or self.prometheus):
            return SdkProviders()
        from opentelemetry.sdk.metrics import MeterProvider
        from opentelemetry.sdk.metrics.export import PeriodicExportingMetricReader
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor

        resource = Resource.create(
            {**(self.resource_attributes or {}), "service.version": sidecar_version()}
        )
        tracer_provider = None
        if self.traces:
            # The sampler comes from OTEL_TRACES_SAMPLER(_ARG); the SDK's default is
            # parentbased_always_on, so a caller's sampling decision is followed.
            tracer_provider = TracerProvider(resource=resource, shutdown_on_exit=False)
            for name in self.traces:
                tracer_provider.add_span_processor(BatchSpanProcessor(_span_exporter(name)))
        readers: list[MetricReader] = [
            PeriodicExportingMetricReader(_metric_exporter(name)) for name in self.metrics
        ]
        prometheus = None
        if self.prometheus is not None:
            prometheus = PrometheusEndpoint.on(*self.prometheus)
            readers.append(prometheus.reader)
        meter_provider = (
            MeterProvider(readers, resource=resource, shutdown_on_exit=False) if readers else None
        )
        return SdkProviders(tracer_provider, meter_provider, prometheus)


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


def _span_exporter(name: str) -> SpanExporter:
    if name == "console":
        from opentelemetry.sdk.trace.export import ConsoleSpanExporter

        return ConsoleSpanExporter()
    from sidecar.telemetry.otlp import OtlpSpanExporter  # the SDK's, with a faster encoding

    return OtlpSpanExporter()


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


@functools.cache
def sidecar_version() -> str:
    try:
        return importlib.metadata.version("rules-sidecar")
    except importlib.metadata.PackageNotFoundError:
        return "0+unknown"
