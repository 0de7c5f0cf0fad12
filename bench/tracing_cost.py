"""What telemetry costs on the EvaluateNode hot path: sidecar CPU per evaluation, by setting.

Runs bench/evaluate_node.py (real sidecar process, loopback upstream, 16 concurrent callers) once
per telemetry setting, `--repeat` times each, and prints the median sidecar CPU (us) per
evaluation and throughput. The spans and metrics go to a no-op OTLP receiver run here, in this
process (a gRPC server implementing the OTLP trace and metrics services that drops what it gets),
so the sidecar pays for building, batching, encoding and sending them, and nothing else.

    .venv/bin/python bench/tracing_cost.py [--calls 5000] [--repeat 3]
    .venv/bin/python bench/tracing_cost.py --hooks-only   # in this process: what each part buys
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import threading
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc

EVALUATE_NODE = Path(__file__).resolve().parent / "evaluate_node.py"
FIGURE = re.compile(r"^\s+(\w+)\s+([0-9.]+)$")


class NoopCollector(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """Accepts OTLP/gRPC exports and drops them, counting spans."""

    def __init__(self) -> None:
        self.spans = 0
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:  # noqa: N802
        if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
            with self._lock:
                self.spans += sum(
                    len(scope.spans)
                    for spans in request.resource_spans
                    for scope in spans.scope_spans
                )
            return trace_service_pb2.ExportTraceServiceResponse()
        return metrics_service_pb2.ExportMetricsServiceResponse()

    def close(self) -> None:
        self._server.stop(0).wait()


def scenarios(endpoint: str) -> dict[str, tuple[dict[str, str], str]]:
    """Name -> (sidecar environment, sidecar log level)."""
    otlp = {"OTEL_EXPORTER_OTLP_ENDPOINT": endpoint}
    return {
        "off (no exporter configured)": ({}, "WARNING"),
        "OTEL_SDK_DISABLED=true": ({**otlp, "OTEL_SDK_DISABLED": "true"}, "WARNING"),
        "metrics only (OTLP)": ({**otlp, "OTEL_TRACES_EXPORTER": "none"}, "WARNING"),
        "traces sampled out (ratio 0) + metrics": (
            {
                **otlp,
                "OTEL_TRACES_SAMPLER": "parentbased_traceidratio",
                "OTEL_TRACES_SAMPLER_ARG": "0",
            },
            "WARNING",
        ),
        "traces 100% + metrics (OTLP)": ({**otlp, "OTEL_TRACES_SAMPLER": "always_on"}, "WARNING"),
        "off + JSON log line per evaluation (INFO)": ({}, "INFO"),
    }


def run_once(calls: int, environment: dict[str, str], log_level: str) -> dict[str, float]:
    command = [
        sys.executable,
        str(EVALUATE_NODE),
        "--calls",
        str(calls),
        "--sidecar-log-level",
        log_level,
    ]
    bench_environment = {k: v for k, v in os.environ.items() if not k.startswith("OTEL_")}
    bench_environment["BENCH_SIDECAR_ENV"] = json.dumps(environment)
    output = subprocess.run(
        command, env=bench_environment, capture_output=True, text=True, check=True, timeout=300
    ).stdout
    figures = {}
    for line in output.splitlines():
        match = FIGURE.match(line)
        if match:
            figures[match.group(1)] = float(match.group(2))
    return figures


# Name -> OTEL_* variables. The last two rows put the SDK's own parts back, one at a time, to
# show what ours buy: its tracer (instead of spans.LeanTracer) and its OTLP exporter (instead of
# otlp.OtlpSpanExporter).
HOOK_SETTINGS: dict[str, dict[str, str]] = {
    "off": {},
    "metrics only": {"OTEL_TRACES_EXPORTER": "none"},
    "traces + metrics, 100%": {},
    "traces + metrics, 100%, the SDK's tracer": {},
    "traces + metrics, 100%, the SDK's tracer and OTLP exporter": {},
}


def hook_cost(iterations: int = 5000, rounds: int = 5) -> dict[str, list[float]]:
    """CPU us per evaluation of the telemetry alone, in this process: the SERVER span and RPC
    metrics as `interceptors.TelemetryInterceptor` records them, the INTERNAL span, one CLIENT
    attempt with its trace headers, the evaluation's metrics, and the export of every span to a
    no-op OTLP receiver in another process (flushed before the clock stops, so the exporter's
    thread is paid for; its queue holds the whole run), against a `send` that answers at once.
    Providers come from `TelemetryConfig` as the sidecar builds them. Settings interleaved per
    round; the figure is the CPU (all threads) minus the same loop without telemetry."""
    import asyncio
    import logging
    import time

    from opentelemetry import context as otel_context
    from opentelemetry import propagate, trace
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
    from opentelemetry.trace import SpanKind

    from sidecar.core.model import Node, Outcome, OutcomeKind, Reason
    from sidecar.core.model.exchange import HttpResponse, Origin, OutboundRequest, SendOptions
    from sidecar.telemetry import config
    from sidecar.telemetry.instruments import Telemetry

    node = Node(id="where-is-my-order", connector_id="orders", error_target="e", else_target="x")
    outcome = Outcome(
        OutcomeKind.MATCHED, Reason.BRANCH_MATCHED, "show", branch_index=0, http_status=200
    )
    request = OutboundRequest("GET", "http://127.0.0.1:8081/orders/A-1", (), None)
    options = SendOptions(5.0, 1 << 20, connector_id="orders", url_template=request.url)
    response = HttpResponse(200)
    origin = Origin("http", "127.0.0.1", 8081)
    method = "/rulesidecar.v1.RulesSidecarService/EvaluateNode"
    service, _, name = method.lstrip("/").rpartition("/")
    metadata = (
        ("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        ("user-agent", "grpc-python-asyncio/1.85.1 grpc-c/52.0.0 (linux; chttp2)"),
    )

    async def send(request: OutboundRequest, cap: int) -> HttpResponse:
        return response

    async def evaluate(telemetry: Telemetry) -> None:
        with telemetry.evaluation(node) as evaluation:
            with telemetry.http_attempt(request, options, origin) as attempt:
                if options.propagate_trace:
                    telemetry.trace_headers()
                attempt.record(await send(request, 1 << 20))
            evaluation.record(outcome)

    async def served(telemetry: Telemetry) -> None:
        # What interceptors.TelemetryInterceptor does around each call.
        metrics = telemetry.rpc_method(method)
        tracer = telemetry.tracer if telemetry.tracing else None
        span = token = None
        if tracer is not None:
            carrier = {key: value for key, value in metadata if isinstance(value, str)}
            span = tracer.start_span(
                f"{service}/{name}",
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes={"rpc.system": "grpc", "rpc.service": service, "rpc.method": name},
            )
            token = otel_context.attach(trace.set_span_in_context(span))
        if metrics is not None:
            metrics.active += 1
        started = time.perf_counter()
        try:
            await evaluate(telemetry)
        finally:
            if metrics is not None:
                metrics.active -= 1
                metrics.record(0, time.perf_counter() - started)
            if span is not None:
                if span.is_recording():
                    span.set_attribute("rpc.grpc.status_code", 0)
                otel_context.detach(token)  # type: ignore[arg-type]
                span.end()

    async def loop(telemetry: Telemetry | None) -> None:
        for _ in range(iterations):
            if telemetry is None:
                await send(request, 1 << 20)
            elif telemetry.tracing or telemetry.metrics:
                await served(telemetry)
            else:
                await evaluate(telemetry)

    def measure(setting: str | None) -> float:
        telemetry = None
        if setting is not None:
            variables = {**os.environ, **HOOK_SETTINGS[setting]}
            if setting == "off":
                variables = {}
            chosen = config._span_exporter
            if "OTLP exporter" in setting:
                config._span_exporter = lambda name: OTLPSpanExporter()
            try:
                telemetry = Telemetry.from_config(
                    config.TelemetryConfig.of(variables, prometheus=None)
                )
            finally:
                config._span_exporter = chosen
            if "SDK's tracer" in setting and telemetry._tracer_provider is not None:
                telemetry.tracer = telemetry._tracer_provider.get_tracer("rules-sidecar")
        started = time.process_time()
        asyncio.run(loop(telemetry))
        provider = telemetry and telemetry._tracer_provider
        if provider is not None:
            provider.force_flush()
        spent = time.process_time() - started
        if telemetry is not None:
            telemetry.shutdown()
        return spent / iterations * 1e6

    receiver = subprocess.Popen(
        [sys.executable, __file__, "--receiver"], stdout=subprocess.PIPE, text=True
    )
    assert receiver.stdout is not None
    endpoint = f"http://127.0.0.1:{receiver.stdout.readline().strip()}"
    os.environ.update(
        {
            "OTEL_EXPORTER_OTLP_ENDPOINT": endpoint,
            "OTEL_TRACES_SAMPLER": "always_on",
            "OTEL_BSP_MAX_QUEUE_SIZE": str(iterations * 4),
        }
    )
    logging.getLogger("sidecar.evaluations").setLevel(logging.WARNING)
    figures: dict[str, list[float]] = {setting: [] for setting in HOOK_SETTINGS}
    try:
        measure("traces + metrics, 100%")  # warm-up: imports, channel, caches
        for round_number in range(rounds):
            settings = list(HOOK_SETTINGS)
            settings = (
                settings[round_number % len(settings) :] + settings[: round_number % len(settings)]
            )
            for setting in settings:
                baseline = measure(None)
                figures[setting].append(measure(setting) - baseline)
    finally:
        receiver.terminate()
        receiver.wait(10)
    return figures


def serve_receiver() -> None:
    """A no-op OTLP receiver for `hook_cost`, in its own process: prints its port, runs until
    terminated."""
    import signal

    collector = NoopCollector()
    print(collector.port, flush=True)
    signal.sigwait({signal.SIGTERM, signal.SIGINT})
    collector.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument(
        "--hooks-only", action="store_true", help="only the in-process cost of the hooks"
    )
    parser.add_argument("--receiver", action="store_true", help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.receiver:
        serve_receiver()
        return
    if arguments.hooks_only:
        print("Telemetry per evaluation, in process (CPU us, all threads; min / median of rounds)")
        for name, costs in hook_cost(rounds=arguments.repeat).items():
            print(f"  {name:60} {min(costs):6.1f} / {statistics.median(costs):6.1f}")
        return
    collector = NoopCollector()
    chosen = scenarios(f"http://127.0.0.1:{collector.port}")
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in chosen}
    spans: dict[str, int] = dict.fromkeys(chosen, 0)
    try:
        # Round-robin, so that a burst of load from elsewhere on the machine hits every setting
        # alike; the median of each setting's runs is reported.
        for round_number in range(arguments.repeat):
            for name, (environment, log_level) in chosen.items():
                before = collector.spans
                run = run_once(arguments.calls, environment, log_level)
                runs[name].append(run)
                spans[name] += collector.spans - before
                print(
                    f"  round {round_number + 1}: {name}: "
                    f"{run['sidecar_cpu_us_per_evaluation']:.0f} us/evaluation",
                    file=sys.stderr,
                    flush=True,
                )
    finally:
        collector.close()
    rows = [
        (
            name,
            statistics.median(run["sidecar_cpu_us_per_evaluation"] for run in results),
            statistics.median(run["evaluations_per_second"] for run in results),
            statistics.median(run["p99_ms"] for run in results),
            spans[name],
        )
        for name, results in runs.items()
    ]
    print(
        f"EvaluateNode sidecar CPU by telemetry setting: {arguments.calls} calls x "
        f"{arguments.repeat} runs (median), 16 concurrent callers, {os.cpu_count()} cores"
    )
    print(f"  {'setting':44} {'CPU us/eval':>11} {'eval/s':>8} {'p99 ms':>7} {'spans':>8}")
    baseline = rows[0][1]
    for name, cpu, rate, p99, exported in rows:
        delta = f"{cpu - baseline:+.0f}" if name != rows[0][0] else ""
        print(f"  {name:44} {cpu:8.0f} {delta:>4} {rate:8.0f} {p99:7.1f} {exported:8d}")
    print("  (spans: received by the no-op OTLP receiver over all runs, warm-up calls included)")


if __name__ == "__main__":
    main()
