"""Outcomes: what an evaluation answers. MATCHED, NO_MATCH or ERROR, always with a reason.

Plain frozen dataclasses rather than pydantic models: they are built on the hot path by the engine
itself, never from untrusted input, so validation would be pure cost.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass, field
from typing import Any, Final

from sidecar.core.model.base import record
from sidecar.core.model.node import Operator, Subject


class OutcomeKind(enum.StrEnum):
    """The verdict."""

    MATCHED = "MATCHED"
    NO_MATCH = "NO_MATCH"
    ERROR = "ERROR"


class Reason(enum.StrEnum):
    """Why an evaluation ended as it did; mirrors the proto enum `Reason`."""

    BRANCH_MATCHED = "BRANCH_MATCHED"
    NO_BRANCH_MATCHED = "NO_BRANCH_MATCHED"
    TIMEOUT = "TIMEOUT"
    CONNECT_ERROR = "CONNECT_ERROR"
    DNS_ERROR = "DNS_ERROR"
    TLS_ERROR = "TLS_ERROR"
    RESPONSE_TOO_LARGE = "RESPONSE_TOO_LARGE"
    MISSING_VARIABLE = "MISSING_VARIABLE"
    INVALID_VARIABLE = "INVALID_VARIABLE"
    SECRET_NOT_FOUND = "SECRET_NOT_FOUND"  # noqa: S105 (a reason name, not a secret)
    CONNECTOR_NOT_FOUND = "CONNECTOR_NOT_FOUND"
    CONNECTOR_NOT_LIVE = "CONNECTOR_NOT_LIVE"
    UPSTREAM_ERROR = "UPSTREAM_ERROR"
    EXTRACTION_FAILED = "EXTRACTION_FAILED"
    BLOCKED_DESTINATION = "BLOCKED_DESTINATION"
    CIRCUIT_OPEN = "CIRCUIT_OPEN"
    PROTOCOL_ERROR = "PROTOCOL_ERROR"
    INTERNAL_ERROR = "INTERNAL_ERROR"
    BUDGET_EXHAUSTED = "BUDGET_EXHAUSTED"
    LIMIT_EXCEEDED = "LIMIT_EXCEEDED"
    ANSWER_TOO_LARGE = "ANSWER_TOO_LARGE"
    AUTH_TOKEN_ERROR = "AUTH_TOKEN_ERROR"  # noqa: S105 (a reason name, not a token)


class CacheStatus(enum.StrEnum):
    """Where an answer's HTTP response came from, for a connector with a cache; mirrors the proto
    enum `CacheStatus` (None on an Outcome: the connector has no cache, or nothing was sent)."""

    MISS = "MISS"  # not held (or too old): the upstream was called
    HIT = "HIT"  # a fresh stored response; nothing was sent
    STALE = "STALE"  # expired, within stale_while_revalidate: one refresh runs behind it
    STALE_IF_ERROR = "STALE_IF_ERROR"  # the call failed; a stale response within stale_if_error
    COALESCED = "COALESCED"  # an identical call was in flight: its response, shared
    BYPASS = "BYPASS"  # this sidecar's cache is off (response_cache_max_bytes: 0)


class ExtractionStatus(enum.StrEnum):
    """How one extraction went."""

    EXTRACTED = "EXTRACTED"
    DEFAULTED = "DEFAULTED"
    MISSING = "MISSING"
    CAST_FAILED = "CAST_FAILED"
    NO_DOCUMENT = "NO_DOCUMENT"


# Read on every answer, several times: a set's lookup, not two enum attributes (67 ns each).
_SET_A_VALUE: Final = frozenset({ExtractionStatus.EXTRACTED, ExtractionStatus.DEFAULTED})


@record
class ExtractionResult:
    """One extraction's result, failures included: nothing is dropped silently."""

    variable: str
    status: ExtractionStatus
    value: Any = None
    required: bool = False
    message: str = ""
    # The fewest bytes `value` encodes to in an answer (see budget.value_floor), measured where
    # the value was made, off the loop when it is large: the answer's size is known without
    # walking it again.
    value_bytes: int = field(default=0, compare=False)

    @property
    def succeeded(self) -> bool:
        """True when a value (extracted or default) was set."""
        return self.status in _SET_A_VALUE


@dataclass(frozen=True, slots=True)
class RenderedRequest:
    """An outbound request as text, secrets already masked; for explanations only."""

    method: str
    url: str
    headers: dict[str, str] = field(default_factory=dict)
    body: str = ""


@dataclass(frozen=True, slots=True)
class ConditionExplanation:
    """How one condition was judged."""

    subject: Subject
    operator: Operator
    operand: Any
    subject_value: Any
    subject_present: bool
    result: bool
    note: str = ""


@dataclass(frozen=True, slots=True)
class BranchExplanation:
    """How one branch was judged; branches after the winner are not evaluated."""

    index: int
    target: str
    evaluated: bool
    matched: bool
    conditions: tuple[ConditionExplanation, ...] = ()


@dataclass(frozen=True, slots=True)
class Explanation:
    """Everything a workflow author needs to see why a branch fired."""

    request: RenderedRequest | None = None
    branches: tuple[BranchExplanation, ...] = ()
    notes: tuple[str, ...] = ()


@record
class Outcome:
    """The answer to one EvaluateNode call."""

    kind: OutcomeKind
    reason: Reason
    target: str
    message: str = ""
    branch_index: int | None = None
    variables: dict[str, Any] = field(default_factory=dict)
    extractions: tuple[ExtractionResult, ...] = ()
    http_status: int = 0
    upstream_latency_seconds: float = 0.0
    attempts: int = 0
    connector_version: int = 0
    explanation: Explanation | None = None
    cache_status: CacheStatus | None = None
    # Seconds since the upstream produced the response (0 unless it came from the cache).
    cache_age_seconds: float = 0.0
    # The secret values this evaluation placed on its request, for the edge that builds the
    # answer to mask (`sidecar.core.auth.mask_secrets`): an upstream may echo them back.
    secret_values: tuple[str, ...] = field(default=(), repr=False, compare=False)
