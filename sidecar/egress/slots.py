"""A counted limit on work in flight whose free slot is taken without a coroutine.

    if not slots.take():          # a slot was free: taken at once (every call but the crowded)
        await slots.wait()        # none: wait for one, first come first served
    try:
        ...
    finally:
        slots.give()              # to the first waiter still waiting, else back to the count

asyncio.Semaphore does the same, but its `acquire` is a coroutine, made and run on every call
even when a slot is free; the pool and the per-upstream limit take one on every attempt.
"""

from __future__ import annotations

import asyncio
from collections import deque


class Slots:
    """At most `limit` holders at once; the others wait in order.

    >>> async def demo() -> list[bool]:
    ...     slots = Slots(1)
    ...     first, second = slots.take(), slots.take()
    ...     waiting = asyncio.ensure_future(slots.wait())
    ...     await asyncio.sleep(0)
    ...     slots.give()  # handed to the waiter, not to the count
    ...     await waiting
    ...     return [first, second, slots.take()]
    >>> asyncio.run(demo())
    [True, False, False]
    """

    __slots__ = ("_free", "_waiting")

    def __init__(self, limit: int) -> None:
        if limit < 1:
            raise ValueError("limit must be at least 1")
        self._free = limit
        self._waiting: deque[asyncio.Future[None]] = deque()

    def take(self) -> bool:
        """Take a free slot; False when none is free or someone waits for one already."""
        if self._free > 0 and not self._waiting:
            self._free -= 1
            return True
        return False

    async def wait(self) -> None:
        """Wait for a slot (after `take` found none); cancelled, the caller holds none."""
        waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiting:  # cancelled while it waited: it holds no slot
                self._waiting.remove(waiter)
            elif not waiter.cancelled():
                self.give()  # handed a slot as it was cancelled: pass it on
            raise
        # `give` handed this slot over without counting it free

    def give(self) -> None:
        """Give a slot back: to the first waiter still waiting, else to the count."""
        while self._waiting:
            waiter = self._waiting.popleft()
            if not waiter.done():
                waiter.set_result(None)
                return
        self._free += 1
