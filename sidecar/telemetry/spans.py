"""A tracer whose spans cost less to start and end than the SDK's, and behave the same.

The SDK's `Tracer.start_span` builds, for every span, two bounded lists (events and links: a
deque and a lock, 2.7 us each) that a span of ours never fills, cleans every attribute value
(type checks, a copy of the mapping) although ours are plain text and numbers, and its
`Span.end` copies the span into a new `ReadableSpan` for the processors. A traced decision pays
that three times. `LeanTracer` starts spans with the SDK's own sampler, id generator, resource,
limits and span processors, in the SDK's order, as `LeanSpan`s: the SDK's `Span`, with the
event and link lists made on the first event or link, plain attributes (text keys; str, int,
float or bool values; within the limits) stored without the cleaning they would pass
unchanged, and handed to the processors itself at its end (an ended span refuses every change,
so no copy is needed). Anything else (other value types, limits reached) takes the SDK's path.

>>> from opentelemetry.sdk.trace import TracerProvider
>>> tracer = lean_tracer(TracerProvider(), "doc", "1.0")
>>> span = tracer.start_span("GET", attributes={"server.port": 8081})
>>> span.is_recording(), span.attributes["server.port"], span.events
(True, 8081, ())
>>> span.end(); span.is_recording()
False
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from time import time_ns
from typing import Any

from opentelemetry import context as context_api
from opentelemetry import trace as trace_api
from opentelemetry.attributes import BoundedAttributes
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Span, SpanLimits, Tracer, TracerProvider
from opentelemetry.sdk.util import BoundedList
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags
from opentelemetry.trace.status import Status, StatusCode
from opentelemetry.util import types

log = logging.getLogger(__name__)

_UNSET = Status(StatusCode.UNSET)
_PLAIN_TYPES = frozenset({str, int, float, bool})


def _plain(attributes: Mapping[str, Any], limits: SpanLimits, present: int) -> bool:
    """Whether the SDK's cleaning would leave `attributes` as they are, and none is dropped:
    text keys, values of the plain types, no length limit on text, room for all. Ours always
    are; anything else takes the SDK's own path."""
    room = limits.max_span_attributes
    if limits.max_span_attribute_length is not None or (
        room is not None and present + len(attributes) > room
    ):
        return False
    return all(
        type(value) in _PLAIN_TYPES and type(key) is str and key
        for key, value in attributes.items()
    )


class LeanSpan(Span):
    """The SDK's span, built without the SDK's per-span lists and copy (see the module)."""

    def __init__(
        self,
        name: str,
        context: SpanContext,
        parent: SpanContext | None,
        tracer: LeanTracer,
        kind: SpanKind,
        attributes: types.Attributes,
        links: Sequence[Link],
        record_exception: bool,
        set_status_on_exception: bool,
        record_end_metrics: Any,
    ) -> None:
        # Span.__init__ is not called: every field it sets is set here, as it sets it, but the
        # event and link lists (see _add_event).
        limits = tracer.limits
        self._name = name
        self._context = context
        self._kind = kind
        self._instrumentation_info = tracer.instrumentation_info
        self._instrumentation_scope = tracer.instrumentation_scope
        self._parent = parent
        self._start_time: int | None = None
        self._end_time: int | None = None
        self._resource = tracer.resource
        self._status = _UNSET
        self._sampler = tracer.sampler
        self._trace_config = None
        self._record_exception = record_exception
        self._set_status_on_exception = set_status_on_exception
        self._span_processor = tracer.span_processor
        self._limits = limits
        self._lock = threading.Lock()
        plain = attributes is not None and _plain(attributes, limits, 0)
        # The same object as _attributes, typed as what it is.
        self._bounded = self._attributes = BoundedAttributes(
            limits.max_span_attributes,
            None if plain else attributes,
            immutable=False,
            max_value_len=limits.max_span_attribute_length,
        )
        if plain:
            self._bounded._dict.update(attributes)  # type: ignore[arg-type]
        self._events: Any = ()
        self._links: Any = self._new_links(links) if links else ()
        self._record_end_metrics = record_end_metrics

    def set_attributes(self, attributes: Mapping[str, types.AnyValue]) -> None:
        if not _plain(attributes, self._limits, len(self._bounded)):
            super().set_attributes(attributes)
            return
        with self._lock:
            if self._end_time is None:
                stored = self._bounded._dict
                for key, value in attributes.items():
                    stored.pop(key, None)  # a key set again moves last, as the SDK moves it
                    stored[key] = value
                return
        log.warning("Setting attribute on ended span.")

    def _add_event(self, event: Any) -> None:
        with self._lock:
            if self._end_time is None:
                if not self._events:
                    self._events = BoundedList(self._limits.max_events)
                self._events.append(event)
                return
        log.warning("Tried calling _add_event on an ended span.")

    def _add_link(self, link: Link) -> None:
        with self._lock:
            if self._end_time is None:
                if not self._links:
                    self._links = BoundedList(self._limits.max_links)
                self._links.append(link)
                return
        log.warning("Tried calling _add_link on an ended span.")

    def end(self, end_time: int | None = None) -> None:
        with self._lock:
            if self._start_time is None:
                raise RuntimeError("Calling end() on a not started span.")
            if self._end_time is not None:
                log.warning("Calling end() on an ended span.")
                return
            self._end_time = end_time if end_time is not None else time_ns()
            self._bounded._immutable = True
        if self._record_end_metrics:
            self._record_end_metrics()
        self._span_processor._on_ending(self)
        self._span_processor.on_end(self)  # ended: read-only from here on, no copy needed


