"""What telemetry wraps around one evaluation and one outbound attempt: context managers that
observe a step while its owner performs it (the servicer evaluates, the egress sends).

    with telemetry.evaluation(node) as evaluation:                 INTERNAL span, counter, log
        with telemetry.http_attempt(request, options, origin) as attempt:   CLIENT span, duration
            attempt.record(await transport.attempt(...))
        evaluation.record(outcome)

Nothing recorded ever holds a secret, a header value or a visitor's variable: `url.full` goes
through `redaction`, and exceptions are recorded by type only (their text may quote input).
"""

from __future__ import annotations

import asyncio
import logging
import time
from types import TracebackType
from typing import Final, Protocol

from opentelemetry import context, trace
from opentelemetry.trace import Span, SpanKind, StatusCode

from sidecar.core.model import Node, Outcome, OutcomeKind
from sidecar.core.model.exchange import (
    HttpResponse,
    Origin,
    OutboundRequest,
    SendError,
    SendOptions,
)
from sidecar.telemetry.attributes import (
    ATTEMPTS,
    BRANCH_INDEX,
    CONNECTOR_ID,
    CONNECTOR_VERSION,
    ERROR_TYPE,
    HTTP_REQUEST_METHOD,
    HTTP_RESEND_COUNT,
    HTTP_STATUS_CODE,
    NODE_ID,
    OUTCOME,
    REASON,
    SERVER_ADDRESS,
    SERVER_PORT,
    URL_FULL,
)
from sidecar.telemetry.logs import JsonLine
from sidecar.telemetry.redaction import redacted_url

EVALUATION_SPAN: Final = "evaluate_node"

evaluation_log = logging.getLogger("sidecar.evaluations")


class Recorder(Protocol):
    """What a scope records with: `instruments.Telemetry` (named here structurally, so this
    module does not import the one that builds its scopes)."""

    tracing: bool
    metrics: bool
    tracer: trace.Tracer
    evaluation_lines: EvaluationLineSampling

    def count_evaluation(self, connector_id: str, outcome: Outcome) -> None: ...

    def record_attempt_duration(
        self,
        seconds: float,
        connector_id: str,
        method: str,
        origin: Origin,
        status: int,
        error_type: str | None,
    ) -> None: ...


class EvaluationLineSampling:
    """Which evaluations write their INFO line: every one that ends in ERROR, and of the others
    the first and then one in `every` per connector and outcome (`every` 1: all of them; 0:
    none). Counted on the event loop's thread, where evaluations are recorded.

    A line per call is what a busy sidecar can least afford to log (the README's performance
    section prices it), and metrics and traces count every evaluation already; what needs
    reading line by line, the errors, is never sampled.

    >>> lines = EvaluationLineSampling(3)
    >>> [lines.one_in("orders", OutcomeKind.MATCHED) for _ in range(7)]
    [3, 0, 0, 3, 0, 0, 3]
    >>> lines.one_in("orders", OutcomeKind.ERROR), lines.one_in("orders", OutcomeKind.NO_MATCH)
    (1, 3)
    """

    __slots__ = ("_seen", "every")

    def __init__(self, every: int) -> None:
        if every < 0:
            raise ValueError("every must be 0 or more")
        self.every = every
        self._seen: dict[tuple[str, OutcomeKind], int] = {}

    def one_in(self, connector_id: str, kind: OutcomeKind) -> int:
        """How many evaluations this one's line stands for (1 for an ERROR); 0: no line."""
        every = self.every
        if every == 1 or kind is OutcomeKind.ERROR:
            return 1
        if every == 0:
            return 0
        seen = self._seen
        key = (connector_id, kind)
        since = seen.get(key, 0)
        if since == 0 and len(seen) >= SAMPLED_KEYS_KEPT:
            seen.clear()  # connectors come and go: the counts start over, never grow unbounded
        seen[key] = since + 1 if since + 1 < every else 0
        return every if since == 0 else 0


SAMPLED_KEYS_KEPT: Final = 4096


