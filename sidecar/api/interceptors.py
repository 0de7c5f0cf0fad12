"""What every call goes through before its handler: the SERVER span and RPC metrics, the token
check, and the one place where errors become gRPC statuses.

A SidecarError becomes the status of `wire.STATUS_BY_ERROR_CODE` with its details (a
google.rpc.ErrorInfo always; INVALID_ARGUMENT with its google.rpc.BadRequest). Anything else is a
bug: it is logged with its traceback and the caller gets INTERNAL (ErrorInfo reason
INTERNAL_ERROR) with a generic message, never the exception's text (which may carry internal
detail).
Request bytes that do not parse as the method's message are the caller's mistake: grpc would
answer UNKNOWN with the parser's text, so the bytes are parsed inside the error mapping and
answered INVALID_ARGUMENT.

The layers of RulesSidecarService (`layered`), outermost first:

    observed   SERVER span and rpc.server.call.duration   when traces or metrics are exported
    checked    bearer token (`access.TokenCheck`)         when token files are configured
    guarded    request parsed, errors mapped              always

The observation goes first, so its span and its duration also see the status of calls refused by
the token check or mapped here. Health is only guarded (`guarded`): probes need no token and are
not worth a trace each.

The layers are not grpc.aio interceptors: an interceptor runs per call and would build a new
method handler with fresh closures each time. Here each method's handler is built once, on its
first call, and reused while the service hands out the same handler (`Layered`); what differs per
call (the trace context, the token) is read from `context.invocation_metadata()`.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable, Iterable, Sequence
from contextvars import ContextVar
from typing import Any, NoReturn, cast

import grpc
from opentelemetry import context as otel_context
from opentelemetry import propagate, trace
from opentelemetry.trace import SpanKind, StatusCode

from sidecar.api import wire
from sidecar.errors import FieldViolation, InvalidArgumentError, SidecarError
from sidecar.telemetry.instruments import Telemetry

log = logging.getLogger(__name__)

GENERIC_INTERNAL_MESSAGE = "internal error in rules-sidecar; the sidecar's log has the details"
MALFORMED = "the bytes are not a valid protobuf message of this method's type"

# The behaviour of a unary grpc.aio call. The stubs type RpcMethodHandler.unary_unary as the
# synchronous one; under grpc.aio it is this coroutine function, hence the casts below.
Handler = Callable[[Any, grpc.aio.ServicerContext[Any, Any]], Awaitable[Any]]
Metadata = Iterable[tuple[str, str | bytes]]
# The token check of one method: the status refusing a call's metadata, or None to let it in.
Refusal = Callable[[Metadata | None], grpc.Status | None]
# Builds one method's handler from the service's (and the method's full name).
Build = Callable[["grpc.RpcMethodHandler[Any, Any]", str], "grpc.RpcMethodHandler[Any, Any]"]

# Past this many distinct method names (a closed gate answers any name under its service) the
# built handlers start over rather than grow.
MAX_BUILT_METHODS = 64


class Layered(grpc.GenericRpcHandler):
    """A service whose unary methods are wrapped by `build`, once per method handler.

    >>> async def hello(request, context):
    ...     return b"hi"
    >>> service = grpc.method_handlers_generic_handler(
    ...     "demo.Greeter", {"Hello": grpc.unary_unary_rpc_method_handler(hello)}
    ... )
    >>> from types import SimpleNamespace
    >>> call = SimpleNamespace(method="/demo.Greeter/Hello", invocation_metadata=())
    >>> guarded_service = guarded(service)
    >>> guarded_service.service(call) is guarded_service.service(call)  # built once
    True
    """

    def __init__(self, service: grpc.GenericRpcHandler, build: Build) -> None:
        self._service = service
        self._build = build
        self._built: dict[str, tuple[grpc.RpcMethodHandler[Any, Any], Any]] = {}

    def service(
        self, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler[Any, Any] | None:
        """The built handler of this call's method (None for a method the service lacks)."""
        handler = self._service.service(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        method: str = handler_call_details.method
        built = self._built.get(method)
        if built is None or built[0] is not handler:  # first call, or the gate opened since
            if len(self._built) >= MAX_BUILT_METHODS:
                self._built.clear()
            built = self._built[method] = (handler, self._build(handler, method))
        return cast("grpc.RpcMethodHandler[Any, Any]", built[1])


def handlers_of(
    add_to_server: Callable[[Any, Any], None], servicer: Any
) -> tuple[grpc.GenericRpcHandler, ...]:
    """The generic handlers a generated `add_..._to_server` registers for `servicer`, to be
    layered before they reach a server."""
    registrar = _Registrar()
    add_to_server(servicer, registrar)
    return registrar.handlers


class _Registrar:
    """Takes what a generated `add_..._to_server` registers (it calls only these two)."""

    def __init__(self) -> None:
        self.handlers: tuple[grpc.GenericRpcHandler, ...] = ()

    def add_generic_rpc_handlers(self, handlers: Sequence[grpc.GenericRpcHandler]) -> None:
        self.handlers += tuple(handlers)

    def add_registered_method_handlers(self, service: str, handlers: object) -> None:
        """The same handlers again, pre-registered; the generic ones are enough."""


def guarded(service: grpc.GenericRpcHandler) -> Layered:
    """`service` with its requests parsed and its errors mapped (no token, not observed)."""
    return Layered(
        service, lambda handler, method: _handler(handler, _guard(handler, method, _answer))
    )


def layered(
    service: grpc.GenericRpcHandler,
    *,
    telemetry: Telemetry,
    tokens: Callable[[str], Refusal] | None = None,
) -> Layered:
    """`service` behind every layer: observed (if `telemetry` exports anything), checked (if
    `tokens`, which gives the check of a method by its name), guarded."""
    tracer = telemetry.tracer if telemetry.tracing else None

    observed = tracer is not None or telemetry.metrics
    # Observed, a refusal is answered after it was recorded (`_observed`); else at once.
    refuse = _pass_out if observed else _answer

    def build(handler: grpc.RpcMethodHandler[Any, Any], method: str) -> Any:
        behaviour = _guard(handler, method, refuse)
        if tokens is not None:
            behaviour = _checked(behaviour, tokens(method.rpartition("/")[2]), refuse)
        if observed:
            behaviour = _observed(behaviour, method, tracer, telemetry)
        return _handler(handler, behaviour)

    return Layered(service, build)


def _handler(handler: grpc.RpcMethodHandler[Any, Any], behaviour: Handler) -> Any:
    """A unary method handler for `behaviour`, which parses the request bytes itself."""
    return grpc.unary_unary_rpc_method_handler(
        behaviour, response_serializer=handler.response_serializer
    )


class _RefusalError(Exception):
    """Carries a call's error status out to the observing layer, which answers it once it has
    recorded the call: an abort sends the status at once, and a client that reads the metrics
    right after its call failed must find the call counted."""

    def __init__(self, status: grpc.Status) -> None:
        self.status = status


Refuse = Callable[[grpc.aio.ServicerContext[Any, Any], grpc.Status], Awaitable[NoReturn]]


async def _answer(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    await context.abort(status.code, status.details, status.trailing_metadata)


async def _pass_out(context: grpc.aio.ServicerContext[Any, Any], status: grpc.Status) -> NoReturn:
    raise _RefusalError(status)


OFF_LOOP_PARSE_BYTES = 64 * 1024
"""A request larger than this is parsed in a worker thread: protobuf parses in one C call that
holds the GIL, and so the event loop, for all of it (4 MiB of nested lists: 32 ms idle, 137 ms
loaded). Smaller ones are parsed at once, cheaper than a thread hand-off."""

received_bytes: ContextVar[int] = ContextVar("received_bytes", default=-1)
"""The size of the call's request on the wire, set by the guard before the handler runs (-1
where no guard ran): the servicer's choice of work off the loop needs it, and
`Message.ByteSize()` walks the whole parsed message again (up to 66 ms for a large node)."""


def _guard(handler: grpc.RpcMethodHandler[Any, Any], method: str, refuse: Refuse) -> Handler:
    """The method's behaviour with its request parsed here and its errors mapped."""
    inner = cast(Handler, handler.unary_unary)
    parse = handler.request_deserializer

    async def guarded_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        try:
            if parse is not None:
                size = len(request)
                received_bytes.set(size)
                try:
                    if size > OFF_LOOP_PARSE_BYTES:
                        request = await asyncio.to_thread(parse, request)
                    else:
                        request = parse(request)
                except Exception:  # DecodeError, RecursionError ...: the bytes are not the message
                    raise InvalidArgumentError([FieldViolation("request", MALFORMED)]) from None
            return await inner(request, context)
        except SidecarError as error:
            await refuse(context, wire.rpc_status_of(error))
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            await refuse(context, wire.internal_status(GENERIC_INTERNAL_MESSAGE))

    return guarded_call


def _checked(inner: Handler, refusal_of: Refusal, refuse: Refuse) -> Handler:
    """The behaviour behind the token check: a refused call never reaches the parser."""

    async def checked_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        refusal = refusal_of(context.invocation_metadata())
        if refusal is not None:
            await refuse(context, refusal)
        return await inner(request, context)

    return checked_call


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


def _observed(
    inner: Handler, method: str, tracer: trace.Tracer | None, telemetry: Telemetry
) -> Handler:
    """Observes each call: a SERVER span, child of the caller's W3C trace context (metadata),
    when traces are exported; `rpc.server.call.duration` and the calls in flight when metrics
    are. One wrapper does both, so a call pays for one, and both see the same final status."""
    service, _, name = method.lstrip("/").rpartition("/")
    span_name = f"{service}/{name}"
    span_attributes = {"rpc.system": "grpc", "rpc.service": service, "rpc.method": name}
    metrics = telemetry.rpc_method(method)

    async def observed_call(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
        span = token = None
        if tracer is not None:
            metadata = context.invocation_metadata() or ()
            carrier = {key: value for key, value in metadata if isinstance(value, str)}
            span = tracer.start_span(
                span_name,
                context=propagate.extract(carrier),
                kind=SpanKind.SERVER,
                attributes=span_attributes,
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
        except _RefusalError as refused:
            refusal = refused.status
            code = refusal.code
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
        return await _answer(context, refusal)  # recorded: now the caller may see it

    return observed_call
