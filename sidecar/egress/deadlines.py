"""The egress's total time budget per exchange, kept by one timer for every exchange in flight.

    with deadlines.within(seconds):      # as `async with asyncio.timeout(seconds):`
        ...                              # TimeoutError out of the block once the time is up

`asyncio.timeout` arms and disarms a timer of the event loop for every exchange (~4 us a send
under uvloop: a Timeout object, a timer handle started and cancelled). Here the timer is armed
only when an exchange ends before every other one in flight, which is rare: exchanges of one
connector share its timeout and start one after the other, so a new one ends after the timer
already armed, and entering costs a set insertion. When the timer fires, it cancels every
exchange whose time is up and is armed again for the earliest of the others.

What leaves the block is what `asyncio.timeout` lets leave it (the same uncancel rule): the
block's task is cancelled when its time is up, and that cancellation, and no other, comes out
as TimeoutError; a cancellation from elsewhere (the caller gave up) stays a CancelledError.
"""

from __future__ import annotations

import asyncio
import math
from types import TracebackType


class Deadline:
    """One block's deadline (`Deadlines.within`); a synchronous context manager, as entering
    and leaving need no await."""

    __slots__ = ("_cancelling", "_keeper", "_task", "fired", "when")

    def __init__(self, keeper: Deadlines, task: asyncio.Task[object], when: float) -> None:
        self._keeper = keeper
        self._task = task
        self._cancelling = task.cancelling()
        self.when = when
        self.fired = False

    def __enter__(self) -> Deadline:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self._keeper.forget(self)
        # Uncancelled whenever it fired, as asyncio.timeout does, whatever leaves the block.
        uncancelled = self.fired and self._task.uncancel() <= self._cancelling
        if uncancelled and exc_type is asyncio.CancelledError:
            raise TimeoutError from exc

    def expire(self) -> None:
        """The time is up: cancel the block's task (told apart on the way out)."""
        self.fired = True
        self._task.cancel()


class Deadlines:
    """The deadlines of the exchanges in flight on one event loop, and the one timer for the
    earliest of them.

    >>> async def slow() -> str:
    ...     with Deadlines().within(0.01):
    ...         await asyncio.sleep(1)
    ...     return "never"
    >>> asyncio.run(slow())
    Traceback (most recent call last):
    TimeoutError
    """

    def __init__(self) -> None:
        self._live: set[Deadline] = set()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._armed_for = math.inf

    def within(self, seconds: float) -> Deadline:
        """The deadline `seconds` from now of the current task's block (RuntimeError outside a
        task, as asyncio.timeout)."""
        # The loop of the last block, asked for its running task: on Python 3.11 finding the
        # running loop costs a getpid syscall. The egress serves one loop at a time (its
        # connections and semaphores are bound to it), so a loop with a running task is this
        # thread's; a stopped one (a test's earlier loop) has none, and the loop is found anew.
        loop = self._loop
        task = None if loop is None else asyncio.current_task(loop)
        if loop is None or task is None:
            loop = asyncio.get_running_loop()
            task = asyncio.current_task(loop)
            if task is None:
                raise RuntimeError("Deadlines.within() should be used inside a task")
        if loop is not self._loop:  # a new loop (tests): what the old one held cannot fire
            self._live.clear()
            self._loop, self._timer, self._armed_for = loop, None, math.inf
        deadline = Deadline(self, task, loop.time() + seconds)
        self._live.add(deadline)
        if deadline.when < self._armed_for:
            self._arm(loop, deadline.when)
        return deadline

    def forget(self, deadline: Deadline) -> None:
        """The block ended (its timer stays armed: firing for no one only arms it again)."""
        self._live.discard(deadline)

    def _arm(self, loop: asyncio.AbstractEventLoop, when: float) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._timer = loop.call_at(when, self._fire)
        self._armed_for = when

    def _fire(self) -> None:
        loop = self._loop
        assert loop is not None
        # Every deadline the timer was armed for is up (a timer may fire a little before its
        # time by the loop's clock, as asyncio.timeout's own would), and any past by now.
        due = max(self._armed_for, loop.time())
        self._timer, self._armed_for = None, math.inf
        for deadline in [deadline for deadline in self._live if deadline.when <= due]:
            self._live.discard(deadline)
            deadline.expire()
        if self._live:
            self._arm(loop, min(deadline.when for deadline in self._live))
