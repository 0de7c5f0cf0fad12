"""The two error trees of rules-sidecar, drawn once.

Inside the sidecar only these errors travel; foreign exceptions (sqlite3, pydantic, yaml, OS, ssl,
httptools) are translated where they enter, with ``raise ... from exc``.

A ``SidecarError`` refuses a request or stops the process. The edge (``sidecar.api.wire``) maps
each ``ErrorCode`` to a gRPC status in one table, ``STATUS_BY_ERROR_CODE``, and to the
google.rpc.ErrorInfo reason callers can switch on, ``REASON_BY_ERROR_CODE``; an error's
``metadata`` (e.g. ``connector_id``) travels in that ErrorInfo.

    SidecarError                code               meaning
    ├── InvalidArgumentError    INVALID_ARGUMENT   caller's input is wrong; carries field violations
    ├── UnauthenticatedError    UNAUTHENTICATED    no bearer token, or not a configured one
    ├── PermissionDeniedError   PERMISSION_DENIED  the token's role may not make this call
    ├── NotFoundError           NOT_FOUND          no connector with that id
    ├── VersionConflictError    VERSION_CONFLICT   expected_version does not match the stored one
    ├── ReadOnlyConnectorError  READ_ONLY          the connector is owned by the connectors file
    ├── NotReadyError           NOT_READY          still loading, or shutting down
    ├── OverloadedError         OVERLOADED         too many evaluations in progress
    ├── StoreError              STORE              the embedded store is unreadable or corrupt
    └── ConfigError             CONFIG             the connectors file or settings are invalid

An ``EvaluationFailure`` stops one evaluation, never the call: ``Engine.evaluate`` catches the
family once and answers an ERROR outcome with the failure's ``model.Reason`` and message (so the
message is shown to callers: it never holds a secret, a header or a variable's value). The
family lives in ``sidecar.core.model.failures``, beside the ``Reason`` it carries: this module
imports nothing of sidecar (an import contract, so that every layer can import it).

    EvaluationFailure           reason               meaning
    ├── ConnectorNotFoundError  CONNECTOR_NOT_FOUND  no connector has the node's connector_id
    ├── ConnectorNotLiveError   CONNECTOR_NOT_LIVE   the connector is DISABLED, or DRAFT outside
    │                                                test mode
    ├── RenderError             MISSING_VARIABLE,    a variable cannot be placed in the request
    │                           INVALID_VARIABLE
    ├── MissingSecretError      SECRET_NOT_FOUND     a secret the auth needs has no value
    ├── SecretBindingError      BLOCKED_DESTINATION  a secret is bound to other hosts than the URL's
    ├── DeadlineExhaustedError  TIMEOUT              the caller's deadline leaves no time to send
    ├── AnswerTooLargeError     ANSWER_TOO_LARGE     with explain, the node alone would make an
    │                                                answer over the message limit: nothing is
    │                                                sent (sidecar.core.engine)
    ├── SendError               TIMEOUT,             no usable response from the upstream (the
    │                           CONNECT_ERROR,       egress raises it); carries `attempts` and
    │                           DNS_ERROR, ...       `retryable`
    │   └── TokenError          AUTH_TOKEN_ERROR     the OAuth2 token endpoint gave no usable
    │                                                token (sidecar.core.oauth)
    ├── DestinationBlockedError BLOCKED_DESTINATION  a host name resolves to a forbidden address
    │                                                (sidecar.egress.transport's resolver)
    ├── BudgetExhaustedError    BUDGET_EXHAUSTED     the evaluation's time ran out, or its call
    │                                                was cancelled (sidecar.core.budget)
    ├── LimitExceededError      LIMIT_EXCEEDED       a step would exceed a work limit (a query's
    │                                                result or steps, a regex subject, a cost)
    └── CastError               EXTRACTION_FAILED    a value does not fit an extraction's cast;
                                                     caught where it arises and reported as the
                                                     extraction's CAST_FAILED status

Two ValueErrors stay outside both trees, on purpose. ``TemplateSyntaxError``
(``sidecar.core.placeholders``) is a compile-time error raised inside pydantic validators:
pydantic turns only ValueErrors into field errors, and only pydantic knows the field's path, so
it leaves validation as InvalidArgumentError (API) or ConfigError (connectors file) naming that
path. ``DocumentError`` (``sidecar.core.documents``) never leaves its two callers: the engine
turns it into a note, ExtractVariables into an InvalidArgumentError on ``raw_json``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any


class ErrorCode(enum.Enum):
    """What kind of failure a SidecarError is; wire.py maps each to one gRPC status."""

    INVALID_ARGUMENT = "invalid_argument"
    UNAUTHENTICATED = "unauthenticated"
    PERMISSION_DENIED = "permission_denied"
    NOT_FOUND = "not_found"
    VERSION_CONFLICT = "version_conflict"
    READ_ONLY = "read_only"
    NOT_READY = "not_ready"
    OVERLOADED = "overloaded"
    STORE = "store"
    CONFIG = "config"


@dataclass(frozen=True, slots=True)
class FieldViolation:
    """One bad field: a dotted path in the request (e.g. `connector.url_template`) and why."""

    field: str
    description: str


class SidecarError(Exception):
    """Root of every error the sidecar raises on purpose.

    `metadata` holds the error's dynamic values by name (`connector_id`, `expected_version`), for
    programs: the edge sends them in the error's google.rpc.ErrorInfo, beside the message.

        >>> NotFoundError("no connector with id 'x'", metadata={"connector_id": "x"}).metadata
        {'connector_id': 'x'}
    """

    code: ErrorCode

    def __init__(self, message: str, *, metadata: Mapping[str, str] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.metadata = dict(metadata or {})


class InvalidArgumentError(SidecarError):
    """The caller sent something invalid; `violations` names every bad field.

    `reason`, when given, is a more precise google.rpc.ErrorInfo reason than the code's
    (INVALID_REQUEST): ExtractVariables' work limits say LIMIT_EXCEEDED, BUDGET_EXHAUSTED or
    ANSWER_TOO_LARGE, as EvaluateNode's outcomes do.
    """

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(
        self,
        violations: Sequence[FieldViolation],
        message: str | None = None,
        *,
        reason: str | None = None,
    ) -> None:
        self.violations = tuple(violations)
        self.reason = reason
        super().__init__(message or f"invalid request: {_summary(self.violations)}")


MAX_SUMMARISED_VIOLATIONS = 10
MAX_SUMMARY_CHARS = 800
"""Bounds on an InvalidArgumentError's message: the message travels twice in the error's trailers
(grpc-message and the status details), which clients bound, and lands in logs."""


def _summary(violations: Sequence[FieldViolation]) -> str:
    """`a: x; b.c: y`: the violations that fit MAX_SUMMARY_CHARS (at most
    MAX_SUMMARISED_VIOLATIONS, each cut to 300 characters), then `; and N more`.

    >>> _summary([FieldViolation(f"f{i}", "bad") for i in range(12)]).rsplit("; ", 2)[-2:]
    ['f9: bad', 'and 2 more']
    """
    parts: list[str] = []
    length = 0
    for index, violation in enumerate(violations):
        part = f"{violation.field}: {violation.description}"
        part = part if len(part) <= 300 else part[:297] + "..."
        length += len(part) + 2
        if index == MAX_SUMMARISED_VIOLATIONS or (parts and length > MAX_SUMMARY_CHARS):
            return "; ".join(parts) + f"; and {len(violations) - index} more"
        parts.append(part)
    return "; ".join(parts)


class UnauthenticatedError(SidecarError):
    """The call carries no bearer token, or one that matches no configured token."""

    code = ErrorCode.UNAUTHENTICATED


class PermissionDeniedError(SidecarError):
    """The token is valid but its role may not make this call (evaluation token, admin RPC)."""

    code = ErrorCode.PERMISSION_DENIED


class NotFoundError(SidecarError):
    """No connector has the requested id."""

    code = ErrorCode.NOT_FOUND


class VersionConflictError(SidecarError):
    """An optimistic-concurrency check (expected_version) failed."""

    code = ErrorCode.VERSION_CONFLICT


class ReadOnlyConnectorError(SidecarError):
    """The connector is declared in the connectors file and cannot be changed through the API."""

    code = ErrorCode.READ_ONLY


class NotReadyError(SidecarError):
    """Not serving: the registry has not finished loading, or the sidecar is shutting down
    (UNAVAILABLE, so a caller retries, on another replica if it has one)."""

    code = ErrorCode.NOT_READY


class OverloadedError(SidecarError):
    """The admission limit is reached; the caller should back off rather than queue."""

    code = ErrorCode.OVERLOADED


class StoreError(SidecarError):
    """The embedded connector store cannot be opened, read or written."""

    code = ErrorCode.STORE


class ConfigError(SidecarError):
    """A configuration input (connectors file, settings) is invalid; `problems` lists each one."""

    code = ErrorCode.CONFIG

    def __init__(
        self,
        message: str,
        problems: Sequence[str] = (),
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> None:
        self.problems = tuple(problems)
        super().__init__(message, metadata=metadata)


MAP_FIELDS = frozenset({"headers", "query"})


def field_path(location: Sequence[Any]) -> str:
    """Spell a validation location as a request field path.

    ("connector", "headers", "X-Key", "[key]") -> connector.headers["X-Key"];
    ("node", "branches", 0, "target") -> node.branches[0].target.
    """
    text = ""
    parent: Any = None
    for part in location:
        if part == "[key]":
            continue
        if isinstance(part, int):
            text += f"[{part}]"
        elif parent in MAP_FIELDS:
            text += f"[{json.dumps(str(part))}]"
        else:
            text += f".{part}" if text else str(part)
        parent = part
    return text


def clean_message(message: str) -> str:
    """Drop pydantic's "Value error, " prefix: the field path already says where."""
    return message.removeprefix("Value error, ")