def lean_tracer(provider: TracerProvider, name: str, version: str) -> trace_api.Tracer:
    """A `LeanTracer` over the provider's tracer for `name`; the provider's own tracer when it
    gives no SDK tracer (OTEL_SDK_DISABLED=true makes it a no-op one)."""
    tracer = provider.get_tracer(name, version)
    return LeanTracer(tracer) if isinstance(tracer, Tracer) else tracer


class LeanTracer(trace_api.Tracer):
    """Starts `LeanSpan`s with the sampler, ids, resource, limits and processors of an SDK
    tracer, as `opentelemetry.sdk.trace.Tracer.start_span` does."""

    def __init__(self, tracer: Tracer) -> None:
        self.sampler = tracer.sampler
        self.span_processor = tracer.span_processor
        self.id_generator = tracer.id_generator
        self.instrumentation_info = tracer.instrumentation_info
        self.instrumentation_scope = tracer._instrumentation_scope
        self.limits: SpanLimits = tracer._span_limits
        self._metrics = tracer._tracer_metrics
        self._sdk = tracer

    @property
    def resource(self) -> Resource:
        return self._sdk.resource  # read each time: the provider may set another

    def start_span(
        self,
        name: str,
        context: context_api.Context | None = None,
        kind: SpanKind = SpanKind.INTERNAL,
        attributes: types.Attributes = None,
        links: Sequence[Link] | None = (),
        start_time: int | None = None,
        record_exception: bool = True,
        set_status_on_exception: bool = True,
    ) -> trace_api.Span:
        if not self._sdk._is_enabled():
            return self._sdk.start_span(name, context, kind, attributes, links, start_time)
        links = links or ()
        parent: SpanContext | None = trace_api.get_current_span(context).get_span_context()
        ids = self.id_generator
        if parent is None or not parent.is_valid:
            parent = None
            trace_id = ids.generate_trace_id()
            random_trace_id = ids.is_trace_id_random()
        else:
            trace_id = parent.trace_id
            random_trace_id = parent.trace_flags.random_trace_id
        sampling = self.sampler.should_sample(context, trace_id, name, kind, attributes, links)
        decision = sampling.decision
        flags = TraceFlags.SAMPLED if decision.is_sampled() else TraceFlags.DEFAULT  # type: ignore[no-untyped-call]
        if random_trace_id:
            flags |= TraceFlags.RANDOM_TRACE_ID
        span_context = SpanContext(
            trace_id,
            ids.generate_span_id(),
            is_remote=False,
            trace_flags=TraceFlags(flags),
            trace_state=sampling.trace_state,
        )
        record_end_metrics = self._metrics.start_span(parent, decision)
        if not decision.is_recording():  # type: ignore[no-untyped-call]
            return trace_api.NonRecordingSpan(context=span_context)
        span = LeanSpan(
            name,
            span_context,
            parent,
            self,
            kind,
            sampling.attributes,
            links,
            record_exception,
            set_status_on_exception,
            record_end_metrics,
        )
        span.start(start_time=start_time, parent_context=context)
        return span

    def start_as_current_span(self, *args: Any, **kwargs: Any) -> Any:
        """As the SDK's (a context manager making the span current)."""
        return Tracer.start_as_current_span(self, *args, **kwargs)  # type: ignore[arg-type]