class EvaluationScope:
    """The telemetry of one evaluation: enter before the engine runs, `record` its outcome."""

    __slots__ = ("_node", "_span", "_started", "_telemetry", "_token")

    def __init__(self, telemetry: Recorder | None, node: Node | None) -> None:
        self._telemetry = telemetry
        self._node = node
        self._span: Span | None = None
        self._token: object = None
        self._started = 0.0

    def __enter__(self) -> EvaluationScope:
        telemetry, node = self._telemetry, self._node
        if telemetry is None or node is None:
            return self
        self._started = time.perf_counter()
        if telemetry.tracing:
            self._span = telemetry.tracer.start_span(
                EVALUATION_SPAN,
                kind=SpanKind.INTERNAL,
                attributes={CONNECTOR_ID: node.connector_id, NODE_ID: node.id},
            )
            self._token = context.attach(trace.set_span_in_context(self._span))
        return self

    def record(self, outcome: Outcome) -> None:
        """Attributes, counter and the one INFO log line of the evaluation (within its span)."""
        telemetry, node = self._telemetry, self._node
        if telemetry is None or node is None:
            return
        span = self._span
        if span is not None and span.is_recording():
            # One set_attributes call: each attribute set apart takes the span's lock again.
            attributes: dict[str, str | int] = {
                CONNECTOR_VERSION: outcome.connector_version,
                OUTCOME: outcome.kind.value,
                REASON: outcome.reason.value,
                ATTEMPTS: outcome.attempts,
            }
            if outcome.branch_index is not None:
                attributes[BRANCH_INDEX] = outcome.branch_index
            if outcome.http_status:
                attributes[HTTP_STATUS_CODE] = outcome.http_status
            if outcome.kind is OutcomeKind.ERROR:
                attributes[ERROR_TYPE] = outcome.reason.value
            span.set_attributes(attributes)
            if outcome.kind is OutcomeKind.ERROR:
                span.set_status(StatusCode.ERROR, outcome.reason.value)
        if telemetry.metrics:
            telemetry.count_evaluation(node.connector_id, outcome)
        if evaluation_log.isEnabledFor(logging.INFO):
            one_in = telemetry.evaluation_lines.one_in(node.connector_id, outcome.kind)
            if one_in:
                # Without traces no span is ever current (the API layer starts none either).
                elapsed = time.perf_counter() - self._started
                _log_evaluation(node, outcome, elapsed, one_in, telemetry.tracing)

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        span = self._span
        if span is None:
            return
        if exc_type is not None and span.is_recording():
            span.set_attribute(ERROR_TYPE, exc_type.__qualname__)
            span.set_status(StatusCode.ERROR, exc_type.__qualname__)
        context.detach(self._token)  # type: ignore[arg-type]
        span.end()


SILENT_EVALUATION = EvaluationScope(None, None)


# The evaluation's line: what repeats across calls is encoded once per distinct set of values.
_EVALUATION_LINE = JsonLine(
    evaluation_log,
    "node evaluated",
    fixed=(
        "connector",
        "connector_version",
        "node_id",
        "outcome",
        "reason",
        "branch_index",
        "http_status",
        "attempts",
        "logged_one_in",
    ),
    varying=("latency_ms", "upstream_latency_ms"),
)


def _log_evaluation(
    node: Node, outcome: Outcome, elapsed: float, one_in: int, traced: bool
) -> None:
    fixed = (
        node.connector_id,
        outcome.connector_version,
        node.id,
        outcome.kind._value_,  # the plain str: `.value` is a descriptor written in Python
        outcome.reason._value_,
        outcome.branch_index,
        outcome.http_status,
        outcome.attempts,
        one_in,
    )
    varying = (round(elapsed * 1000, 3), round(outcome.upstream_latency_seconds * 1000, 3))
    if not _EVALUATION_LINE.write(fixed, varying, traced=traced):
        evaluation_log.info(
            "node evaluated", extra={"fields": _EVALUATION_LINE.fields(fixed, varying)}
        )


