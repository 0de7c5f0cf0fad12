"""One trace from the caller, through the real `rules-sidecar serve` process, to the upstream.

A test OTLP collector on loopback (a gRPC server implementing the OTLP TraceService and
MetricsService from `opentelemetry-proto`) receives what the sidecar exports; the sidecar is
configured only by the standard OTEL_* variables. The client starts a trace and sends its
`traceparent` in the call's metadata; the loopback upstream records the `traceparent` the sidecar
sent on.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from google.protobuf import json_format
from opentelemetry import propagate, trace
from opentelemetry.proto.collector.metrics.v1 import metrics_service_pb2, metrics_service_pb2_grpc
from opentelemetry.proto.collector.trace.v1 import trace_service_pb2, trace_service_pb2_grpc
from opentelemetry.proto.trace.v1 import trace_pb2
from opentelemetry.sdk.trace import TracerProvider
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from tests.support.calls import RPC_TIMEOUT
from tests.support.loopback import LOOPBACK_ENVIRONMENT
from tests.support.sidecars import SidecarProcess
from tests.support.upstreams import ORDER_API_KEY, Upstream

ARRIVAL_SECONDS = 10.0
VISITOR_ORDER = "A-10023"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")


class Collector(
    trace_service_pb2_grpc.TraceServiceServicer, metrics_service_pb2_grpc.MetricsServiceServicer
):
    """A loopback OTLP/gRPC receiver that keeps every span and metric it is sent."""

    def __init__(self) -> None:
        self.spans: list[tuple[dict[str, Any], trace_pb2.Span]] = []
        self.metric_names: set[str] = set()
        self.metric_points: list[tuple[str, dict[str, Any]]] = []
        self._lock = threading.Lock()
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        trace_service_pb2_grpc.add_TraceServiceServicer_to_server(self, self._server)
        metrics_service_pb2_grpc.add_MetricsServiceServicer_to_server(self, self._server)
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def Export(self, request: Any, context: grpc.ServicerContext) -> Any:
        with self._lock:
            if isinstance(request, trace_service_pb2.ExportTraceServiceRequest):
                for resource_spans in request.resource_spans:
                    resource = _attributes(resource_spans.resource.attributes)
                    for scope_spans in resource_spans.scope_spans:
                        self.spans += [(resource, span) for span in scope_spans.spans]
                return trace_service_pb2.ExportTraceServiceResponse()
            for resource_metrics in request.resource_metrics:
                for scope_metrics in resource_metrics.scope_metrics:
                    for metric in scope_metrics.metrics:
                        self.metric_names.add(metric.name)
                        kind = metric.WhichOneof("data")
                        for point in getattr(metric, kind).data_points:
                            self.metric_points.append((metric.name, _attributes(point.attributes)))
            return metrics_service_pb2.ExportMetricsServiceResponse()

    def trace(self, trace_id: bytes, count: int) -> list[trace_pb2.Span]:
        """The spans of one trace, once `count` of them have arrived (fails after a while)."""
        deadline = time.monotonic() + ARRIVAL_SECONDS
        while True:
            with self._lock:
                found = [span for _, span in self.spans if span.trace_id == trace_id]
            if len(found) >= count or time.monotonic() > deadline:
                return found
            time.sleep(0.05)

    def close(self) -> None:
        self._server.stop(0).wait()


def _attributes(attributes: Any) -> dict[str, Any]:
    values: dict[str, Any] = {}
    for attribute in attributes:
        kind = attribute.value.WhichOneof("value")
        values[attribute.key] = getattr(attribute.value, kind) if kind else None
    return values


@pytest.fixture
def collector() -> Iterator[Collector]:
    receiver = Collector()
    yield receiver
    receiver.close()


@pytest.fixture
def traced_sidecar(
    sidecar_process: Callable[..., SidecarProcess],
    collector: Collector,
    upstream: Upstream,
    tmp_path: Path,
) -> SidecarProcess:
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(
        yaml.safe_dump(
            {
                "connectors": [
                    {
                        "id": "order-status",
                        "status": "LIVE",
                        "url_template": upstream.url("/orders/{{order_number}}"),
                        "auth": {"api_key": {"name": "X-API-Key", "value_secret": "store_api_key"}},
                    }
                ]
            }
        )
    )
    return sidecar_process(
        args=["--connectors-file", str(connectors)],
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            "OTEL_BSP_SCHEDULE_DELAY": "50",
            "OTEL_METRIC_EXPORT_INTERVAL": "200",
            **LOOPBACK_ENVIRONMENT,
            "RULES_SECRET_store_api_key": ORDER_API_KEY,
        },
    )


def evaluate_in_a_client_trace(sidecar: SidecarProcess) -> tuple[pb.EvaluateNodeResponse, Any]:
    """Start a span as a chat backend would and call EvaluateNode with its traceparent."""
    client_tracer = TracerProvider().get_tracer("chat-backend")
    node = {
        "id": "where-is-my-order",
        "connector_id": "order-status",
        "branches": [
            {
                "target": "show-status",
                "conditions": [
                    {
                        "subject": {"kind": "SUBJECT_KIND_BODY", "path": "status"},
                        "operator": "OPERATOR_EQUALS",
                        "operand": "shipped",
                    }
                ],
            }
        ],
        "else_target": "ask-again",
        "error_target": "agent",
    }
    request = pb.EvaluateNodeRequest(node=json_format.ParseDict(node, pb.Node()))
    request.variables.update({"order_number": VISITOR_ORDER})
    with client_tracer.start_as_current_span("chat-turn", kind=trace.SpanKind.CLIENT) as span:
        carrier: dict[str, str] = {}
        propagate.inject(carrier)
        answer = sidecar.stub.EvaluateNode(
            request, timeout=RPC_TIMEOUT, metadata=tuple(carrier.items())
        )
    return answer, span.get_span_context()


def test_one_trace_runs_from_the_client_through_the_sidecar_process_to_the_upstream(
    traced_sidecar: SidecarProcess, collector: Collector, upstream: Upstream
) -> None:
    answer, client = evaluate_in_a_client_trace(traced_sidecar)
    assert answer.outcome == pb.OUTCOME_MATCHED

    # The upstream was told the same trace, with the sidecar's CLIENT span as its parent.
    sent = upstream.last("/orders").header("traceparent") or ""
    match = TRACEPARENT.match(sent)
    assert match is not None, sent
    assert match.group(1) == f"{client.trace_id:032x}"

    # The spans reached the OTLP collector, linked caller -> SERVER -> INTERNAL -> CLIENT.
    spans = collector.trace(client.trace_id.to_bytes(16, "big"), count=3)
    by_kind = {span.kind: span for span in spans}
    assert sorted(by_kind) == [1, 2, 3], spans  # INTERNAL, SERVER, CLIENT: one of each
    assert len(spans) == 3, spans
    server = by_kind[trace_pb2.Span.SPAN_KIND_SERVER]
    internal = by_kind[trace_pb2.Span.SPAN_KIND_INTERNAL]
    http = by_kind[trace_pb2.Span.SPAN_KIND_CLIENT]
    assert server.parent_span_id == client.span_id.to_bytes(8, "big")
    assert internal.parent_span_id == server.span_id
    assert http.parent_span_id == internal.span_id
    assert match.group(2) == http.span_id.hex()
    assert server.name == "rulesidecar.v1.RulesSidecarService/EvaluateNode"
    assert internal.name == "evaluate_node"
    assert _attributes(internal.attributes)["rules_sidecar.outcome"] == "MATCHED"
    assert _attributes(http.attributes)["url.full"].endswith("/orders/REDACTED")
    resources = {resource.get("service.name") for resource, _ in collector.spans}
    assert resources == {"rules-sidecar"}

    # The evaluation's JSON log line names the same trace and the evaluation span.
    lines = [
        json.loads(line)
        for line in traced_sidecar.stderr_text().splitlines()
        if '"sidecar.evaluations"' in line
    ]
    assert [(line["trace_id"], line["span_id"]) for line in lines] == [
        (f"{client.trace_id:032x}", internal.span_id.hex())
    ]
    assert VISITOR_ORDER not in json.dumps(lines)

    # Metrics go over OTLP too (the last export happens on SIGTERM at the latest).
    assert traced_sidecar.terminate() == 0
    assert "http.client.request.duration" in collector.metric_names
    assert ("http.client.request.duration", {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
        "http.response.status_code": 200,
        "rules_sidecar.connector.id": "order-status",
    }) in collector.metric_points  # fmt: skip
    assert ("rpc.server.call.duration", {
        "rpc.system": "grpc",
        "rpc.service": "rulesidecar.v1.RulesSidecarService",
        "rpc.method": "EvaluateNode",
        "rpc.grpc.status_code": 0,
    }) in collector.metric_points  # fmt: skip
    assert "rules_sidecar.evaluations" in collector.metric_names
    assert "process.memory.usage" in collector.metric_names


def test_every_log_line_of_the_process_is_json(traced_sidecar: SidecarProcess) -> None:
    evaluate_in_a_client_trace(traced_sidecar)
    assert traced_sidecar.terminate() == 0

    lines = traced_sidecar.stderr_text().splitlines()
    assert lines
    entries = [json.loads(line) for line in lines]
    assert {"timestamp", "level", "logger", "message"} <= set(entries[0])
    assert any(entry["message"] == "rules-sidecar is SERVING" for entry in entries)


# -- the evaluation lines of the real process ------------------------------------------------------


@pytest.mark.parametrize(
    ("every", "expected"),
    [
        # The default: the first of each connector and outcome, then one in 100; every ERROR.
        (None, [("fine", "MATCHED", 100), ("broken", "ERROR", 1), ("broken", "ERROR", 1)]),
        ("2", [("fine", "MATCHED", 2), ("fine", "MATCHED", 2)] + [("broken", "ERROR", 1)] * 2),
        ("1", [("fine", "MATCHED", 1)] * 3 + [("broken", "ERROR", 1)] * 2),
        ("0", [("broken", "ERROR", 1)] * 2),
    ],
    ids=["default", "every-2", "every-1", "errors-only"],
)
def test_the_sidecar_writes_every_errors_line_and_one_in_n_of_the_others(
    sidecar_process: Callable[..., SidecarProcess],
    upstream: Upstream,
    tmp_path: Path,
    every: str | None,
    expected: list[tuple[str, str, int]],
) -> None:
    connectors = tmp_path / "connectors.yaml"
    connectors.write_text(
        yaml.safe_dump(
            {
                "connectors": [
                    {"id": "fine", "status": "LIVE", "url_template": upstream.url("/status/200")},
                    {"id": "broken", "status": "LIVE", "url_template": upstream.url("/status/503")},
                ]
            }
        )
    )
    setting = {} if every is None else {"RULES_SIDECAR_EVALUATION_LOG_EVERY": every}
    sidecar = sidecar_process(
        args=["--connectors-file", str(connectors)], env={**LOOPBACK_ENVIRONMENT, **setting}
    )

    for connector in ["fine"] * 3 + ["broken"] * 2:
        node = {
            "connector_id": connector,
            "branches": [
                {
                    "target": "fine",
                    "conditions": [
                        {
                            "subject": {"kind": "SUBJECT_KIND_STATUS"},
                            "operator": "OPERATOR_EQUALS",
                            "operand": 200,
                        }
                    ],
                }
            ],
            "error_target": "agent",
        }
        request = pb.EvaluateNodeRequest(node=json_format.ParseDict(node, pb.Node()))
        sidecar.stub.EvaluateNode(request, timeout=RPC_TIMEOUT)

    lines = [
        json.loads(line)
        for line in sidecar.stderr_text().splitlines()
        if '"sidecar.evaluations"' in line
    ]
    assert [(line["connector"], line["outcome"], line["logged_one_in"]) for line in lines] == (
        expected
    )
