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
from collections.abc import Callable
from pathlib import Path

import grpc

from sidecar.api import wire
from sidecar.api.interceptors import Metadata
from sidecar.core.watched_file import WatchedFile
from sidecar.errors import (
    ConfigError,
    NotReadyError,
    PermissionDeniedError,
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


class TokenCheck:
    """Checks `authorization: Bearer <token>` metadata before any handler runs (the `checked`
    layer of `interceptors.layered` asks `for_method` once per method, then per call).

    >>> check = TokenCheck(admin=None, evaluation=None)
    >>> refuse = check.for_method("EvaluateNode")
    >>> refuse(()).code
    <StatusCode.UNAUTHENTICATED: (16, 'unauthenticated')>
    """

    def __init__(self, *, admin: TokenFile | None, evaluation: TokenFile | None) -> None:
        self._tokens = {Role.ADMIN: admin, Role.EVALUATION: evaluation}
        # The answers are the same every time: their statuses are built once.
        self._unreadable = wire.rpc_status_of(NotReadyError(UNREADABLE))
        self._unauthenticated = wire.rpc_status_of(
            UnauthenticatedError("a valid bearer token is required")
        )
        self._not_admin = wire.rpc_status_of(
            PermissionDeniedError(
                "this call needs the admin token", metadata={"required_role": "admin"}
            )
        )

    def for_method(self, name: str) -> Callable[[Metadata | None], grpc.Status | None]:
        """The check of one method (its short name): the refusing status, or None to let in."""
        needs_admin = name in ADMIN_METHODS

        def refusal(metadata: Metadata | None) -> grpc.Status | None:
            role, unreadable = self._role_of(_bearer(metadata))
            if role is None:
                return self._unreadable if unreadable else self._unauthenticated
            if needs_admin and role is not Role.ADMIN:
                return self._not_admin
            return None

        return refusal

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


def _bearer(metadata: Metadata | None) -> bytes | None:
    for key, value in metadata or ():
        if key == "authorization":
            text = value.decode() if isinstance(value, bytes) else str(value)
            scheme, _, token = text.partition(" ")
            if scheme.lower() == "bearer" and token.strip():
                return token.strip().encode()
    return None
