"""Telemetry: spans, metrics and evaluation log lines, over the real wire.

An in-process sidecar (127.0.0.1:0) gets a `Telemetry` with in-memory exporters (the composition
root's `telemetry` parameter, through `sidecar_factory`) and calls real loopback upstreams;
the tests read back the span tree, the attributes, the metric points and the log lines. The
configuration tables and URL redaction are checked without a server.
"""

from __future__ import annotations

import asyncio
import io
import json
import logging
import os
import re
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest
from aiohttp import web
from google.protobuf import json_format
from opentelemetry import propagate, trace
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, ParentBased
from opentelemetry.trace import SpanKind, StatusCode
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.engine import Engine
from sidecar.errors import ConfigError
from sidecar.server import telemetry_config
from sidecar.settings import Settings
from sidecar.telemetry.config import TelemetryConfig
from sidecar.telemetry.instruments import Telemetry
from sidecar.telemetry.logs import JsonFormatter
from sidecar.telemetry.redaction import redacted_url
from tests.support.calls import RPC_TIMEOUT, register
from tests.support.sidecars import InProcessSidecar, free_loopback_port
from tests.support.upstreams import ORDER_API_KEY, Upstream

SERVICE = "rulesidecar.v1.RulesSidecarService"
CLIENT_TRACE_ID = 0x4BF92F3577B34DA6A3CE929D0E0E4736
CLIENT_SPAN_ID = 0x00F067AA0BA902B7
VISITOR_ORDER = "A-10023"
TRACEPARENT = re.compile(r"^00-([0-9a-f]{32})-([0-9a-f]{16})-[0-9a-f]{2}$")

# ---------------------------------------------------------------------------------------------
# An in-process sidecar with in-memory exporters
# ---------------------------------------------------------------------------------------------


@dataclass
class Traced:
    """A sidecar whose telemetry goes to memory, and the upstream it calls."""

    sidecar: InProcessSidecar
    upstream: Upstream
    spans: InMemorySpanExporter
    metrics: InMemoryMetricReader
    log: io.StringIO

    def register(self, connector_id: str, url: str, **fields: Any) -> pb.Connector:
        return register(self.sidecar.stub, connector_id, url, **fields)

    def register_orders(self, connector_id: str = "orders", **fields: Any) -> None:
        auth = {"api_key": {"name": "X-API-Key", "value_secret": "store_api_key"}}
        self.register(
            connector_id, self.upstream.url("/orders/{{order_number}}"), auth=auth, **fields
        )

    def evaluate(
        self,
        connector_id: str,
        variables: dict[str, Any],
        *,
        traceparent: str | None = None,
    ) -> pb.EvaluateNodeResponse:
        node = {
            "id": "where-is-my-order",
            "connector_id": connector_id,
            "branches": [
                {
                    "target": "show-status",
                    "conditions": [
                        {
                            "subject": {"kind": "SUBJECT_KIND_STATUS"},
                            "operator": "OPERATOR_EQUALS",
                            "operand": 200,
                        }
                    ],
                }
            ],
            "else_target": "ask-again",
            "error_target": "agent",
        }
        request = pb.EvaluateNodeRequest(node=json_format.ParseDict(node, pb.Node()))
        request.variables.update(variables)
        metadata = (("traceparent", traceparent),) if traceparent else None
        self.spans.clear()  # registration spans are not what the tests read
        return self.sidecar.stub.EvaluateNode(request, timeout=RPC_TIMEOUT, metadata=metadata)

    def finished(self) -> list[ReadableSpan]:
        return list(self.spans.get_finished_spans())

    def finished_after_abort(self) -> list[ReadableSpan]:
        """An aborted call's status reaches the client before the SERVER span has ended."""
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            if any(span.kind is SpanKind.SERVER for span in self.finished()):
                break
            time.sleep(0.01)
        return self.finished()

    def only(self, kind: SpanKind) -> ReadableSpan:
        (span,) = [span for span in self.finished() if span.kind is kind]
        return span

    def clients(self) -> list[ReadableSpan]:
        spans = [span for span in self.finished() if span.kind is SpanKind.CLIENT]
        return sorted(spans, key=lambda span: span.start_time or 0)

    def metrics_named(self, name: str) -> list[Any]:
        data = self.metrics.get_metrics_data()
        assert data is not None
        return [
            metric
            for resource in data.resource_metrics
            for scope in resource.scope_metrics
            for metric in scope.metrics
            if metric.name == name
        ]

    def points(self, name: str) -> list[Any]:
        return [point for metric in self.metrics_named(name) for point in metric.data.data_points]


