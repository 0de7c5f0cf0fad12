"""The OTLP span encoding and exporter (sidecar/telemetry/otlp.py).

The encoder's bytes are compared with the stock encoder's (opentelemetry-exporter-otlp-proto-
common) for spans that use every field; the exporter sends to a real loopback gRPC receiver
that keeps the raw request bytes, and answers with failures to show the SDK's retries still run.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from concurrent import futures
from typing import Any

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc.error_details_pb2 import RetryInfo
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock_encode
from opentelemetry.proto.collector.trace.v1.trace_service_pb2 import ExportTraceServiceRequest
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    StatusCode,
    TraceFlags,
    TraceState,
)

from sidecar.telemetry.otlp import EXPORT_METHOD, PAIRS_KEPT, OtlpSpanExporter, SpanEncoder

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "v1"), ("other", "x")]),
)


def finished(
    build: Any, *, resource: Resource | None = None, limits: SpanLimits | None = None
) -> tuple[ReadableSpan, ...]:
    """The spans `build(provider)` ends, from a provider with `resource` and `limits`."""
    kept = InMemorySpanExporter()
    provider = TracerProvider(resource=resource or Resource.create({"service.name": "t"}))
    if limits is not None:
        provider = TracerProvider(resource=provider.resource, span_limits=limits)
    provider.add_span_processor(SimpleSpanProcessor(kept))
    build(provider)
    return kept.get_finished_spans()


def every_field(provider: TracerProvider) -> None:
    tracer = provider.get_tracer("rules-sidecar", "1.2.3", schema_url="https://schema/1")
    parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    server = tracer.start_span(
        "rulesidecar.v1.RulesSidecarService/EvaluateNode",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={
            "flag": True,
            "off": False,
            "ratio": 1.5,
            "negative": -3,
            "zero": 0,
            "empty": "",
            "blob": b"\x00\xff",
            "numbers": [1, 2, 3],
            "words": ("a", "é"),
            "no items": [],
        },
        links=[Link(REMOTE, {"why": "retry", "flag": True}), Link(REMOTE)],
    )
    server.add_event("first", {"n": 1, "flag": True})  # a pair the span has too
    server.add_event("")
    server.set_status(StatusCode.ERROR, "INTERNAL")
    inner = trace.set_span_in_context(server)
    client = provider.get_tracer("other").start_span(
        "GET", context=inner, kind=SpanKind.CLIENT, attributes={"url.full": "https://x/é"}
    )
    client.set_status(StatusCode.OK)
    client.end()
    for kind in (SpanKind.INTERNAL, SpanKind.PRODUCER, SpanKind.CONSUMER):
        tracer.start_span(kind.name, context=inner, kind=kind).end()
    server.end()
    tracer.start_span("").end()  # a root span without a name


def test_the_bytes_are_the_stock_encoders_for_every_field() -> None:
    spans = finished(every_field)
    assert len(spans) == 6
    assert SpanEncoder().encode(spans) == stock_encode(spans).SerializeToString()


def test_dropped_attributes_events_and_links_are_counted_as_the_stock_encoder_counts() -> None:
    def crowded(provider: TracerProvider) -> None:
        span = provider.get_tracer("t").start_span(
            "crowded", attributes={f"a{i}": i for i in range(5)}, links=[Link(REMOTE)] * 3
        )
        for i in range(4):
            span.add_event(f"e{i}", {f"k{j}": j for j in range(4)})
        span.end()

    limits = SpanLimits(max_span_attributes=2, max_events=2, max_links=1, max_event_attributes=1)
    spans = finished(crowded, limits=limits)
    assert (spans[0].dropped_attributes, spans[0].dropped_events, spans[0].dropped_links) == (
        3,
        2,
        2,
    )
    assert SpanEncoder().encode(spans) == stock_encode(spans).SerializeToString()


def test_a_value_the_stock_encoder_refuses_is_left_out_as_it_does(
    caplog: pytest.LogCaptureFixture,
) -> None:
    def beyond_int64(provider: TracerProvider) -> None:
        span = provider.get_tracer("t").start_span("s", attributes={"big": 1 << 64, "ok": 1})
        span.end()

    spans = finished(beyond_int64)
    with caplog.at_level("ERROR", "opentelemetry.exporter.otlp.proto.common._internal"):
        stock = stock_encode(spans).SerializeToString()
    assert SpanEncoder().encode(spans) == stock
    request = ExportTraceServiceRequest.FromString(stock)
    keys = [kv.key for kv in request.resource_spans[0].scope_spans[0].spans[0].attributes]
    assert keys == ["ok"]


def test_spans_group_by_equal_resources_and_scopes_in_order_of_first_appearance() -> None:
    def two_tracers(provider: TracerProvider) -> None:
        for name in ("a", "b", "a"):
            provider.get_tracer(name).start_span(name).end()

    first = finished(two_tracers)
    same = finished(two_tracers)  # an equal resource, another object
    other = finished(two_tracers, resource=Resource.create({"service.name": "other"}))
    spans = [first[0], other[0], same[1], first[2], other[1]]
    encoded = SpanEncoder().encode(spans)
    assert encoded == stock_encode(spans).SerializeToString()
    request = ExportTraceServiceRequest.FromString(encoded)
    assert [len(group.scope_spans) for group in request.resource_spans] == [2, 2]


def test_an_encoder_reused_across_batches_writes_what_a_fresh_one_writes() -> None:
    def many_values(provider: TracerProvider) -> None:
        tracer = provider.get_tracer("t")
        for i in range(PAIRS_KEPT + 10):  # past the table of remembered pairs
            tracer.start_span(f"s{i % 7}", attributes={"i": i, "node": f"n{i % 3}"}).end()

    spans = finished(many_values)
    encoder = SpanEncoder()
    for batch in (spans[:100], spans, spans[:100]):
        assert encoder.encode(batch) == stock_encode(batch).SerializeToString()


# ---------------------------------------------------------------------------------------------
# The exporter over a real gRPC channel
# ---------------------------------------------------------------------------------------------


class Receiver:
    """A loopback OTLP/gRPC TraceService keeping each request's raw bytes and metadata; the
    first `failures` calls answer RESOURCE_EXHAUSTED with a 1 ms RetryInfo."""

    def __init__(self, failures: int = 0) -> None:
        self.requests: list[bytes] = []
        self.metadata: list[dict[str, str]] = []
        self.calls = 0
        self._failures = failures
        self._lock = threading.Lock()
        handler = grpc.method_handlers_generic_handler(
            "opentelemetry.proto.collector.trace.v1.TraceService",
            {"Export": grpc.unary_unary_rpc_method_handler(self._export)},
        )
        self._server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        self._server.add_generic_rpc_handlers((handler,))
        self.port = self._server.add_insecure_port("127.0.0.1:0")
        self._server.start()

    def _export(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        with self._lock:
            self.calls += 1
            self.metadata.append(dict(context.invocation_metadata()))  # type: ignore[arg-type]
            if self.calls <= self._failures:
                retry = RetryInfo(retry_delay=Duration(nanos=1_000_000))
                context.set_trailing_metadata(
                    (("google.rpc.retryinfo-bin", retry.SerializeToString()),)
                )
                context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "busy")
            self.requests.append(request)
            return b""

    def close(self) -> None:
        self._server.stop(0).wait()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    server = Receiver(failures=2)
    yield server
    server.close()


def test_the_exporter_sends_the_encoded_request_with_the_sdks_headers_and_retries(
    receiver: Receiver,
) -> None:
    spans = finished(every_field)
    exporter = OtlpSpanExporter(
        endpoint=f"http://127.0.0.1:{receiver.port}", headers={"x-tenant": "t1"}, timeout=5
    )
    try:
        assert exporter.export(spans) is SpanExportResult.SUCCESS
    finally:
        exporter.shutdown()
    assert receiver.calls == 3  # two RESOURCE_EXHAUSTED answers, retried as the SDK retries
    assert receiver.requests == [stock_encode(spans).SerializeToString()]
    assert receiver.metadata[-1]["x-tenant"] == "t1"
    assert EXPORT_METHOD == "/opentelemetry.proto.collector.trace.v1.TraceService/Export"


def test_the_exporter_reports_failure_when_the_receiver_is_gone() -> None:
    server = Receiver()
    port = server.port
    server.close()
    exporter = OtlpSpanExporter(endpoint=f"http://127.0.0.1:{port}", timeout=0.5)
    try:
        assert exporter.export(finished(every_field)) is SpanExportResult.FAILURE
    finally:
        exporter.shutdown()
