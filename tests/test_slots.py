"""The counted limit of the pool and of each upstream: a free slot at once, waiters in order,
and no slot lost to a cancelled waiter."""

from __future__ import annotations

import asyncio

import pytest

from sidecar.egress.slots import Slots


def test_free_slots_are_taken_at_once_and_given_back_to_the_count() -> None:
    slots = Slots(2)

    taken = [slots.take(), slots.take(), slots.take()]
    slots.give()

    assert taken == [True, True, False]
    assert slots.take()


def test_waiters_are_served_in_order_and_a_waiter_holds_the_slot_it_was_given() -> None:
    async def scenario() -> list[str]:
        slots = Slots(1)
        assert slots.take()
        served: list[str] = []

        async def waiter(name: str) -> None:
            await slots.wait()
            served.append(name)

        tasks = [asyncio.ensure_future(waiter(name)) for name in ("first", "second")]
        await asyncio.sleep(0)
        slots.give()
        await tasks[0]
        assert not slots.take()  # "first" holds it: nothing went back to the count
        slots.give()
        await tasks[1]
        return served

    assert asyncio.run(scenario()) == ["first", "second"]


def test_a_waiter_cancelled_while_waiting_leaves_the_queue() -> None:
    async def scenario() -> bool:
        slots = Slots(1)
        assert slots.take()
        waiting = asyncio.ensure_future(slots.wait())
        await asyncio.sleep(0)
        waiting.cancel()
        with pytest.raises(asyncio.CancelledError):
            await waiting
        slots.give()
        return slots.take()  # free again: no dead waiter stands in the way

    assert asyncio.run(scenario())


def test_a_slot_handed_to_a_waiter_cancelled_before_it_ran_goes_to_the_next() -> None:
    async def scenario() -> bool:
        slots = Slots(1)
        assert slots.take()
        first = asyncio.ensure_future(slots.wait())
        second = asyncio.ensure_future(slots.wait())
        await asyncio.sleep(0)
        slots.give()  # handed to the first waiter ...
        first.cancel()  # ... which is cancelled before it runs again
        with pytest.raises(asyncio.CancelledError):
            await first
        await asyncio.wait_for(second, 5)  # the slot went on to the second
        return slots.take()

    assert asyncio.run(scenario()) is False  # the second holds the one slot


def test_a_limit_below_one_is_refused() -> None:
    with pytest.raises(ValueError, match="at least 1"):
        Slots(0)