@pytest.fixture
def traced(
    sidecar_factory: Callable[..., InProcessSidecar],
    upstream: Upstream,
    tmp_path: Path,
) -> Iterator[Traced]:
    spans = InMemorySpanExporter()
    tracer_provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    tracer_provider.add_span_processor(SimpleSpanProcessor(spans))
    reader = InMemoryMetricReader()
    telemetry = Telemetry(tracer_provider, MeterProvider([reader]))
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / "store_api_key").write_text(ORDER_API_KEY)
    log = io.StringIO()
    handler = logging.StreamHandler(log)
    handler.setFormatter(JsonFormatter())
    evaluations = logging.getLogger("sidecar.evaluations")
    evaluations.addHandler(handler)
    # setLevel, not an attribute patch: it also clears the loggers' isEnabledFor cache, which an
    # earlier test (caplog on "sidecar") may have filled with "INFO is off".
    level = evaluations.level
    evaluations.setLevel(logging.INFO)
    try:
        sidecar = sidecar_factory(secrets_dir=secrets, telemetry=telemetry)
        yield Traced(sidecar, upstream, spans, reader, log)
    finally:
        evaluations.removeHandler(handler)
        evaluations.setLevel(level)


def client_traceparent(sampled: bool = True) -> str:
    return f"00-{CLIENT_TRACE_ID:032x}-{CLIENT_SPAN_ID:016x}-{'01' if sampled else '00'}"


def assert_tree(traced: Traced, attempts: int) -> tuple[ReadableSpan, ReadableSpan]:
    """SERVER (child of the client) -> INTERNAL -> one CLIENT per attempt; all one trace."""
    server, internal = traced.only(SpanKind.SERVER), traced.only(SpanKind.INTERNAL)
    clients = traced.clients()
    assert len(clients) == attempts
    assert {span.context.trace_id for span in [server, internal, *clients]} == {CLIENT_TRACE_ID}
    assert server.parent is not None
    assert server.parent.span_id == CLIENT_SPAN_ID
    assert server.parent.is_remote
    assert internal.parent is not None
    assert internal.parent.span_id == server.context.span_id
    for client in clients:
        assert client.parent is not None
        assert client.parent.span_id == internal.context.span_id
    assert server.name == f"{SERVICE}/EvaluateNode"
    assert dict(server.attributes or {}) == {
        "rpc.system": "grpc",
        "rpc.service": SERVICE,
        "rpc.method": "EvaluateNode",
        "rpc.grpc.status_code": 0,
    }
    assert internal.name == "evaluate_node"
    return server, internal


def assert_nothing_private(traced: Traced, *private: str) -> None:
    for span in traced.finished():
        text = json.dumps(dict(span.attributes or {})) + span.name + (span.status.description or "")
        for value in (ORDER_API_KEY, *private):
            assert value not in text, f"{value!r} leaked into span {span.name}"


# ---------------------------------------------------------------------------------------------
# Span trees: matched, no match, error
# ---------------------------------------------------------------------------------------------


def test_matched_evaluation_is_a_server_internal_client_tree(traced: Traced) -> None:
    traced.register_orders()

    answer = traced.evaluate(
        "orders", {"order_number": VISITOR_ORDER}, traceparent=client_traceparent()
    )

    assert answer.outcome == pb.OUTCOME_MATCHED
    _server, internal = assert_tree(traced, attempts=1)
    assert dict(internal.attributes or {}) == {
        "rules_sidecar.connector.id": "orders",
        "rules_sidecar.connector.version": 1,
        "rules_sidecar.node.id": "where-is-my-order",
        "rules_sidecar.outcome": "MATCHED",
        "rules_sidecar.reason": "BRANCH_MATCHED",
        "rules_sidecar.branch_index": 0,
        "rules_sidecar.attempts": 1,
        "http.response.status_code": 200,
    }
    assert internal.status.status_code is StatusCode.UNSET
    (client,) = traced.clients()
    assert client.name == "GET"
    assert dict(client.attributes or {}) == {
        "http.request.method": "GET",
        "server.address": "127.0.0.1",
        "server.port": traced.upstream.port,
        "url.full": f"http://127.0.0.1:{traced.upstream.port}/orders/REDACTED",
        "rules_sidecar.connector.id": "orders",
        "http.response.status_code": 200,
    }
    assert client.status.status_code is StatusCode.UNSET
    assert_nothing_private(traced, VISITOR_ORDER)


def test_upstream_receives_the_client_spans_traceparent(traced: Traced) -> None:
    traced.register_orders()

    traced.evaluate("orders", {"order_number": VISITOR_ORDER}, traceparent=client_traceparent())

    sent = traced.upstream.last("/orders").header("traceparent")
    assert sent is not None
    match = TRACEPARENT.match(sent)
    assert match is not None, sent
    (client,) = traced.clients()
    assert match.group(1) == f"{CLIENT_TRACE_ID:032x}"
    assert match.group(2) == f"{client.context.span_id:016x}"


