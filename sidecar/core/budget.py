"""One budget per evaluation: the work limits, the time left, and a way to stop the work.

Python cannot stop a thread from outside, so judging a response is made of small steps, each
bounded by a cap (a JMESPath result's size, a regex subject's length ...), and every step spends
from the evaluation's `Budget`. Between steps the budget checks whether the time is up or the
call was cancelled, and raises `BudgetExhaustedError`: the work stops at the next step wherever
it runs, on the event loop or in a worker thread. A cap reached raises `LimitExceededError`.

    >>> clock = iter([0.0, 0.0, 5.0]).__next__
    >>> budget = Budget(WorkLimits(), seconds=1.0, clock=clock, check_every=1)
    >>> budget.spend()
    >>> budget.spend()
    Traceback (most recent call last):
    ...
    sidecar.core.budget.BudgetExhaustedError: the evaluation's time budget (1.000s) ran out

`run_bounded` runs a judging function on the event loop for a slice of work, and moves it to a
worker thread when it needs more; a cancelled caller cancels the budget and waits for the worker
to stop before the cancellation goes on, so whatever the caller holds (an admission slot) is
released only when the work has stopped.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import partial
from typing import Any, Final, TypeVar

from sidecar.core.model.failures import EvaluationFailure
from sidecar.core.model.outcome import Reason

T = TypeVar("T")

# Work units a judging may spend on the event loop before it moves to a worker thread: about a
# millisecond of Python on a slow core.
ON_LOOP_UNITS: Final = 2_000
# How often (in units) the clock is read; a step is at most a few microseconds per unit.
CHECK_EVERY: Final = 64
# Bytes of text built (json.dumps, join) or searched per unit: about a microsecond each.
BYTES_PER_UNIT: Final = 256
# JSON values a node's operands and default values may hold in all (the default of the
# setting): the model validates them in one call that holds the GIL, ~0.2 us a value.
MAX_OPERAND_VALUES: Final = 100_000


@dataclass(frozen=True, slots=True)
class WorkLimits:
    """The caps on one evaluation's work; each is the setting of the same name.

    >>> WorkLimits().max_query_result_bytes
    1048576
    """

    max_evaluation_seconds: float = 60.0
    max_query_result_bytes: int = 1024 * 1024
    max_query_steps: int = 200_000
    max_regex_subject_bytes: int = 64 * 1024
    regex_max_memory_bytes: int = 1024 * 1024
    max_node_cost_bytes: int = 64 * 1024 * 1024
    max_explain_value_bytes: int = 4 * 1024
    max_operand_values: int = MAX_OPERAND_VALUES


class AnswerTooLargeError(EvaluationFailure):
    """The answer could not fit the message limit, and that is known before it is built (and,
    with explain, before the call): what it must hold is over the limit already."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.ANSWER_TOO_LARGE, message)


CALLER_CANCELLED = "the call was cancelled"
SHUTTING_DOWN = "the sidecar is shutting down"


class BudgetExhaustedError(EvaluationFailure):
    """The evaluation's time ran out, or its call was cancelled, while the sidecar worked."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.BUDGET_EXHAUSTED, message)


class LimitExceededError(EvaluationFailure):
    """A step would exceed one of the work limits; the message names the setting."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.LIMIT_EXCEEDED, message)


class _MoveOffLoop(BaseException):
    """The on-loop slice is spent: run the judging again in a worker thread.

    A BaseException, as CancelledError is: judging catches Exception to answer whatever the
    input holds, and must not swallow this on its way out.
    """


class Budget:
    """Time, cancellation and limits of one evaluation, spent in units of work.

    `seconds` is the time from now the whole evaluation may take (None: the limits' own
    max_evaluation_seconds). `clock` is injectable so tests decide when time passes.
    """

    __slots__ = (
        "_check_every",
        "_clock",
        "_deadline",
        "_seconds",
        "_slice_end",
        "_until_check",
        "cancelled",
        "cancelled_because",
        "limits",
        "spent",
    )

    def __init__(
        self,
        limits: WorkLimits,
        *,
        seconds: float | None = None,
        clock: Callable[[], float] = time.monotonic,
        check_every: int = CHECK_EVERY,
    ) -> None:
        self.limits = limits
        self._clock = clock
        self._seconds = min(
            limits.max_evaluation_seconds,
            seconds if seconds is not None else limits.max_evaluation_seconds,
        )
        self._deadline = clock() + self._seconds
        self._check_every = check_every
        self._until_check = check_every
        self._slice_end: int | None = None
        self.cancelled = False
        self.cancelled_because = CALLER_CANCELLED
        self.spent = 0

    def remaining(self) -> float:
        """Seconds left (negative once over)."""
        return self._deadline - self._clock()

    def cancel(self, because: str = "") -> None:
        """Stop the work at its next step (from any thread: one flag, read between steps);
        `because` ends the message the work stops with (the caller cancelled, by default)."""
        if because:
            self.cancelled_because = because
        self.cancelled = True

    def spend(self, units: int = 1) -> None:
        """Count work; every `check_every` units, stop if the time is up or the call cancelled."""
        self.spent += units
        if self._slice_end is not None and self.spent > self._slice_end:
            raise _MoveOffLoop
        self._until_check -= units
        if self._until_check <= 0:
            self._until_check = self._check_every
            self.check()

    def on_loop_slice(self, units: int | None) -> None:
        """From now, spending more than `units` moves the work off the loop (None: never)."""
        self._slice_end = None if units is None else self.spent + units

    def check(self) -> None:
        """Raise BudgetExhaustedError now if the call was cancelled or the time is up."""
        if self.cancelled:
            raise BudgetExhaustedError(f"{self.cancelled_because}; the evaluation was stopped")
        if self._clock() >= self._deadline:
            raise BudgetExhaustedError(
                f"the evaluation's time budget ({self._seconds:.3f}s) ran out"
            )


