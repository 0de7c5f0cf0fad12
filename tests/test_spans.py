"""LeanTracer (sidecar/telemetry/spans.py) records what the SDK's tracer records.

Each scenario runs twice, once on the SDK's tracer and once on a LeanTracer, with the same ids
and timestamps; the spans the processors receive must encode to the same OTLP bytes, field for
field (attributes in the same order, the same dropped counts, statuses, events, links).
"""

from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from typing import Any

import pytest
from opentelemetry import trace
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import ReadableSpan, SpanLimits, SpanProcessor, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.sdk.trace.id_generator import RandomIdGenerator
from opentelemetry.sdk.trace.sampling import ALWAYS_OFF, ALWAYS_ON, ParentBased, Sampler
from opentelemetry.trace import (
    Link,
    NonRecordingSpan,
    SpanContext,
    SpanKind,
    Status,
    StatusCode,
    TraceFlags,
    TraceState,
)

from sidecar.telemetry.spans import LeanSpan, LeanTracer, lean_tracer

REMOTE = SpanContext(
    0x0AF7651916CD43DD8448EB211C80319C,
    0xB7AD6B7169203331,
    is_remote=True,
    trace_flags=TraceFlags(TraceFlags.SAMPLED),
    trace_state=TraceState([("vendor", "v1")]),
)
T0 = 1_700_000_000_000_000_000


class CountingIds(RandomIdGenerator):
    """Ids from counters, so that two runs of a scenario get the same ones."""

    def __init__(self) -> None:
        self._spans = itertools.count(1)
        self._traces = itertools.count(1)

    def generate_span_id(self) -> int:
        return next(self._spans)

    def generate_trace_id(self) -> int:
        return next(self._traces) << 64


Scenario = Callable[[trace.Tracer], None]


def server_internal_client(tracer: trace.Tracer) -> None:
    parent = trace.set_span_in_context(NonRecordingSpan(REMOTE))
    server = tracer.start_span(
        "Service/Method",
        context=parent,
        kind=SpanKind.SERVER,
        attributes={"rpc.system": "grpc", "rpc.method": "EvaluateNode"},
        start_time=T0,
    )
    inner = tracer.start_span(
        "evaluate_node",
        context=trace.set_span_in_context(server),
        attributes={"node": "n", "ratio": 0.5, "cached": False},
        start_time=T0 + 1,
    )
    client = tracer.start_span(
        "GET",
        context=trace.set_span_in_context(inner),
        kind=SpanKind.CLIENT,
        attributes={"server.port": 8081, "url.full": "http://x/REDACTED"},
        start_time=T0 + 2,
    )
    client.set_attribute("http.response.status_code", 503)
    client.set_attribute("error.type", "503")
    client.set_status(StatusCode.ERROR, "503")
    client.end(T0 + 3)
    inner.set_attributes({"outcome": "ERROR", "node": "moved last", "attempts": 1})
    inner.set_status(StatusCode.ERROR, "UPSTREAM")
    inner.end(T0 + 4)
    server.set_attribute("rpc.grpc.status_code", 0)
    server.set_status(StatusCode.OK)
    server.set_status(StatusCode.ERROR, "ignored after OK")
    server.end(T0 + 5)


def events_links_and_odd_values(tracer: trace.Tracer) -> None:
    span = tracer.start_span(
        "odd",
        attributes={"list": [1, 2], "none": None, "bytes": b"x", "": "empty key"},
        links=[Link(REMOTE, {"why": "batch"})],
        start_time=T0,
    )
    span.set_attributes({"tuple": ("a", "b"), "text": "t"})
    span.add_event("first", {"n": 1}, timestamp=T0 + 1)
    span.add_link(REMOTE, {"later": True})
    span.update_name("renamed")
    span.record_exception(ValueError("bad"), timestamp=T0 + 2)
    span.set_status(Status(StatusCode.ERROR, "from a Status"))
    span.end(T0 + 3)


def overfilled(tracer: trace.Tracer) -> None:
    span = tracer.start_span("full", attributes={f"a{i}": i for i in range(3)}, start_time=T0)
    span.set_attributes({"b": "longer than four", "c": 1})
    for i in range(3):
        span.add_event(f"e{i}", timestamp=T0 + i)
        span.add_link(REMOTE)
    span.end(T0 + 9)


def ended_twice(tracer: trace.Tracer) -> None:
    span = tracer.start_span("once", start_time=T0)
    span.end(T0 + 1)
    span.set_attribute("late", 1)
    span.set_attributes({"later": 2})
    span.add_event("late event")
    span.set_status(StatusCode.ERROR)
    span.end(T0 + 2)


def run(scenario: Scenario, lean: bool, **provider_options: Any) -> tuple[ReadableSpan, ...]:
    kept = InMemorySpanExporter()
    provider = TracerProvider(
        resource=Resource.create({"service.name": "t"}),
        id_generator=CountingIds(),
        **provider_options,
    )
    provider.add_span_processor(SimpleSpanProcessor(kept))
    tracer = (
        lean_tracer(provider, "rules-sidecar", "1.0")
        if lean
        else provider.get_tracer("rules-sidecar", "1.0")
    )
    scenario(tracer)
    return kept.get_finished_spans()