def test_no_match_evaluation_records_the_4xx_attempt_as_a_client_error(traced: Traced) -> None:
    traced.register_orders()

    answer = traced.evaluate("orders", {"order_number": "Z-1"}, traceparent=client_traceparent())

    assert answer.outcome == pb.OUTCOME_NO_MATCH
    _, internal = assert_tree(traced, attempts=1)
    attributes = dict(internal.attributes or {})
    assert attributes["rules_sidecar.outcome"] == "NO_MATCH"
    assert attributes["rules_sidecar.reason"] == "NO_BRANCH_MATCHED"
    assert attributes["http.response.status_code"] == 404
    assert "rules_sidecar.branch_index" not in attributes
    assert internal.status.status_code is StatusCode.UNSET
    (client,) = traced.clients()
    assert client.attributes is not None
    assert client.attributes["http.response.status_code"] == 404
    assert client.attributes["error.type"] == "404"
    assert client.status.status_code is StatusCode.ERROR
    assert_nothing_private(traced, "Z-1")


def test_error_evaluation_has_a_client_span_per_attempt_with_resend_counts(
    traced: Traced,
) -> None:
    traced.upstream.respond("/unavailable", status=503, json={"busy": True})
    traced.register("flaky", traced.upstream.url("/unavailable"))

    answer = traced.evaluate("flaky", {}, traceparent=client_traceparent())

    assert (answer.outcome, answer.reason) == (pb.OUTCOME_ERROR, pb.REASON_UPSTREAM_ERROR)
    _, internal = assert_tree(traced, attempts=3)
    attributes = dict(internal.attributes or {})
    assert attributes["rules_sidecar.outcome"] == "ERROR"
    assert attributes["rules_sidecar.reason"] == "UPSTREAM_ERROR"
    assert attributes["rules_sidecar.attempts"] == 3
    assert attributes["error.type"] == "UPSTREAM_ERROR"
    assert internal.status.status_code is StatusCode.ERROR
    clients = traced.clients()
    assert [span.attributes.get("http.request.resend_count") for span in clients] == [None, 1, 2]  # type: ignore[union-attr]
    for client in clients:
        assert client.attributes is not None
        assert client.attributes["http.response.status_code"] == 503
        assert client.attributes["error.type"] == "503"
        assert client.status.status_code is StatusCode.ERROR
    sent = [request.header("traceparent") for request in traced.upstream.requests]
    assert [TRACEPARENT.match(value or "").group(2) for value in sent] == [  # type: ignore[union-attr]
        f"{span.context.span_id:016x}" for span in clients
    ]


def test_refused_connection_sets_error_type_without_a_status(
    traced: Traced, refused_url: str
) -> None:
    traced.register("down", refused_url)

    answer = traced.evaluate("down", {}, traceparent=client_traceparent())

    assert answer.reason == pb.REASON_CONNECT_ERROR
    _, internal = assert_tree(traced, attempts=3)
    assert internal.attributes is not None
    assert internal.attributes["rules_sidecar.reason"] == "CONNECT_ERROR"
    for client in traced.clients():
        assert client.attributes is not None
        assert client.attributes["error.type"] == "CONNECT_ERROR"
        assert "http.response.status_code" not in client.attributes
        assert client.status.status_code is StatusCode.ERROR


def test_nothing_sent_means_no_client_span(traced: Traced) -> None:
    traced.register_orders()

    answer = traced.evaluate("orders", {}, traceparent=client_traceparent())

    assert answer.reason == pb.REASON_MISSING_VARIABLE
    assert_tree(traced, attempts=0)


def test_url_full_redacts_every_query_value_and_placeholder_segment(traced: Traced) -> None:
    traced.register(
        "echo",
        traced.upstream.url("/echo/customers/{{customer}}/orders?fixed=1"),
        query={"email": "{{email}}"},
        auth={
            "api_key": {
                "name": "api_key",
                "value_secret": "store_api_key",
                "location": "API_KEY_LOCATION_QUERY",
            }
        },
    )

    traced.evaluate("echo", {"customer": "ada", "email": "ada@example.com"})

    (client,) = traced.clients()
    assert client.attributes is not None
    assert client.attributes["url.full"] == (
        f"http://127.0.0.1:{traced.upstream.port}/echo/customers/REDACTED/orders"
        "?fixed=REDACTED&email=REDACTED&api_key=REDACTED"
    )
    assert ORDER_API_KEY in traced.upstream.last("/echo").query  # it was sent, not recorded
    assert_nothing_private(traced, "ada@example.com", "ada%40example.com", "/ada/")