class AttemptScope:
    """The telemetry of one outbound attempt: a CLIENT span made current while the egress
    performs the attempt, and its duration; `record` the response when there is one.

    A failure is told by what leaves the block: a SendError by its reason, a cancellation (the
    exchange's total budget ran out) as `cancelled`, anything else by its type only.
    """

    __slots__ = (
        "_options",
        "_origin",
        "_request",
        "_resend_count",
        "_span",
        "_started",
        "_status",
        "_telemetry",
        "_token",
    )

    def __init__(
        self,
        telemetry: Recorder | None,
        request: OutboundRequest | None,
        options: SendOptions | None,
        origin: Origin | None,
        resend_count: int = 0,
    ) -> None:
        self._telemetry = telemetry
        self._request = request
        self._options = options
        self._origin = origin
        self._resend_count = resend_count
        self._span: Span | None = None
        self._token: object = None
        self._started = 0.0
        self._status = 0

    def __enter__(self) -> AttemptScope:
        telemetry, request, options, origin = (
            self._telemetry,
            self._request,
            self._options,
            self._origin,
        )
        if telemetry is None or request is None or options is None or origin is None:
            return self
        if telemetry.tracing:
            attributes: dict[str, str | int] = {
                HTTP_REQUEST_METHOD: request.method,
                SERVER_ADDRESS: origin.host,
                SERVER_PORT: origin.port,
            }
            # Given at the start, all at once (each set apart takes the span's lock again); the
            # redaction only when the span will be recorded, which its parent (the evaluation's
            # span, sampled on the same trace id) tells beforehand for every standard sampler.
            parent_recorded = trace.get_current_span().is_recording()
            if parent_recorded:
                attributes.update(self._recorded_attributes(request, options))
            span = self._span = telemetry.tracer.start_span(
                request.method, kind=SpanKind.CLIENT, attributes=attributes
            )
            if not parent_recorded and span.is_recording():  # a root span, or a custom sampler
                span.set_attributes(self._recorded_attributes(request, options))
            self._token = context.attach(trace.set_span_in_context(span))
        self._started = time.perf_counter()
        return self

    def _recorded_attributes(
        self, request: OutboundRequest, options: SendOptions
    ) -> dict[str, str | int]:
        attributes: dict[str, str | int] = {
            URL_FULL: redacted_url(request.url, options.url_template),
            CONNECTOR_ID: options.connector_id,
        }
        if self._resend_count:
            attributes[HTTP_RESEND_COUNT] = self._resend_count
        return attributes

    def record(self, response: HttpResponse) -> None:
        """The attempt got an answer (any status)."""
        self._status = response.status

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        telemetry, options, request, origin = (
            self._telemetry,
            self._options,
            self._request,
            self._origin,
        )
        if telemetry is None or options is None or request is None or origin is None:
            return
        status = self._status
        error_type: str | None
        if isinstance(exc, SendError):
            error_type = exc.reason.value
        elif isinstance(exc, asyncio.CancelledError):
            error_type = "cancelled"  # the exchange's total budget ran out mid-attempt
        elif exc_type is not None:
            error_type = exc_type.__qualname__
        elif status:
            error_type = str(status) if status >= 400 else None
        else:
            error_type = "_OTHER"  # left without an answer and without an exception
        if telemetry.metrics:
            telemetry.record_attempt_duration(
                time.perf_counter() - self._started,
                options.connector_id,
                request.method,
                origin,
                status,
                error_type,
            )
        span = self._span
        if span is not None:
            if span.is_recording():
                if status:
                    span.set_attribute(HTTP_STATUS_CODE, status)
                if error_type is not None:
                    span.set_attribute(ERROR_TYPE, error_type)
                    span.set_status(StatusCode.ERROR, error_type)
            context.detach(self._token)  # type: ignore[arg-type]
            span.end()


SILENT_ATTEMPT = AttemptScope(None, None, None, None)
