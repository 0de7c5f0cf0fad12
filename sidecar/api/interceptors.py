"""Server interceptors: the one place where errors become gRPC statuses, and the SERVER span.

A SidecarError becomes the status of `wire.STATUS_BY_ERROR_CODE` with its details (a
google.rpc.ErrorInfo always; INVALID_ARGUMENT with its google.rpc.BadRequest). Anything else is a
bug: it is logged with its traceback and the caller gets INTERNAL (ErrorInfo reason
INTERNAL_ERROR) with a generic message, never the exception's text (which may carry internal
detail).
Request bytes that do not parse as the method's message are the caller's mistake: grpc would
answer UNKNOWN with the parser's text, so the deserializer is wrapped to hand the handler a
`MalformedRequest` instead, answered INVALID_ARGUMENT.

`TelemetryInterceptor` goes first (outermost), so its span and its duration also see the status
of calls refused by the token check or mapped here; it is installed only when traces or metrics
are exported.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar, cast

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.api import wire
from sidecar.errors import FieldViolation, InvalidArgumentError, SidecarError
from sidecar.telemetry.instruments import RpcMethodMetrics, Telemetry

log = logging.getLogger(__name__)

GENERIC_INTERNAL_MESSAGE = "internal error in rules-sidecar; the sidecar's log has the details"

# The behaviour of a unary grpc.aio call. The stubs type RpcMethodHandler.unary_unary as the
# synchronous one; under grpc.aio it is this coroutine function, hence the casts below.
Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]

# grpc.aio's ServerInterceptor.intercept_service is generic over the call's message types.
Request = TypeVar("Request")
Response = TypeVar("Response")
# (A string inside: grpc's RpcMethodHandler is generic for the type checker only.)
Continuation = Callable[
    [grpc.HandlerCallDetails], Awaitable["grpc.RpcMethodHandler[Request, Response] | None"]
]


def rewrapped(
    handler: grpc.RpcMethodHandler[Request, Response],
    behaviour: Callable[[Handler], Handler],
    *,
    request_deserializer: Callable[[bytes], Any] | None = None,
) -> grpc.RpcMethodHandler[Request, Response]:
    """The same unary method with its behaviour wrapped (its (de)serializers kept, unless a
    request deserializer is given)."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour(cast(Handler, handler.unary_unary)),
        request_deserializer=request_deserializer or handler.request_deserializer,
        response_serializer=handler.response_serializer,
    )


class MalformedRequest:
    """Stands in for a request whose bytes did not parse (see `lenient`)."""


def lenient(deserialize: Callable[[bytes], Any] | None) -> Callable[[bytes], Any] | None:
    """`deserialize`, returning a MalformedRequest where it would raise."""
    if deserialize is None:
        return None

    def deserialize_or_mark(data: bytes) -> Any:
        try:
            return deserialize(data)
        except Exception:  # DecodeError, RecursionError ...: all mean the bytes are not the message
            return MalformedRequest()

    return deserialize_or_mark


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):
    """Maps SidecarError to its status and any other exception to a generic INTERNAL."""

    async def intercept_service(
        self,
        continuation: Continuation[Request, Response],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Request, Response] | None:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        return rewrapped(
            handler,
            lambda inner: _guard(inner, method),
            request_deserializer=lenient(handler.request_deserializer),
        )


MALFORMED = "the bytes are not a valid protobuf message of this method's type"


def _guard(inner: Handler, method: str) -> Handler:
    async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if isinstance(request, MalformedRequest):
                raise InvalidArgumentError([FieldViolation("request", MALFORMED)])
            return await inner(request, context)
        except SidecarError as error:
            status = wire.rpc_status_of(error)
            await context.abort(status.code, status.details, status.trailing_metadata)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            status = wire.internal_status(GENERIC_INTERNAL_MESSAGE)
            await context.abort(status.code, status.details, status.trailing_metadata)

    return guarded


# Kubernetes probes and tooling: open without a token (`access`), and not worth a trace each.
OPEN_SERVICES = ("/grpc.health.v1.Health/", "/grpc.reflection.")
# Codes that are the server's fault (RPC conventions); the others leave the span status unset.
SERVER_ERROR_CODES = frozenset(
    {
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.UNIMPLEMENTED,
        grpc.StatusCode.INTERNAL,
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DATA_LOSS,
    }
)


class TelemetryInterceptor(grpc.aio.ServerInterceptor):
    """Observes each unary call: a SERVER span, child of the caller's W3C trace context
    (metadata), when traces are exported; `rpc.server.call.duration` and the calls in flight
    when metrics are. One wrapper does both, so a call pays for one, and both see the same
    final status."""

    def __init__(self, telemetry: Telemetry) -> None:
        self._telemetry = telemetry
        self._tracer = telemetry.tracer if telemetry.tracing else None
        # Bound once per method the server knows (an unknown method has no handler).
        self._methods: dict[str, RpcMethodMetrics | None] = {}

    async def intercept_service(
        self,
        continuation: Continuation[Request, Response],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Request, Response] | None:
        handler = await continuation(handler_call_details)
        method: str = handler_call_details.method
        if handler is None or handler.unary_unary is None or method.startswith(OPEN_SERVICES):
            return handler
        try:
            metrics = self._methods[method]
        except KeyError:
            metrics = self._methods[method] = self._telemetry.rpc_method(method)
        metadata = handler_call_details.invocation_metadata
        return rewrapped(handler, lambda inner: self._observed(inner, method, metadata, metrics))

    def _observed(
        self,
        inner: Handler,
        method: str,
        metadata: Iterable[tuple[str, str | bytes]] | None,
        metrics: RpcMethodMetrics | None,
    ) -> Handler:
        service, _, name = method.lstrip("/").rpartition("/")
        tracer = self._tracer

        async def observed(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            span = token = None
            if tracer is not None:
                carrier = {key: value for key, value in metadata or () if isinstance(value, str)}
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
            code = grpc.StatusCode.UNKNOWN  # what grpc answers for an exception nobody mapped
            try:
                response = await inner(request, context)
                code = context.code() or grpc.StatusCode.OK
                return response
            except grpc.aio.AbortError:
                code = context.code() or grpc.StatusCode.UNKNOWN
                raise
            except asyncio.CancelledError:
                code = grpc.StatusCode.CANCELLED
                raise
            finally:
                if metrics is not None:
                    metrics.active -= 1
                    metrics.record(code.value[0], time.perf_counter() - started)
                if span is not None:
                    if span.is_recording():
                        span.set_attribute("rpc.grpc.status_code", code.value[0])
                        if code in SERVER_ERROR_CODES:
                            span.set_status(StatusCode.ERROR, code.name)
                    otel_context.detach(token)  # type: ignore[arg-type]
                    span.end()

        return observed