def test_connector_can_opt_out_of_trace_propagation(traced: Traced) -> None:
    traced.register_orders(disable_trace_propagation=True)

    traced.evaluate("orders", {"order_number": VISITOR_ORDER}, traceparent=client_traceparent())

    request = traced.upstream.last("/orders")
    assert request.header("traceparent") is None
    assert request.header("tracestate") is None
    assert len(traced.clients()) == 1  # still traced, just not told


def test_unsampled_caller_is_followed_but_the_trace_id_still_goes_upstream(
    traced: Traced,
) -> None:
    traced.register_orders()

    traced.evaluate(
        "orders", {"order_number": VISITOR_ORDER}, traceparent=client_traceparent(sampled=False)
    )

    assert traced.finished() == []  # parent-based: the caller decided not to sample
    sent = traced.upstream.last("/orders").header("traceparent") or ""
    assert sent.startswith(f"00-{CLIENT_TRACE_ID:032x}-")
    assert sent.endswith("-00")


def test_without_a_caller_trace_the_server_span_is_a_root(traced: Traced) -> None:
    traced.register_orders()

    traced.evaluate("orders", {"order_number": VISITOR_ORDER})

    server = traced.only(SpanKind.SERVER)
    assert server.parent is None
    assert traced.only(SpanKind.INTERNAL).context.trace_id == server.context.trace_id


def test_server_span_carries_the_status_of_a_mapped_error(traced: Traced) -> None:
    traced.spans.clear()
    with pytest.raises(grpc.RpcError) as raised:
        traced.sidecar.stub.GetConnector(pb.GetConnectorRequest(id="nope"), timeout=RPC_TIMEOUT)

    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    (server,) = traced.finished_after_abort()
    assert server.name == f"{SERVICE}/GetConnector"
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.NOT_FOUND.value[0]
    assert server.status.status_code is StatusCode.UNSET  # the caller's mistake, not ours


def test_server_span_of_an_invalid_request_says_invalid_argument(traced: Traced) -> None:
    traced.spans.clear()
    with pytest.raises(grpc.RpcError):
        traced.sidecar.stub.EvaluateNode(pb.EvaluateNodeRequest(), timeout=RPC_TIMEOUT)

    (server,) = traced.finished_after_abort()
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INVALID_ARGUMENT.value[0]


def test_a_bug_marks_the_server_and_evaluation_spans_as_errors_by_type(
    traced: Traced, monkeypatch: pytest.MonkeyPatch
) -> None:
    traced.register_orders()

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError(f"failed for {VISITOR_ORDER}")  # text that must not be recorded

    monkeypatch.setattr(Engine, "evaluate", broken)
    with pytest.raises(grpc.RpcError) as raised:
        traced.evaluate("orders", {"order_number": VISITOR_ORDER}, traceparent=client_traceparent())

    assert raised.value.code() is grpc.StatusCode.INTERNAL
    traced.finished_after_abort()
    server, internal = traced.only(SpanKind.SERVER), traced.only(SpanKind.INTERNAL)
    assert server.attributes is not None
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.INTERNAL.value[0]
    assert server.status.status_code is StatusCode.ERROR
    assert internal.attributes is not None
    assert internal.attributes["error.type"] == "RuntimeError"
    assert internal.status.status_code is StatusCode.ERROR
    assert all(not span.events for span in traced.finished())  # no exception event, no message
    assert_nothing_private(traced, VISITOR_ORDER)


