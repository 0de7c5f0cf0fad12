"""The one error tree of rules-sidecar.

Inside the sidecar only these errors travel; foreign exceptions (sqlite3, pydantic, yaml, OS) are
translated where they enter, with ``raise ... from exc``. The edge (``sidecar.api.wire``) maps each
``ErrorCode`` to a gRPC status in one table.

    SidecarError                 code            meaning
    ├── InvalidArgumentError     INVALID_ARGUMENT  caller's input is wrong; carries field violations
    ├── NotFoundError            NOT_FOUND         no connector with that id
    ├── VersionConflictError     VERSION_CONFLICT  expected_version does not match the stored one
    ├── ReadOnlyConnectorError   READ_ONLY         the connector is owned by the connectors file
    ├── NotReadyError            NOT_READY         the registry is still loading
    ├── OverloadedError          OVERLOADED        too many evaluations in progress
    ├── StoreError               STORE             the embedded store is unreadable or corrupt
    └── ConfigError              CONFIG            the connectors file or settings are invalid

Evaluation failures (timeouts, upstream errors ...) are not exceptions of this tree: they are
answers, carried by ``model.Outcome`` with a ``model.Reason``.
"""

from __future__ import annotations

import enum
import json
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any


class ErrorCode(enum.Enum):
    """What kind of failure a SidecarError is; wire.py maps each to one gRPC status."""

    INVALID_ARGUMENT = "invalid_argument"
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
    """Root of every error the sidecar raises on purpose."""

    code: ErrorCode

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidArgumentError(SidecarError):
    """The caller sent something invalid; `violations` names every bad field."""

    code = ErrorCode.INVALID_ARGUMENT

    def __init__(self, violations: Sequence[FieldViolation], message: str | None = None) -> None:
        self.violations = tuple(violations)
        summary = "; ".join(f"{v.field}: {v.description}" for v in self.violations)
        super().__init__(message or f"invalid request: {summary}")


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
    """The registry has not finished loading."""

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

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        self.problems = tuple(problems)
        super().__init__(message)


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