LIMITED = SpanLimits(max_span_attributes=4, max_events=2, max_links=2, max_span_attribute_length=4)
FEW = SpanLimits(max_span_attributes=4, max_events=2, max_links=2)


@pytest.mark.parametrize(
    ("scenario", "options"),
    [
        (server_internal_client, {}),
        (server_internal_client, {"sampler": ParentBased(ALWAYS_ON)}),
        (events_links_and_odd_values, {}),
        (overfilled, {"span_limits": LIMITED}),
        (overfilled, {"span_limits": FEW}),
        (server_internal_client, {"span_limits": LIMITED}),
        (ended_twice, {}),
    ],
    ids=[
        "tree",
        "parent-based",
        "events-links-odd-values",
        "limits",
        "attribute-count-limit",
        "tree-limits",
        "ended",
    ],
)
def test_lean_spans_export_as_the_sdks_spans(scenario: Scenario, options: dict[str, Any]) -> None:
    sdk = run(scenario, lean=False, **options)
    lean = run(scenario, lean=True, **options)
    assert sdk  # the scenario recorded something
    assert all(isinstance(span, LeanSpan) for span in lean)
    assert encode_spans(lean).SerializeToString() == encode_spans(sdk).SerializeToString()
    # What the encoding leaves out: the trace flags (sampled, random trace id) of each span.
    assert [span.context for span in lean] == [span.context for span in sdk]


def test_a_sampled_out_span_is_not_recorded_and_carries_the_same_context() -> None:
    def unsampled(tracer: trace.Tracer) -> None:
        span = tracer.start_span("dropped")
        assert not span.is_recording()
        contexts.append(span.get_span_context())
        span.end()

    contexts: list[SpanContext] = []
    assert run(unsampled, lean=False, sampler=ALWAYS_OFF) == ()
    assert run(unsampled, lean=True, sampler=ALWAYS_OFF) == ()
    assert contexts[0] == contexts[1]
    assert not contexts[1].trace_flags.sampled


def test_changes_after_the_end_are_refused_with_the_sdks_warnings(
    caplog: pytest.LogCaptureFixture,
) -> None:
    with caplog.at_level(logging.WARNING):
        (span,) = run(ended_twice, lean=True)
    assert dict(span.attributes or {}) == {}
    assert span.events == ()
    assert span.status.status_code is StatusCode.UNSET
    assert span.end_time == T0 + 1
    messages = [record.getMessage() for record in caplog.records]
    assert "Calling end() on an ended span." in messages
    assert sum("ended span" in message for message in messages) >= 4


def test_processors_see_the_span_start_and_its_end() -> None:
    seen: list[tuple[str, Any]] = []

    class Watching(SpanProcessor):
        def on_start(self, span: Any, parent_context: Any = None) -> None:
            seen.append(("start", span))

        def _on_ending(self, span: Any) -> None:
            seen.append(("ending", span))

        def on_end(self, span: ReadableSpan) -> None:
            seen.append(("end", span))

    provider = TracerProvider()
    provider.add_span_processor(Watching())
    span = lean_tracer(provider, "t", "1").start_span("s", attributes={"a": 1})
    span.end()
    assert [step for step, _ in seen] == ["start", "ending", "end"]
    assert all(seen_span is span for _, seen_span in seen)


def test_an_sdk_disabled_provider_gives_its_no_op_tracer(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OTEL_SDK_DISABLED", "true")
    tracer = lean_tracer(TracerProvider(), "t", "1")
    assert not isinstance(tracer, LeanTracer)
    assert not tracer.start_span("s").is_recording()


def test_a_custom_sampler_sees_the_attributes_and_may_add_its_own() -> None:
    from opentelemetry.sdk.trace.sampling import Decision, SamplingResult

    class Tagging(Sampler):
        def should_sample(
            self, parent_context: Any, trace_id: int, name: str, *args: Any, **kwargs: Any
        ) -> SamplingResult:
            attributes = kwargs.get("attributes") or (args[1] if len(args) > 1 else None) or {}
            return SamplingResult(Decision.RECORD_AND_SAMPLE, {**attributes, "sampled.by": "tag"})

        def get_description(self) -> str:
            return "Tagging"

    def one(tracer: trace.Tracer) -> None:
        tracer.start_span("s", attributes={"a": 1}, start_time=T0).end(T0 + 1)

    sdk = run(one, lean=False, sampler=Tagging())
    lean = run(one, lean=True, sampler=Tagging())
    assert dict(lean[0].attributes or {}) == {"a": 1, "sampled.by": "tag"}
    assert encode_spans(lean).SerializeToString() == encode_spans(sdk).SerializeToString()