def test_server_span_sees_a_call_refused_by_the_token_check(
    sidecar_factory: Callable[..., InProcessSidecar],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    spans = InMemorySpanExporter()
    provider = TracerProvider(sampler=ParentBased(ALWAYS_ON))
    provider.add_span_processor(SimpleSpanProcessor(spans))
    telemetry = Telemetry(provider)
    token = tmp_path / "evaluation-token"
    token.write_text("let-me-in-0123456789")
    sidecar = sidecar_factory(evaluation_token_file=token, telemetry=telemetry)

    with pytest.raises(grpc.RpcError) as raised:
        sidecar.stub.ListConnectors(pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT)

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    deadline = time.monotonic() + 5
    while not spans.get_finished_spans() and time.monotonic() < deadline:
        time.sleep(0.01)
    (server,) = spans.get_finished_spans()
    assert server.attributes is not None
    assert server.attributes["rpc.method"] == "ListConnectors"
    assert server.attributes["rpc.grpc.status_code"] == grpc.StatusCode.UNAUTHENTICATED.value[0]


# ---------------------------------------------------------------------------------------------
# Metrics
# ---------------------------------------------------------------------------------------------


def test_metric_points_for_matched_no_match_and_error(traced: Traced) -> None:
    traced.upstream.respond("/unavailable", status=503, json={"busy": True})
    traced.register_orders()
    traced.register("flaky", traced.upstream.url("/unavailable"))

    traced.evaluate("orders", {"order_number": VISITOR_ORDER})
    traced.evaluate("orders", {"order_number": "Z-1"})
    traced.evaluate("flaky", {})
    traced.evaluate("missing-connector", {})

    durations = {
        tuple(sorted(point.attributes.items())): point
        for point in traced.points("http.client.request.duration")
    }
    origin = (
        ("server.address", "127.0.0.1"),
        ("server.port", traced.upstream.port),
    )

    def attempt(connector: str, status: int, *error: tuple[str, str]) -> tuple[Any, ...]:
        return tuple(
            sorted(
                (
                    *error,
                    ("http.request.method", "GET"),
                    ("http.response.status_code", status),
                    ("rules_sidecar.connector.id", connector),
                    *origin,
                )
            )
        )

    assert {key: point.count for key, point in durations.items()} == {
        attempt("orders", 200): 1,
        attempt("orders", 404, ("error.type", "404")): 1,
        attempt("flaky", 503, ("error.type", "503")): 3,
    }
    histogram = next(iter(durations.values()))
    assert histogram.explicit_bounds[:3] == (0.005, 0.01, 0.025)
    # Seconds, by the declared unit rather than by how long this machine took.
    assert {metric.unit for metric in traced.metrics_named("http.client.request.duration")} == {"s"}
    assert all(point.sum > 0 for point in durations.values())

    evaluations = {
        (
            point.attributes["rules_sidecar.connector.id"],
            point.attributes["rules_sidecar.outcome"],
            point.attributes["rules_sidecar.reason"],
        ): point.value
        for point in traced.points("rules_sidecar.evaluations")
    }
    assert evaluations == {
        ("orders", "MATCHED", "BRANCH_MATCHED"): 1,
        ("orders", "NO_MATCH", "NO_BRANCH_MATCHED"): 1,
        ("flaky", "ERROR", "UPSTREAM_ERROR"): 1,
        ("_OTHER", "ERROR", "CONNECTOR_NOT_FOUND"): 1,  # caller input never becomes a label
    }
    (retries,) = traced.points("rules_sidecar.egress.retries")
    assert (dict(retries.attributes), retries.value) == ({"rules_sidecar.connector.id": "flaky"}, 2)
    (in_flight,) = traced.points("rules_sidecar.evaluations.in_flight")
    assert in_flight.value == 0
    breakers = {
        point.attributes["server.port"]: point.value
        for point in traced.points("rules_sidecar.egress.breaker.state")
    }
    assert breakers == {traced.upstream.port: 0}  # 3 failures, threshold 5: still closed


def test_open_breaker_shows_in_the_state_gauge(
    sidecar_factory: Callable[..., InProcessSidecar],
    upstream: Upstream,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider([reader]))
    sidecar = sidecar_factory(breaker_failure_threshold=1, retries=0, telemetry=telemetry)
    upstream.respond("/down", status=500, json={})
    traced = Traced(sidecar, upstream, InMemorySpanExporter(), reader, io.StringIO())
    traced.register("down", upstream.url("/down"))

    traced.evaluate("down", {})

    (state,) = traced.points("rules_sidecar.egress.breaker.state")
    assert dict(state.attributes) == {
        "url.scheme": "http",
        "server.address": "127.0.0.1",
        "server.port": upstream.port,
    }
    assert state.value == 2  # open
    assert traced.finished() == []  # metrics without traces: no span anywhere


def rpc_calls(traced: Traced) -> dict[tuple[str, int], int]:
    """Points of rpc.server.call.duration: (method, status code) -> count."""
    calls: dict[tuple[str, int], int] = {}
    for point in traced.points("rpc.server.call.duration"):
        attributes = dict(point.attributes)
        assert (attributes.pop("rpc.system"), attributes.pop("rpc.service")) == ("grpc", SERVICE)
        key = (attributes.pop("rpc.method"), attributes.pop("rpc.grpc.status_code"))
        assert attributes == {}, "no other attribute"
        calls[key] = point.count
    return calls


def wait_for_calls(traced: Traced, expected: dict[tuple[str, int], int]) -> dict[Any, int]:
    """An aborted call's status reaches the client before the interceptor has recorded it."""
    deadline = time.monotonic() + 5
    while (calls := rpc_calls(traced)) != expected and time.monotonic() < deadline:
        time.sleep(0.01)
    return calls


def test_rpc_durations_by_method_and_status_code(traced: Traced) -> None:
    traced.register_orders()
    traced.evaluate("orders", {"order_number": VISITOR_ORDER})
    traced.evaluate("missing-connector", {})  # an ERROR outcome is still an OK call
    with pytest.raises(grpc.RpcError) as raised:
        traced.sidecar.stub.GetConnector(pb.GetConnectorRequest(id="nope"), timeout=RPC_TIMEOUT)
    assert raised.value.code() is grpc.StatusCode.NOT_FOUND
    with pytest.raises(grpc.RpcError):
        traced.sidecar.stub.EvaluateNode(pb.EvaluateNodeRequest(), timeout=RPC_TIMEOUT)

    expected = {
        ("RegisterConnector", 0): 1,
        ("EvaluateNode", 0): 2,
        ("GetConnector", grpc.StatusCode.NOT_FOUND.value[0]): 1,
        ("EvaluateNode", grpc.StatusCode.INVALID_ARGUMENT.value[0]): 1,
    }
    assert wait_for_calls(traced, expected) == expected
    (metric,) = traced.metrics_named("rpc.server.call.duration")
    assert metric.unit == "s"
    assert metric.data.data_points[0].explicit_bounds[:3] == (0.0005, 0.001, 0.0025)
    in_flight = {
        point.attributes["rpc.method"]: point.value
        for point in traced.points("rules_sidecar.rpc.in_flight")
    }
    assert in_flight == {"RegisterConnector": 0, "EvaluateNode": 0, "GetConnector": 0}


def test_calls_in_flight_are_counted_while_the_upstream_holds_them(traced: Traced) -> None:
    release = threading.Event()

    async def held(request: web.Request) -> web.StreamResponse:
        await asyncio.to_thread(release.wait, RPC_TIMEOUT)
        return web.json_response({"ok": True})

    traced.upstream.route("/held", held)
    traced.register("held", traced.upstream.url("/held"))
    request = pb.EvaluateNodeRequest(
        node=pb.Node(id="n", connector_id="held", else_target="a", error_target="b")
    )
    call = traced.sidecar.stub.EvaluateNode.future(request, timeout=RPC_TIMEOUT)
    try:
        deadline = time.monotonic() + RPC_TIMEOUT
        while not traced.upstream.hits("/held") and time.monotonic() < deadline:
            time.sleep(0.01)
        in_flight = {
            point.attributes["rpc.method"]: point.value
            for point in traced.points("rules_sidecar.rpc.in_flight")
        }
        (evaluations,) = traced.points("rules_sidecar.evaluations.in_flight")
    finally:
        release.set()
    assert call.result().outcome == pb.OUTCOME_NO_MATCH
    assert in_flight == {"RegisterConnector": 0, "EvaluateNode": 1}
    assert evaluations.value == 1
    (after,) = [
        point.value
        for point in traced.points("rules_sidecar.rpc.in_flight")
        if point.attributes["rpc.method"] == "EvaluateNode"
    ]
    assert after == 0


def test_a_call_refused_by_the_token_check_is_measured(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream, tmp_path: Path
) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(meter_provider=MeterProvider([reader]))
    token = tmp_path / "evaluation-token"
    token.write_text("let-me-in-0123456789")
    sidecar = sidecar_factory(evaluation_token_file=token, telemetry=telemetry)
    traced = Traced(sidecar, upstream, InMemorySpanExporter(), reader, io.StringIO())

    with pytest.raises(grpc.RpcError) as raised:
        sidecar.stub.ListConnectors(pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT)

    assert raised.value.code() is grpc.StatusCode.UNAUTHENTICATED
    expected = {("ListConnectors", grpc.StatusCode.UNAUTHENTICATED.value[0]): 1}
    assert wait_for_calls(traced, expected) == expected


def test_process_metrics_come_from_the_os(traced: Traced) -> None:
    cpu = {point.attributes["cpu.mode"]: point.value for point in traced.points("process.cpu.time")}
    assert set(cpu) == {"user", "system"}
    assert cpu["user"] > 0
    (resident,) = traced.points("process.memory.usage")
    (virtual,) = traced.points("process.memory.virtual")
    assert virtual.value >= resident.value > 1_000_000
    (threads,) = traced.points("process.thread.count")
    assert threads.value == len(os.listdir("/proc/self/task"))
    (descriptors,) = traced.points("process.unix.file_descriptor.count")
    assert descriptors.value >= 3
    assert {metric.unit for metric in traced.metrics_named("process.memory.usage")} == {"By"}


def test_prometheus_endpoint_serves_the_metrics(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    port = free_loopback_port()
    sidecar = sidecar_factory(metrics_prometheus_port=port)
    upstream.respond("/ok", json={"ok": True})
    traced = Traced(
        sidecar, upstream, InMemorySpanExporter(), InMemoryMetricReader(), io.StringIO()
    )
    traced.register("ok", upstream.url("/ok"))
    traced.evaluate("ok", {})

    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as response:
        text = response.read().decode()

    def sample(name: str, **labels: str) -> float:
        """The value of the one sample of `name` carrying `labels` (others may be there too)."""
        found = []
        for line in text.splitlines():
            metric, _, rest = line.partition("{")
            if metric != name:
                continue
            given = dict(re.findall(r'(\w+)="([^"]*)"', rest.rpartition("}")[0]))
            if labels.items() <= given.items():
                found.append(float(line.rpartition(" ")[2]))
        assert len(found) == 1, (name, labels, found, text)
        return found[0]

    assert (
        sample(
            "http_client_request_duration_seconds_count",
            rules_sidecar_connector_id="ok",
            http_request_method="GET",
            server_address="127.0.0.1",
            server_port=str(upstream.port),
            http_response_status_code="200",
        )
        == 1
    )
    evaluate = {"rpc_system": "grpc", "rpc_service": SERVICE, "rpc_method": "EvaluateNode"}
    assert sample("rpc_server_call_duration_seconds_count", **evaluate) == 1
    assert sample("rpc_server_call_duration_seconds_count", rpc_method="RegisterConnector") == 1
    assert sample("rpc_server_call_duration_seconds_bucket", **evaluate, le="+Inf") == 1
    assert sample("rules_sidecar_rpc_in_flight", **evaluate) == 0
    assert (
        sample(
            "rules_sidecar_evaluations_total",
            rules_sidecar_connector_id="ok",
            rules_sidecar_outcome="MATCHED",
        )
        == 1
    )
    assert sample("process_cpu_time_seconds_total", cpu_mode="user") > 0
    assert sample("process_memory_usage_bytes") > 1_000_000
    assert sample("process_thread_count") >= 1
    assert sample("process_unix_file_descriptor_count") >= 3  # stdin, stdout, stderr at least


# ---------------------------------------------------------------------------------------------
# The evaluation log line
# ---------------------------------------------------------------------------------------------


def test_evaluation_log_line_is_json_tied_to_the_span_without_values(traced: Traced) -> None:
    traced.register_orders()

    traced.evaluate("orders", {"order_number": VISITOR_ORDER}, traceparent=client_traceparent())

    (line,) = traced.log.getvalue().splitlines()
    entry = json.loads(line)
    internal = traced.only(SpanKind.INTERNAL)
    assert entry["trace_id"] == f"{CLIENT_TRACE_ID:032x}"
    assert entry["span_id"] == f"{internal.context.span_id:016x}"
    assert entry["level"] == "INFO"
    assert entry["logger"] == "sidecar.evaluations"
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["timestamp"])
    assert {key: entry[key] for key in ("connector", "node_id", "outcome", "reason")} == {
        "connector": "orders",
        "node_id": "where-is-my-order",
        "outcome": "MATCHED",
        "reason": "BRANCH_MATCHED",
    }
    assert (entry["http_status"], entry["attempts"], entry["connector_version"]) == (200, 1, 1)
    assert entry["latency_ms"] >= entry["upstream_latency_ms"] > 0
    assert VISITOR_ORDER not in line
    assert ORDER_API_KEY not in line


# ---------------------------------------------------------------------------------------------
# Configuration from OTEL_* (no server)
# ---------------------------------------------------------------------------------------------


def config_from(monkeypatch: pytest.MonkeyPatch, **variables: str) -> TelemetryConfig:
    import os

    for name in list(os.environ):
        if name.startswith(("OTEL_", "RULES_SIDECAR_")):
            monkeypatch.delenv(name)
    for name, value in variables.items():
        monkeypatch.setenv(name, value)
    return telemetry_config(Settings.load())


ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4317"}


@pytest.mark.parametrize(
    ("variables", "traces", "metrics"),
    [
        ({}, (), ()),
        (ENDPOINT, ("otlp",), ("otlp",)),
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://127.0.0.1:4317"}, ("otlp",), ()),
        ({**ENDPOINT, "OTEL_METRICS_EXPORTER": "none"}, ("otlp",), ()),
        ({**ENDPOINT, "OTEL_TRACES_EXPORTER": "otlp,console"}, ("otlp", "console"), ("otlp",)),
        ({"OTEL_TRACES_EXPORTER": "console"}, ("console",), ()),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "true"}, (), ()),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "TRUE"}, (), ()),
        ({**ENDPOINT, "OTEL_SDK_DISABLED": "false"}, ("otlp",), ("otlp",)),
    ],
)
def test_exporters_are_chosen_from_the_otel_variables(
    monkeypatch: pytest.MonkeyPatch,
    variables: dict[str, str],
    traces: tuple[str, ...],
    metrics: tuple[str, ...],
) -> None:
    config = config_from(monkeypatch, **variables)

    assert (config.traces, config.metrics) == (traces, metrics)


