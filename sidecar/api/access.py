"""Who may call: bearer tokens for shared (standalone) deployments.

A pod sidecar listens on loopback and answers only inside its pod; a sidecar shared by several
backends can require tokens, read from files (a mounted Kubernetes Secret; re-read when they
change, so rotation needs no restart):

    RPC                                        accepted tokens
    RegisterConnector, DeleteConnector         admin (an admin can point a connector anywhere)
    EvaluateNode, ExtractVariables,            evaluation or admin
    GetConnector, ListConnectors
    grpc.health.v1.Health, reflection          none (probes and tooling)

No token or an unknown one answers UNAUTHENTICATED; an evaluation token on an admin RPC answers
PERMISSION_DENIED (UnauthenticatedError, PermissionDeniedError: their statuses come from the one
table, `wire.STATUS_BY_ERROR_CODE`, as every other refusal's). Tokens are compared in constant
time (`hmac.compare_digest`) and never logged. A token file that cannot be read any more (emptied,
removed, unreadable while a Secret is re-mounted) is logged with its path, and a call that no
readable token admits answers UNAVAILABLE without naming it: the caller cannot fix the file.
When only an evaluation token is configured, the registry cannot be changed through the API at
all (connectors then come from the connectors file).
"""

from __future__ import annotations

import enum
import hmac
import logging
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import grpc

from sidecar.api import wire
from sidecar.api.interceptors import OPEN_SERVICES, Continuation, Request, Response
from sidecar.core.watched_file import WatchedFile
from sidecar.errors import (
    ConfigError,
    NotReadyError,
    PermissionDeniedError,
    SidecarError,
    UnauthenticatedError,
)

log = logging.getLogger(__name__)
UNREADABLE = (
    "the sidecar cannot read its token configuration; retry later (its log says which file)"
)

ADMIN_METHODS = frozenset({"RegisterConnector", "DeleteConnector"})


class Role(enum.Enum):
    """What a token allows."""

    ADMIN = "admin"
    EVALUATION = "evaluation"


class TokenFile:
    """A token read from a file, re-read when the file changes (one stat per check)."""

    def __init__(self, path: Path) -> None:
        self._file = WatchedFile(path)
        self.current()  # fail at startup, not on the first call

    def current(self) -> bytes:
        """The token's bytes (surrounding whitespace stripped)."""
        try:
            token = self._file.read().strip()
        except OSError as exc:
            raise ConfigError(f"cannot read token file {self._file.path}: {exc.strerror}") from exc
        if len(token) < 16:
            raise ConfigError(f"token file {self._file.path} holds fewer than 16 characters")
        return token


class TokenInterceptor(grpc.aio.ServerInterceptor):
    """Checks `authorization: Bearer <token>` metadata before any handler runs."""

    def __init__(self, *, admin: TokenFile | None, evaluation: TokenFile | None) -> None:
        self._tokens = {Role.ADMIN: admin, Role.EVALUATION: evaluation}

    async def intercept_service(
        self,
        continuation: Continuation[Request, Response],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler[Request, Response] | None:
        method: str = handler_call_details.method
        if method.startswith(OPEN_SERVICES):
            return await continuation(handler_call_details)
        role, unreadable = self._role_of(_bearer(handler_call_details.invocation_metadata))
        if role is None and unreadable:
            return _refusal(NotReadyError(UNREADABLE))
        if role is None:
            return _refusal(UnauthenticatedError("a valid bearer token is required"))
        if method.rsplit("/", 1)[-1] in ADMIN_METHODS and role is not Role.ADMIN:
            return _refusal(
                PermissionDeniedError(
                    "this call needs the admin token", metadata={"required_role": "admin"}
                )
            )
        return await continuation(handler_call_details)

    def _role_of(self, presented: bytes | None) -> tuple[Role | None, bool]:
        """The presented token's role, and whether a token file could not be read."""
        if presented is None:
            return None, False
        found = None
        unreadable = False
        for role, token_file in self._tokens.items():
            if token_file is None:
                continue
            try:
                expected = token_file.current()
            except ConfigError as error:
                log.error("%s; calls needing the %s token answer UNAVAILABLE", error, role.value)
                unreadable = True
                continue
            # Compare against every configured token, always: no early exit to time.
            if hmac.compare_digest(presented, expected):
                found = found or role
        return found, unreadable


def _bearer(metadata: Iterable[tuple[str, str | bytes]] | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
    return None


def _refusal(error: SidecarError) -> grpc.RpcMethodHandler[Any, Any]:
    """A handler that answers the error's status, from the one table (wire.rpc_status_of)."""
    status = wire.rpc_status_of(error)

    async def refuse(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        await context.abort(status.code, status.details, status.trailing_metadata)

    return grpc.unary_unary_rpc_method_handler(refuse)