def unbounded() -> Budget:
    """A budget with the default limits and no caller: for callers outside a call (doctests)."""
    return Budget(WorkLimits())


async def run_bounded(work: Callable[[], T], budget: Budget, *, on_loop: bool = True) -> T:
    """Run `work` (which spends from `budget`) without holding the event loop for long.

    It starts on the loop with ON_LOOP_UNITS to spend (most judgings end there, with no thread
    hop); one that needs more starts again in a worker thread (judging is a pure function of its
    inputs, so a restart repeats nothing outside). If the caller is cancelled meanwhile, the
    budget is cancelled and the worker awaited: the cancellation goes on only once it stopped.
    """
    if on_loop:
        budget.on_loop_slice(ON_LOOP_UNITS)
        try:
            return work()
        except _MoveOffLoop:
            pass
        finally:
            budget.on_loop_slice(None)
    loop = asyncio.get_running_loop()
    context = contextvars.copy_context()
    future = loop.run_in_executor(None, partial(context.run, work))
    try:
        return await asyncio.shield(future)
    except asyncio.CancelledError:
        budget.cancel()
        while not future.done():
            try:
                await asyncio.wait((future,))
            except asyncio.CancelledError:  # cancelled again: still wait for the worker
                continue
        if not future.cancelled():
            future.exception()  # its BudgetExhaustedError is expected: not "never retrieved"
        raise


def json_size(value: Any, limit: int, budget: Budget | None = None) -> int:
    """The length of `value` as compact JSON, counted only up to just over `limit`.

    A walk that stops as soon as the count passes the limit, so measuring costs no more than
    the limit allows whatever the value holds (shared references counted each time they occur,
    as json.dumps would write them). Strings count their quotes and escapes of `"` and `\\`;
    other escapes (controls, non-ASCII as \\uXXXX) may make the real text up to 6x longer.
    With a budget, the walk spends one unit per 16 items (it may be long, and on the loop).
    """
    size = walked = 0
    stack: list[Any] = [value]
    while stack:
        item = stack.pop()
        walked += 1
        if budget is not None and not walked % 16:
            budget.spend()
        if isinstance(item, str):
            size += len(item) + 2 + item.count('"') + item.count("\\")
        elif isinstance(item, Mapping):
            size += 2 + len(item)
            if size > limit:
                return size
            for key, child in item.items():
                size += len(key) + 3 if isinstance(key, str) else 8
                stack.append(child)
        elif isinstance(item, list | tuple):
            size += 2 + len(item)
            if size > limit:  # before taking its elements: they cost as many steps
                return size
            stack.extend(item)
        else:
            size += 8 if item is None or isinstance(item, bool | int | float) else 16
        if size > limit:
            return size
    return size


def value_floor(value: Any, budget: Budget | None = None) -> int:
    """The fewest bytes a google.protobuf.Value holding `value` encodes to: two a value (a tag
    and a length or a scalar), and one a character of its text and keys. With a budget, the
    walk spends one unit per 16 items, as `json_size` does.

    >>> value_floor({"a": ["xy", 1, None]})
    13
    """
    size = walked = 0
    stack = [value]
    while stack:
        item = stack.pop()
        size += 2
        walked += 1
        if budget is not None and not walked % 16:
            budget.spend()
        if isinstance(item, str):
            size += len(item)
        elif isinstance(item, Mapping):
            size += sum(len(key) for key in item)
            stack.extend(item.values())
        elif isinstance(item, list | tuple):
            stack.extend(item)
    return size


def dumps_bounded(value: Any, limit: int, what: str, budget: Budget | None = None) -> str:
    """Compact JSON of `value`, refused (LimitExceededError) before it is built if too large."""
    size = json_size(value, limit, budget)
    if size > limit:
        raise LimitExceededError(f"{what} would be larger than {limit} bytes")
    if budget is not None:
        budget.spend(size // BYTES_PER_UNIT)
    text = json.dumps(value, separators=(",", ":"), default=str)
    if len(text) > limit:
        raise LimitExceededError(f"{what} would be larger than {limit} bytes")
    return text
