"""Server interceptors: the one place where errors become gRPC statuses.

A SidecarError becomes the status of `wire.STATUS_BY_ERROR_CODE` (INVALID_ARGUMENT with its
google.rpc.BadRequest). Anything else is a bug: it is logged with its traceback and the caller gets
INTERNAL with a generic message, never the exception's text (which may carry internal detail).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

from sidecar import wire
from sidecar.errors import SidecarError

log = logging.getLogger(__name__)

GENERIC_INTERNAL_MESSAGE = "internal error in rules-sidecar; the sidecar's log has the details"

Handler = Callable[[Any, grpc.aio.ServicerContext], Awaitable[Any]]


class ErrorMappingInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[misc]
    """Maps SidecarError to its status and any other exception to a generic INTERNAL."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        handler = await continuation(handler_call_details)
        if handler is None or handler.unary_unary is None:
            return handler
        return grpc.unary_unary_rpc_method_handler(
            _guard(handler.unary_unary, handler_call_details.method),
            request_deserializer=handler.request_deserializer,
            response_serializer=handler.response_serializer,
        )


def _guard(inner: Handler, method: str) -> Handler:
    async def guarded(request: Any, context: grpc.aio.ServicerContext) -> Any:
        try:
            return await inner(request, context)
        except SidecarError as error:
            status = wire.rpc_status_of(error)
            await context.abort(status.code, status.details, status.trailing_metadata)
        except (asyncio.CancelledError, grpc.aio.AbortError):
            raise
        except Exception:
            log.exception("unhandled error in %s", method)
            await context.abort(grpc.StatusCode.INTERNAL, GENERIC_INTERNAL_MESSAGE)

    return guarded
