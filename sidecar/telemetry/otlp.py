"""OTLP trace export with spans written straight to protobuf bytes.

The stock OTLP exporter turns every span into a tree of protobuf messages (a `KeyValue` and an
`AnyValue` per attribute, the span, its status) before serialising them: about 25 us a span, in
the exporter's thread, which holds the GIL and so charges the event loop. `SpanEncoder` writes
the same `ExportTraceServiceRequest` bytes directly: the resource and the instrumentation scope
once per batch, and each recurring attribute (`rpc.method=EvaluateNode`, `server.port=8081`) from
a table of already-encoded pairs, so a span costs a few microseconds.

`OtlpSpanExporter` is the SDK's OTLP/gRPC exporter with only its encoding replaced: the endpoint,
headers, TLS, compression, timeout and retries (OTEL_EXPORTER_OTLP_*) are the SDK's own. The bytes
are the stock encoder's byte for byte (tests/test_telemetry.py compares them):

>>> from opentelemetry.sdk.trace import TracerProvider
>>> from opentelemetry.sdk.trace.export import SimpleSpanProcessor
>>> from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
>>> from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans as stock
>>> kept = InMemorySpanExporter()
>>> provider = TracerProvider()
>>> provider.add_span_processor(SimpleSpanProcessor(kept))
>>> provider.get_tracer("doc").start_span("GET", attributes={"server.port": 8081}).end()
>>> spans = kept.get_finished_spans()
>>> SpanEncoder().encode(spans) == stock(spans).SerializeToString()
True
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Final

from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter
from opentelemetry.trace import SpanKind

if TYPE_CHECKING:
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import Event, ReadableSpan
    from opentelemetry.sdk.util.instrumentation import InstrumentationScope
    from opentelemetry.trace import Link, SpanContext

log = logging.getLogger(__name__)

EXPORT_METHOD: Final = "/opentelemetry.proto.collector.trace.v1.TraceService/Export"
# Encoded attribute pairs kept for reuse; past this many (values that never repeat) the table
# starts over rather than grow without end.
PAIRS_KEPT: Final = 4096
INT64_MIN: Final = -(1 << 63)
INT64_MAX: Final = (1 << 63) - 1

# The proto's SpanKind numbers (the API's enum counts from 0, the proto's from 1).
_KIND: Final = {
    SpanKind.INTERNAL: b"\x30\x01",
    SpanKind.SERVER: b"\x30\x02",
    SpanKind.CLIENT: b"\x30\x03",
    SpanKind.PRODUCER: b"\x30\x04",
    SpanKind.CONSUMER: b"\x30\x05",
}
# Span.flags (fixed32, field 16): "the parent's is_remote is known", and "it is remote".
_HAS_IS_REMOTE: Final = 0x100
_IS_REMOTE: Final = 0x200
_FLAGS_LOCAL: Final = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE)
_FLAGS_REMOTE: Final = b"\x85\x01" + struct.pack("<I", _HAS_IS_REMOTE | _IS_REMOTE)
_FIXED64: Final = struct.Struct("<Q").pack
_DOUBLE: Final = struct.Struct("<d").pack
_SMALL: Final = tuple(bytes((value,)) for value in range(0x80))


def _varint(value: int) -> bytes:
    if value < 0x80:
        return _SMALL[value] if value >= 0 else _varint(value + (1 << 64))
    out = bytearray()
    while value > 0x7F:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def _field(tag: bytes, payload: bytes) -> bytes:
    """A length-delimited field (string, bytes or message) with its tag byte(s)."""
    length = len(payload)
    return tag + (_SMALL[length] if length < 0x80 else _varint(length)) + payload


def _text(value: str) -> bytes:
    # Text that is not UTF-8 (lone surrogates) is replaced, not allowed to fail the batch.
    return value.encode("utf-8", "replace")


def _any_value(value: Any) -> bytes:
    """An AnyValue's bytes, as the stock encoder writes them; TypeError/ValueError for a value it
    would refuse (the attribute is then left out, as the stock encoder does)."""
    if value is None:
        return b""
    if isinstance(value, bool):
        return b"\x10\x01" if value else b"\x10\x00"
    if isinstance(value, str):
        return _field(b"\x0a", value.encode("utf-8"))
    if isinstance(value, int):
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError(f"{value} is out of the int64 range")
        return b"\x18" + _varint(value)
    if isinstance(value, float):
        return b"\x21" + _DOUBLE(value)
    if isinstance(value, bytes):
        return _field(b"\x3a", value)
    if isinstance(value, Sequence):
        return _field(b"\x2a", b"".join(_field(b"\x0a", _any_value(item)) for item in value))
    if isinstance(value, Mapping):
        pairs = b"".join(_field(b"\x0a", _key_value(str(key), item)) for key, item in value.items())
        return _field(b"\x32", pairs)
    raise TypeError(f"invalid type {type(value)} of an attribute value")


def _key_value(key: str, value: Any) -> bytes:
    return _field(b"\x0a", key.encode("utf-8")) + _field(b"\x12", _any_value(value))


class _Group:
    """Spans sharing a resource (members: scope groups) or a scope (members: encoded spans)."""

    __slots__ = ("key", "members", "scopes")

    def __init__(self, key: Any) -> None:
        self.key = key
        self.scopes: dict[int, _Group] = {}
        self.members: list[Any] = []


def _joined(by_id: dict[int, _Group], groups: list[_Group], key: Any) -> _Group:
    """The group of `key`: an object equal to one already seen joins its group (the stock
    encoder groups by equality); the look-up by identity first spares hashing a Resource, which
    serialises its attributes to JSON each time."""
    for group in groups:
        if group.key == key:
            by_id[id(key)] = group
            return group
    group = by_id[id(key)] = _Group(key)
    groups.append(group)
    return group


def _flags(parent: SpanContext | None) -> bytes:
    return _FLAGS_REMOTE if parent is not None and parent.is_remote else _FLAGS_LOCAL


class SpanEncoder:
    """Writes ExportTraceServiceRequest bytes, remembering what recurs between batches: the
    encoded resource and scope, span names, and attribute pairs of scalar values. One per
    exporter (the batch processor exports one batch at a time; the tables are plain dicts, safe
    under the GIL in any case)."""

    def __init__(self) -> None:
        self._pairs: dict[tuple[bytes, str, type, Any], bytes] = {}
        self._names: dict[str, bytes] = {}
        self._resources: dict[int, tuple[Resource, bytes]] = {}
        self._scopes: dict[int, tuple[InstrumentationScope | None, bytes]] = {}

    def encode(self, spans: Sequence[ReadableSpan]) -> bytes:
        """The request carrying `spans`, grouped by resource, then by instrumentation scope, in
        the order they first appear (as the stock encoder groups them)."""
        by_id: dict[int, _Group] = {}
        resources: list[_Group] = []
        for span in spans:
            resource = span.resource
            group = by_id.get(id(resource)) or _joined(by_id, resources, resource)
            scope = span.instrumentation_scope or None
            scoped = group.scopes.get(id(scope)) or _joined(group.scopes, group.members, scope)
            scoped.members.append(self.span(span))
        out = []
        for group in resources:
            resource = group.key
            body = [self._resource(resource)]
            for scoped in group.members:
                scope = scoped.key
                scope_body = [self._scope(scope), *scoped.members]
                if scope is not None and scope.schema_url:
                    scope_body.append(_field(b"\x1a", _text(scope.schema_url)))
                body.append(_field(b"\x12", b"".join(scope_body)))
            if resource.schema_url:
                body.append(_field(b"\x1a", _text(resource.schema_url)))
            out.append(_field(b"\x0a", b"".join(body)))
        return b"".join(out)

    def _resource(self, resource: Resource) -> bytes:
        """ResourceSpans.resource (field and tag included), encoded once per resource."""
        cached = self._resources.get(id(resource))
        if cached is None or cached[0] is not resource:
            if len(self._resources) > 16:
                self._resources.clear()
            encoded = _field(b"\x0a", self._attributes(b"\x0a", resource.attributes))
            cached = self._resources[id(resource)] = (resource, encoded)
        return cached[1]

    def _scope(self, scope: InstrumentationScope | None) -> bytes:
        """ScopeSpans.scope (field and tag included), encoded once per scope."""
        cached = self._scopes.get(id(scope))
        if cached is None or cached[0] is not scope:
            if len(self._scopes) > 64:
                self._scopes.clear()
            body = b""
            if scope is not None:
                if scope.name:
                    body += _field(b"\x0a", _text(scope.name))
                if scope.version:
                    body += _field(b"\x12", _text(scope.version))
                if scope.attributes:
                    body += self._attributes(b"\x1a", scope.attributes)
            cached = self._scopes[id(scope)] = (scope, _field(b"\x0a", body))
        return cached[1]

    def span(self, span: ReadableSpan) -> bytes:
        """ScopeSpans.spans: one Span message (field and tag included)."""
        context = span.context
        assert context is not None  # an ended SDK span always has one
        parts = [
            b"\x0a\x10" + context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + context.span_id.to_bytes(8, "big"),
        ]
        trace_state = context.trace_state
        if trace_state:
            text = ",".join(f"{key}={value}" for key, value in trace_state.items())
            parts.append(_field(b"\x1a", _text(text)))
        parent = span.parent
        if parent is not None:
            parts.append(b"\x22\x08" + parent.span_id.to_bytes(8, "big"))
        name = self._names.get(span.name)
        if name is None:
            if len(self._names) >= PAIRS_KEPT:
                self._names.clear()
            name = self._names[span.name] = _field(b"\x2a", _text(span.name)) if span.name else b""
        parts.append(name)
        parts.append(_KIND[span.kind])
        if span.start_time:
            parts.append(b"\x39" + _FIXED64(span.start_time))
        if span.end_time:
            parts.append(b"\x41" + _FIXED64(span.end_time))
        attributes = span.attributes
        if attributes:
            parts.append(self._attributes(b"\x4a", attributes))
        if span.dropped_attributes:
            parts.append(b"\x50" + _varint(span.dropped_attributes))
        for event in span.events:
            parts.append(_field(b"\x5a", self._event(event)))
        if span.dropped_events:
            parts.append(b"\x60" + _varint(span.dropped_events))
        for link in span.links:
            parts.append(_field(b"\x6a", self._link(link)))
        if span.dropped_links:
            parts.append(b"\x70" + _varint(span.dropped_links))
        status = span.status
        status_body = b""
        if status.description:
            status_body += _field(b"\x12", _text(status.description))
        if status.status_code.value:
            status_body += b"\x18" + _varint(status.status_code.value)
        parts.append(_field(b"\x7a", status_body))
        parts.append(_flags(parent))
        return _field(b"\x12", b"".join(parts))

    def _event(self, event: Event) -> bytes:
        parts = []
        if event.timestamp:
            parts.append(b"\x09" + _FIXED64(event.timestamp))
        if event.name:
            parts.append(_field(b"\x12", _text(event.name)))
        if event.attributes:
            parts.append(self._attributes(b"\x1a", event.attributes))
        if event.dropped_attributes:
            parts.append(b"\x20" + _varint(event.dropped_attributes))
        return b"".join(parts)

    def _link(self, link: Link) -> bytes:
        parts = [
            b"\x0a\x10" + link.context.trace_id.to_bytes(16, "big"),
            b"\x12\x08" + link.context.span_id.to_bytes(8, "big"),
        ]
        if link.attributes:
            parts.append(self._attributes(b"\x22", link.attributes))
        if link.dropped_attributes:
            parts.append(b"\x28" + _varint(link.dropped_attributes))
        parts.append(b"\x35" + _flags(link.context)[2:])
        return b"".join(parts)

    def _attributes(self, tag: bytes, attributes: Mapping[str, Any]) -> bytes:
        """Repeated KeyValue fields under `tag`; a pair the stock encoder would refuse (a value
        of another type, an int beyond int64, text that is not UTF-8) is left out, as it does."""
        pairs = self._pairs
        out = []
        for key, value in attributes.items():
            kept = (tag, key, type(value), value) if isinstance(value, (str, int, float)) else None
            encoded = pairs.get(kept) if kept is not None else None
            if encoded is None:
                try:
                    encoded = _field(tag, _key_value(key, value))
                except (TypeError, ValueError) as error:
                    log.warning("span attribute %s left out of the export: %s", key, error)
                    continue
                if kept is not None:
                    if len(pairs) >= PAIRS_KEPT:
                        pairs.clear()
                    pairs[kept] = encoded
            out.append(encoded)
        return b"".join(out)


class OtlpSpanExporter(OTLPSpanExporter):
    """The SDK's OTLP/gRPC span exporter (OTEL_EXPORTER_OTLP_* read by it: endpoint, headers,
    TLS, compression, timeout; its retries with backoff on the retryable codes), sending the
    bytes `SpanEncoder` writes instead of building protobuf messages.

    The SDK calls `_translate_data` for the request and `self._client.Export` to send it (both
    private, pinned by uv.lock; tests/test_telemetry.py exports through a real gRPC receiver, so
    a change there fails a test rather than a trace)."""

    def __init__(self, **options: Any) -> None:
        """`options` as OTLPSpanExporter takes them (endpoint, insecure, headers, timeout ...);
        the sidecar passes none: the OTEL_EXPORTER_OTLP_* variables decide."""
        self._encoder = SpanEncoder()
        super().__init__(**options)

    def _initialize_channel_and_stub(self) -> None:
        # Called by the SDK at start and again to reconnect after UNAVAILABLE.
        super()._initialize_channel_and_stub()  # type: ignore[no-untyped-call]
        self._client = _RawTraceService(self._channel)  # type: ignore[assignment]

    def _translate_data(self, data: Sequence[ReadableSpan]) -> bytes:  # type: ignore[override]
        return self._encoder.encode(data)


class _RawTraceService:
    """TraceService.Export taking the request as bytes (no serialiser) and returning the
    response's bytes unparsed (the SDK reads nothing from it)."""

    def __init__(self, channel: Any) -> None:
        self.Export = channel.unary_unary(EXPORT_METHOD)  # the name the SDK calls