@pytest.mark.parametrize(
    ("variables", "message"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER=zipkin: zipkin not supported"),
        ({"OTEL_METRICS_EXPORTER": "prometheus"}, "use the metrics_prometheus_port setting"),
        ({"OTEL_EXPORTER_OTLP_PROTOCOL": "http/protobuf"}, "OTLP over grpc only"),
    ],
)
def test_unsupported_otel_variables_are_config_errors(
    monkeypatch: pytest.MonkeyPatch, variables: dict[str, str], message: str
) -> None:
    with pytest.raises(ConfigError, match=re.escape(message)):
        config_from(monkeypatch, **variables)


def test_service_name_defaults_to_rules_sidecar_unless_the_environment_names_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert config_from(monkeypatch).resource_attributes == {"service.name": "rules-sidecar"}
    assert config_from(monkeypatch, OTEL_SERVICE_NAME="chat").resource_attributes is None
    named = config_from(monkeypatch, OTEL_RESOURCE_ATTRIBUTES="service.name=chat,team=a")
    assert named.resource_attributes is None


def test_log_format_setting_is_json_by_default_and_case_insensitive(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    config_from(monkeypatch)

    assert Settings.load().log_format == "json"
    assert Settings.load(overrides={"log_format": "TEXT"}).log_format == "text"
    with pytest.raises(ConfigError) as raised:
        Settings.load(overrides={"log_format": "xml"})
    assert any(problem.startswith("log_format:") for problem in raised.value.problems)


def test_sdk_disabled_builds_nothing(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    config_from(monkeypatch, OTEL_SDK_DISABLED="true", **ENDPOINT)
    monkeypatch.setenv("RULES_SIDECAR_METRICS_PROMETHEUS_PORT", "9464")

    with caplog.at_level(logging.WARNING, logger="sidecar.telemetry.config"):
        telemetry = Telemetry.from_config(telemetry_config(Settings.load()))

    assert (telemetry.tracing, telemetry.metrics) == (False, False)
    # The endpoint asked for is not served, and the log says so.
    (warning,) = [r for r in caplog.records if r.name == "sidecar.telemetry.config"]
    assert warning.levelno == logging.WARNING
    assert "127.0.0.1:9464" in warning.getMessage()
    assert "OTEL_SDK_DISABLED=true" in warning.getMessage()


@pytest.mark.parametrize(
    ("url", "template", "shown"),
    [
        (
            "https://api.example.com/orders/A-1?expand=items&key=s3cret",
            "https://api.example.com/orders/{{order}}",
            "https://api.example.com/orders/REDACTED?expand=REDACTED&key=REDACTED",
        ),
        (
            "https://api.example.com:8443/v1/orders/A-1/items",
            "https://api.example.com:8443/v1/orders/{{order}}/items",
            "https://api.example.com:8443/v1/orders/REDACTED/items",
        ),
        (
            "https://api.example.com/v1/orders/A-1.json?flag",
            "https://api.example.com/v1/orders/{{order}}.json",
            "https://api.example.com/v1/orders/REDACTED?flag",
        ),
        (
            "https://api.example.com/status",
            "https://api.example.com/status",
            "https://api.example.com/status",
        ),
        # A redirect hop the template does not describe: every segment is hidden.
        (
            "https://cdn.example.com/a/b?x=1",
            "https://api.example.com/orders/{{order}}",
            "https://cdn.example.com/REDACTED/REDACTED?x=REDACTED",
        ),
        (
            "https://api.example.com/orders/A-1/label",
            "https://api.example.com/orders/{{order}}",
            "https://api.example.com/REDACTED/REDACTED/REDACTED",
        ),
        ("https://api.example.com/a/b", "", "https://api.example.com/REDACTED/REDACTED"),
        ("https://user:pw@api.example.com/", "", "https://api.example.com/"),
    ],
)
def test_redacted_url(url: str, template: str, shown: str) -> None:
    assert redacted_url(url, template) == shown


def test_disabled_telemetry_starts_no_span_and_leaves_headers_alone() -> None:
    telemetry = Telemetry()

    assert (telemetry.tracing, telemetry.metrics) == (False, False)
    assert trace.get_current_span() is trace.INVALID_SPAN
    carrier: dict[str, str] = {}
    propagate.inject(carrier)
    assert carrier == {}
