"""sidecar.egress.deadlines: one timer for every exchange's total budget, asyncio.timeout's rule.

Each test runs its own event loop. Deadlines are asserted by what leaves the block (TimeoutError
or CancelledError) and by the order blocks end in, never by how long they took.
"""

from __future__ import annotations

import asyncio

import pytest

from sidecar.egress.deadlines import Deadlines


async def _sleep_within(deadlines: Deadlines, seconds: float, sleep: float) -> str:
    try:
        with deadlines.within(seconds):
            await asyncio.sleep(sleep)
    except TimeoutError:
        return "timeout"
    return "done"


def test_a_block_over_its_time_leaves_with_timeout_error() -> None:
    assert asyncio.run(_sleep_within(Deadlines(), 0.01, 10)) == "timeout"


def test_a_block_within_its_time_leaves_as_it_ends() -> None:
    assert asyncio.run(_sleep_within(Deadlines(), 10, 0)) == "done"


def test_a_caller_that_gives_up_gets_its_cancellation_not_a_timeout() -> None:
    async def main() -> bool:
        deadlines = Deadlines()
        task = asyncio.create_task(_sleep_within(deadlines, 10, 10))
        await asyncio.sleep(0)
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return True
        return False

    assert asyncio.run(main())


def test_a_cancellation_from_outside_stays_one_when_the_time_is_up_too() -> None:
    # The caller cancels in the same loop step as the deadline fires: the caller's
    # cancellation wins (uncancel leaves one request), as with asyncio.timeout.
    async def main() -> str:
        deadlines = Deadlines()
        started = asyncio.Event()

        async def block() -> str:
            with deadlines.within(0.01):
                started.set()
                await asyncio.sleep(10)
            return "done"

        task = asyncio.create_task(block())
        await started.wait()
        deadline = next(iter(deadlines._live))
        deadline.expire()
        task.cancel()
        try:
            await task
        except asyncio.CancelledError:
            return "cancelled"
        except TimeoutError:
            return "timeout"
        return "done"

    assert asyncio.run(main()) == "cancelled"


def test_every_block_ends_at_its_own_deadline_whatever_the_order_they_started_in() -> None:
    # A long one armed first, shorter ones after it (the timer is armed earlier), a block that
    # ends in time among them: each times out (the timer armed again for the next after it
    # fired), the fast one not. The sleeps are far longer than the deadlines: a timer never
    # armed again would leave a block to end as "done".
    async def main() -> list[str]:
        deadlines = Deadlines()
        ended: list[str] = []

        async def run(name: str, seconds: float, sleep: float) -> None:
            ended.append(f"{name}:{await _sleep_within(deadlines, seconds, sleep)}")

        await asyncio.gather(
            run("long", 0.3, 10),
            run("short", 0.05, 10),
            run("fast", 0.02, 0),
            run("middle", 0.15, 10),
        )
        return ended

    assert sorted(asyncio.run(main())) == [
        "fast:done",
        "long:timeout",
        "middle:timeout",
        "short:timeout",
    ]


def test_a_block_that_ended_is_never_cancelled_by_its_timer_later() -> None:
    async def main() -> str:
        deadlines = Deadlines()
        with deadlines.within(0.02):
            pass
        await asyncio.sleep(0.1)  # the timer armed for that block fires meanwhile
        return "not cancelled"

    assert asyncio.run(main()) == "not cancelled"


def test_one_keeper_serves_one_loop_after_another() -> None:
    deadlines = Deadlines()

    assert asyncio.run(_sleep_within(deadlines, 0.01, 10)) == "timeout"
    assert asyncio.run(_sleep_within(deadlines, 10, 0)) == "done"
    assert asyncio.run(_sleep_within(deadlines, 0.01, 10)) == "timeout"


def test_outside_a_task_it_refuses_as_asyncio_timeout_does() -> None:
    with pytest.raises(RuntimeError):
        Deadlines().within(1.0)


def test_a_keeper_that_served_a_loop_still_refuses_outside_a_task() -> None:
    # It asks the loop it last served for the running task first: outside a task, on that
    # loop (a plain callback) or on none, it refuses as asyncio.timeout does.
    deadlines = Deadlines()

    async def from_a_callback() -> None:
        refused = asyncio.get_running_loop().create_future()

        def callback() -> None:
            try:
                deadlines.within(1.0)
            except RuntimeError as error:
                refused.set_result(error)

        asyncio.get_running_loop().call_soon(callback)
        assert isinstance(await refused, RuntimeError)

    assert asyncio.run(_sleep_within(deadlines, 10, 0)) == "done"
    asyncio.run(from_a_callback())
    with pytest.raises(RuntimeError):
        deadlines.within(1.0)
