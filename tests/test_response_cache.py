"""sidecar.egress.cache.ResponseCache over a real Egress and real loopback upstreams that count
their calls (tests/support/upstreams.py).

Time is a `Clock` the test moves, so no test sleeps through a ttl. Concurrency is made
deterministic with a `Gate`: the upstream holds its answer until the test opens it, so "the burst
reached the upstream once" and "the short deadline answered before the call ended" are facts of
order, never of timing.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import replace
from typing import Any, TypeVar

import pytest
from aiohttp import web
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader
from opentelemetry.sdk.trace import TracerProvider

from sidecar.core.model import CacheStatus, Reason
from sidecar.core.model.exchange import (
    CacheOptions,
    HttpResponse,
    OutboundRequest,
    SendError,
    SendOptions,
)
from sidecar.egress import Egress, EgressLimits, ResponseCache
from sidecar.telemetry.instruments import Telemetry
from tests.support.loopback import LOOPBACK_POLICY
from tests.support.upstreams import ORDER_API_KEY, Upstream

T = TypeVar("T")
WAIT_DEADLINE_SECONDS = 10.0  # a deadline for conditions the test waits on, not a measurement
NO_RETRIES = EgressLimits(retries=0)
CACHE = CacheOptions(ttl_seconds=60.0, call_timeout_seconds=5.0, connector_version=1)


class Clock:
    """The cache's clock, moved by the test."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += seconds


class Gate:
    """An upstream route that holds every answer until `open()`; counts what it answered."""

    def __init__(self, upstream: Upstream, path: str, **response: Any) -> None:
        self._opened = threading.Event()
        self.answered = 0
        response.setdefault("json", {"held": True})

        async def held(request: web.Request) -> web.StreamResponse:
            await asyncio.to_thread(self._opened.wait, WAIT_DEADLINE_SECONDS)
            self.answered += 1
            return web.json_response(response["json"], headers=response.get("headers"))

        upstream.route(path, held)

    def open(self) -> None:
        self._opened.set()

    @property
    def is_open(self) -> bool:
        return self._opened.is_set()


class Switch:
    """An upstream route whose status and headers the test changes; the body counts the calls."""

    def __init__(self, upstream: Upstream, path: str) -> None:
        self.status = 200
        self.headers: dict[str, str] = {}
        self.calls = 0

        async def answer(request: web.Request) -> web.StreamResponse:
            self.calls += 1
            return web.json_response({"call": self.calls}, status=self.status, headers=self.headers)

        upstream.route(path, answer)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def gates() -> Iterator[list[Gate]]:
    """Gates made by a test; every one is opened at teardown so no handler is left waiting."""
    made: list[Gate] = []
    yield made
    for gate in made:
        gate.open()


def get(url: str, *headers: tuple[str, str]) -> OutboundRequest:
    return OutboundRequest("GET", url, tuple(headers), None)


def options(timeout: float = 5.0, **cache: Any) -> SendOptions:
    return SendOptions(
        timeout_seconds=timeout,
        max_response_bytes=1024 * 1024,
        connector_id="orders",
        cache=replace(CACHE, **cache),
    )


def with_cache(
    use: Callable[[ResponseCache], Awaitable[T]],
    clock: Clock,
    *,
    max_bytes: int = 1 << 20,
    limits: EgressLimits = NO_RETRIES,
    telemetry: Telemetry | None = None,
) -> T:
    """Run `use` with a ResponseCache over a fresh Egress in a fresh loop; both are closed."""

    async def main() -> T:
        egress = Egress(LOOPBACK_POLICY, limits)
        cache = ResponseCache(egress.send, max_bytes=max_bytes, clock=clock, telemetry=telemetry)
        try:
            return await use(cache)
        finally:
            await cache.aclose()
            await egress.aclose()

    return asyncio.run(main())


async def until(condition: Callable[[], bool]) -> None:
    """Wait (yielding to the loop) until `condition` holds; fail after a generous deadline."""
    deadline = time.monotonic() + WAIT_DEADLINE_SECONDS
    while not condition():
        assert time.monotonic() < deadline, "the condition never held"
        await asyncio.sleep(0.01)


def body_of(response: HttpResponse) -> Any:
    return json.loads(response.body)


# ---------------------------------------------------------------------------------------------
# Hits, misses and what is stored
# ---------------------------------------------------------------------------------------------


def test_a_connector_without_cache_sends_every_call(upstream: Upstream, clock: Clock) -> None:
    async def use(cache: ResponseCache) -> list[HttpResponse]:
        plain = SendOptions(timeout_seconds=5.0, max_response_bytes=1 << 20)
        return [await cache.send(get(upstream.url("/json")), plain) for _ in range(2)]

    responses = with_cache(use, clock)
    assert [r.cache_status for r in responses] == [None, None]
    assert upstream.hits("/json") == 2


def test_a_repeat_within_ttl_is_a_hit_that_sends_nothing(upstream: Upstream, clock: Clock) -> None:
    async def use(cache: ResponseCache) -> list[HttpResponse]:
        first = await cache.send(get(upstream.url("/json")), options())
        clock.advance(59)
        return [first, await cache.send(get(upstream.url("/json")), options())]

    miss, hit = with_cache(use, clock)
    assert (miss.cache_status, miss.attempts, miss.cache_age_seconds) == (CacheStatus.MISS, 1, 0)
    assert (hit.cache_status, hit.attempts, hit.cache_age_seconds) == (CacheStatus.HIT, 0, 59)
    assert hit.body == miss.body
    assert upstream.hits("/json") == 1


def test_after_ttl_without_stale_windows_the_upstream_is_called_again(
    upstream: Upstream, clock: Clock
) -> None:
    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        statuses = [(await cache.send(get(upstream.url("/json")), options())).cache_status]
        clock.advance(60)
        statuses.append((await cache.send(get(upstream.url("/json")), options())).cache_status)
        return statuses

    assert with_cache(use, clock) == [CacheStatus.MISS, CacheStatus.MISS]
    assert upstream.hits("/json") == 2


@pytest.mark.parametrize(
    "headers",
    [
        {"Cache-Control": "no-store"},
        {"Cache-Control": "no-cache"},
        {"Cache-Control": "private, max-age=600"},
        {"Vary": "*"},
    ],
)
def test_an_upstream_that_forbids_storing_is_called_every_time(
    upstream: Upstream, clock: Clock, headers: dict[str, str]
) -> None:
    upstream.respond("/lookup", json={"stock": 3}, headers=headers)

    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        return [
            (await cache.send(get(upstream.url("/lookup")), options())).cache_status
            for _ in range(3)
        ]

    assert with_cache(use, clock) == [CacheStatus.MISS] * 3
    assert upstream.hits("/lookup") == 3


def test_ignore_cache_control_stores_what_the_upstream_forbids(
    upstream: Upstream, clock: Clock
) -> None:
    upstream.respond("/lookup", json={"stock": 3}, headers={"Cache-Control": "no-store"})

    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        forced = options(ignore_cache_control=True)
        return [(await cache.send(get(upstream.url("/lookup")), forced)).cache_status for _ in "ab"]

    assert with_cache(use, clock) == [CacheStatus.MISS, CacheStatus.HIT]
    assert upstream.hits("/lookup") == 1


def test_upstream_max_age_and_age_shorten_the_ttl(upstream: Upstream, clock: Clock) -> None:
    upstream.respond("/lookup", json={}, headers={"Cache-Control": "max-age=10", "Age": "4"})

    async def use(cache: ResponseCache) -> list[tuple[CacheStatus | None, float]]:
        seen = []
        for step in (0, 5, 1):  # fresh for 10 - 4 = 6 seconds
            clock.advance(step)
            response = await cache.send(get(upstream.url("/lookup")), options())
            seen.append((response.cache_status, response.cache_age_seconds))
        return seen

    assert with_cache(use, clock) == [
        (CacheStatus.MISS, 0),
        (CacheStatus.HIT, 9),
        (CacheStatus.MISS, 0),
    ]


@pytest.mark.parametrize("status", [500, 503, 401, 429])
def test_errors_and_refusals_are_not_stored(upstream: Upstream, clock: Clock, status: int) -> None:
    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        url = upstream.url(f"/status/{status}")
        return [(await cache.send(get(url), options())).cache_status for _ in "ab"]

    assert with_cache(use, clock) == [CacheStatus.MISS, CacheStatus.MISS]
    assert upstream.hits("/status/") == 2


def test_a_not_found_answer_is_stored(upstream: Upstream, clock: Clock) -> None:
    async def use(cache: ResponseCache) -> list[tuple[int, CacheStatus | None]]:
        url = upstream.url("/orders/NOPE")
        key = ("X-API-Key", ORDER_API_KEY)
        return [
            ((r := await cache.send(get(url, key), options())).status, r.cache_status) for _ in "ab"
        ]

    assert with_cache(use, clock) == [(404, CacheStatus.MISS), (404, CacheStatus.HIT)]


def test_each_credential_and_each_connector_version_has_its_own_entries(
    upstream: Upstream, clock: Clock
) -> None:
    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        url = upstream.url("/json")
        calls = [
            (get(url, ("Authorization", "Bearer one")), options()),
            (get(url, ("Authorization", "Bearer two")), options()),
            (get(url, ("Authorization", "Bearer one")), options(connector_version=2)),
            (get(url, ("Authorization", "Bearer one")), options()),
        ]
        return [(await cache.send(request, opts)).cache_status for request, opts in calls]

    statuses = with_cache(use, clock)
    assert statuses == [CacheStatus.MISS, CacheStatus.MISS, CacheStatus.MISS, CacheStatus.HIT]
    assert upstream.hits("/json") == 3


def test_the_key_holds_no_secret(clock: Clock) -> None:
    async def send(request: OutboundRequest, options: SendOptions) -> HttpResponse:
        raise AssertionError("never called")

    cache = ResponseCache(send, max_bytes=1 << 20, clock=clock)
    secret = "sk-live-5bd1c0ffee"
    request = get(f"http://127.0.0.1/q?api_key={secret}", ("Authorization", f"Bearer {secret}"))
    key = cache.key(request, options())
    assert secret.encode() not in key
    assert len(key) == 20
    other = get(
        "http://127.0.0.1/q?api_key=sk-live-other", ("Authorization", "Bearer sk-live-other")
    )
    assert cache.key(other, options()) != key
    # Keyed per process: the same request has another key in another process (cache).
    assert ResponseCache(send, max_bytes=1, clock=clock).key(request, options()) != key


# ---------------------------------------------------------------------------------------------
# Bounded in bytes
# ---------------------------------------------------------------------------------------------


def test_the_least_recently_used_entry_is_evicted_when_the_bytes_run_out(
    upstream: Upstream, clock: Clock
) -> None:
    for name in "abc":
        upstream.respond(f"/{name}", body=b"x" * 1000)

    async def use(cache: ResponseCache) -> tuple[list[CacheStatus | None], int]:
        for name in "ab":
            await cache.send(get(upstream.url(f"/{name}")), options())
        await cache.send(get(upstream.url("/a")), options())  # a is now the most recent
        await cache.send(get(upstream.url("/c")), options())  # no room for three: b goes
        statuses = [
            (await cache.send(get(upstream.url(f"/{name}")), options())).cache_status
            for name in "acb"
        ]
        return statuses, cache.size_bytes

    statuses, held = with_cache(use, clock, max_bytes=2 * 1500)
    assert statuses == [CacheStatus.HIT, CacheStatus.HIT, CacheStatus.MISS]
    assert held <= 2 * 1500
    assert upstream.hits("/b") == 2
    assert upstream.hits("/a") == 1


def test_a_response_over_max_entry_bytes_is_not_stored(upstream: Upstream, clock: Clock) -> None:
    upstream.respond("/big", body=b"x" * 5000)

    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        small = options(max_entry_bytes=4096)
        return [(await cache.send(get(upstream.url("/big")), small)).cache_status for _ in "ab"]

    assert with_cache(use, clock) == [CacheStatus.MISS, CacheStatus.MISS]


def test_a_cache_of_zero_bytes_bypasses(upstream: Upstream, clock: Clock) -> None:
    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        return [
            (await cache.send(get(upstream.url("/json")), options())).cache_status for _ in "ab"
        ]

    assert with_cache(use, clock, max_bytes=0) == [CacheStatus.BYPASS, CacheStatus.BYPASS]
    assert upstream.hits("/json") == 2


# ---------------------------------------------------------------------------------------------
# Coalescing
# ---------------------------------------------------------------------------------------------


def test_a_burst_of_50_identical_calls_reaches_the_upstream_once(
    upstream: Upstream, clock: Clock, gates: list[Gate]
) -> None:
    gate = Gate(upstream, "/stock")
    gates.append(gate)

    async def use(cache: ResponseCache) -> list[HttpResponse]:
        calls = [
            asyncio.ensure_future(cache.send(get(upstream.url("/stock")), options()))
            for _ in range(50)
        ]
        await until(lambda: upstream.hits("/stock") == 1)
        gate.open()
        return await asyncio.gather(*calls)

    responses = with_cache(use, clock)
    statuses = [r.cache_status for r in responses]
    assert statuses.count(CacheStatus.MISS) == 1
    assert statuses.count(CacheStatus.COALESCED) == 49
    assert {r.status for r in responses} == {200}
    assert upstream.hits("/stock") == 1
    assert gate.answered == 1


def test_a_short_deadline_waiter_answers_in_time_and_the_call_goes_on(
    upstream: Upstream, clock: Clock, gates: list[Gate]
) -> None:
    gate = Gate(upstream, "/stock")
    gates.append(gate)

    async def use(cache: ResponseCache) -> tuple[SendError, bool, HttpResponse, HttpResponse]:
        patient = asyncio.ensure_future(cache.send(get(upstream.url("/stock")), options()))
        await until(lambda: upstream.hits("/stock") == 1)
        with pytest.raises(SendError) as hurried:
            await cache.send(get(upstream.url("/stock")), options(timeout=0.2))
        answered_while_held = not gate.is_open
        gate.open()
        first = await patient
        return (
            hurried.value,
            answered_while_held,
            first,
            await cache.send(get(upstream.url("/stock")), options()),
        )

    failure, answered_while_held, first, later = with_cache(use, clock)
    assert failure.reason is Reason.TIMEOUT
    assert answered_while_held
    assert first.cache_status is CacheStatus.MISS
    assert first.status == 200
    assert later.cache_status is CacheStatus.HIT
    assert upstream.hits("/stock") == 1


def test_a_call_whose_callers_all_left_still_fills_the_cache(
    upstream: Upstream, clock: Clock, gates: list[Gate]
) -> None:
    gate = Gate(upstream, "/stock")
    gates.append(gate)

    async def use(cache: ResponseCache) -> CacheStatus | None:
        with pytest.raises(SendError):
            await cache.send(get(upstream.url("/stock")), options(timeout=0.2))
        gate.open()
        await until(lambda: len(cache) == 1)
        return (await cache.send(get(upstream.url("/stock")), options())).cache_status

    assert with_cache(use, clock) is CacheStatus.HIT
    assert upstream.hits("/stock") == 1


def test_a_shared_failure_reaches_every_waiter_as_its_own_error(clock: Clock) -> None:
    calls = 0

    async def send(request: OutboundRequest, options: SendOptions) -> HttpResponse:
        nonlocal calls
        calls += 1
        await asyncio.sleep(0)
        raise SendError(Reason.CONNECT_ERROR, "refused")

    async def main() -> list[BaseException | HttpResponse]:
        cache = ResponseCache(send, max_bytes=1 << 20, clock=clock)
        burst = [cache.send(get("http://127.0.0.1/x"), options()) for _ in range(5)]
        return await asyncio.gather(*burst, return_exceptions=True)

    outcomes = asyncio.run(main())
    assert all(isinstance(o, SendError) and o.reason is Reason.CONNECT_ERROR for o in outcomes)
    assert len({id(o) for o in outcomes}) == 5  # a copy each
    assert calls == 1


# ---------------------------------------------------------------------------------------------
# Stale while revalidate, stale if error
# ---------------------------------------------------------------------------------------------


def test_stale_while_revalidate_answers_at_once_and_refreshes_once(
    upstream: Upstream, clock: Clock
) -> None:
    switch = Switch(upstream, "/stock")
    swr = options(stale_while_revalidate_seconds=60)

    async def use(cache: ResponseCache) -> tuple[list[HttpResponse], HttpResponse]:
        await cache.send(get(upstream.url("/stock")), swr)
        clock.advance(90)
        stale = [await cache.send(get(upstream.url("/stock")), swr) for _ in range(3)]
        await until(lambda: switch.calls == 2 and cache.key(get(upstream.url("/stock")), swr)
                    not in cache._flights)  # fmt: skip
        return stale, await cache.send(get(upstream.url("/stock")), swr)

    stale, refreshed = with_cache(use, clock)
    assert [(r.cache_status, r.cache_age_seconds, body_of(r)) for r in stale] == [
        (CacheStatus.STALE, 90, {"call": 1})
    ] * 3
    assert (refreshed.cache_status, body_of(refreshed)) == (CacheStatus.HIT, {"call": 2})
    assert switch.calls == 2  # three stale answers, one refresh


def test_a_failed_refresh_keeps_serving_stale(upstream: Upstream, clock: Clock) -> None:
    switch = Switch(upstream, "/stock")
    swr = options(stale_while_revalidate_seconds=60)

    async def use(cache: ResponseCache) -> HttpResponse:
        await cache.send(get(upstream.url("/stock")), swr)
        switch.status = 503
        clock.advance(70)
        await cache.send(get(upstream.url("/stock")), swr)
        await until(lambda: switch.calls == 2 and not cache._flights)
        clock.advance(10)
        return await cache.send(get(upstream.url("/stock")), swr)

    again = with_cache(use, clock)
    assert (again.cache_status, body_of(again)) == (CacheStatus.STALE, {"call": 1})


def test_stale_if_error_on_a_5xx(upstream: Upstream, clock: Clock) -> None:
    switch = Switch(upstream, "/stock")
    sie = options(stale_if_error_seconds=300)

    async def use(cache: ResponseCache) -> list[HttpResponse]:
        await cache.send(get(upstream.url("/stock")), sie)
        switch.status = 503
        clock.advance(90)
        within = await cache.send(get(upstream.url("/stock")), sie)
        clock.advance(300)
        return [within, await cache.send(get(upstream.url("/stock")), sie)]

    within, beyond = with_cache(use, clock)
    assert (within.cache_status, within.status, within.cache_age_seconds) == (
        CacheStatus.STALE_IF_ERROR,
        200,
        90,
    )
    assert body_of(within) == {"call": 1}
    assert (beyond.cache_status, beyond.status) == (CacheStatus.MISS, 503)


def test_stale_if_error_on_a_timeout(upstream: Upstream, clock: Clock, gates: list[Gate]) -> None:
    upstream.respond("/stock", json={"stock": 3})
    sie = options(stale_if_error_seconds=300, call_timeout_seconds=0.3)

    async def use(cache: ResponseCache) -> HttpResponse:
        await cache.send(get(upstream.url("/stock")), sie)
        gates.append(Gate(upstream, "/stock"))  # from now on the upstream holds its answers
        clock.advance(90)
        return await cache.send(get(upstream.url("/stock")), replace(sie, timeout_seconds=0.3))

    stale = with_cache(use, clock)
    assert (stale.cache_status, body_of(stale)) == (CacheStatus.STALE_IF_ERROR, {"stock": 3})


def test_stale_if_error_when_the_breaker_is_open(upstream: Upstream, clock: Clock) -> None:
    switch = Switch(upstream, "/stock")
    sie = options(stale_if_error_seconds=300)
    limits = EgressLimits(retries=0, breaker_failure_threshold=1, breaker_cooldown_seconds=60)

    async def use(cache: ResponseCache) -> list[CacheStatus | None]:
        await cache.send(get(upstream.url("/stock")), sie)
        switch.status = 503
        clock.advance(90)
        # The 503 opens the breaker (threshold 1); the next call is refused before it is sent.
        return [(await cache.send(get(upstream.url("/stock")), sie)).cache_status for _ in "ab"]

    statuses = with_cache(use, clock, limits=limits)
    assert statuses == [CacheStatus.STALE_IF_ERROR, CacheStatus.STALE_IF_ERROR]
    assert switch.calls == 2  # the breaker kept the last call from the upstream


def test_a_refused_destination_is_never_covered_by_a_stale_entry(clock: Clock) -> None:
    calls = 0

    async def send(request: OutboundRequest, options: SendOptions) -> HttpResponse:
        nonlocal calls
        calls += 1
        if calls == 1:
            return HttpResponse(200, {}, b"{}")
        raise SendError(Reason.BLOCKED_DESTINATION, "refused", attempts=0)

    async def main() -> None:
        cache = ResponseCache(send, max_bytes=1 << 20, clock=clock)
        sie = options(stale_if_error_seconds=300)
        await cache.send(get("http://127.0.0.1/x"), sie)
        clock.advance(90)
        with pytest.raises(SendError) as refused:
            await cache.send(get("http://127.0.0.1/x"), sie)
        assert refused.value.reason is Reason.BLOCKED_DESTINATION

    asyncio.run(main())


# ---------------------------------------------------------------------------------------------
# Telemetry and shutdown
# ---------------------------------------------------------------------------------------------


def test_lookups_are_counted_by_status(upstream: Upstream, clock: Clock) -> None:
    reader = InMemoryMetricReader()
    telemetry = Telemetry(TracerProvider(), MeterProvider([reader]))

    async def use(cache: ResponseCache) -> None:
        for _ in range(3):
            await cache.send(get(upstream.url("/json")), options())

    with_cache(use, clock, telemetry=telemetry)
    data = reader.get_metrics_data()
    assert data is not None
    points: dict[Any, Any] = {
        dict(point.attributes or {})["rules_sidecar.cache.status"]: getattr(point, "value", None)
        for resource in data.resource_metrics
        for scope in resource.scope_metrics
        for metric in scope.metrics
        if metric.name == "rules_sidecar.response_cache.lookups"
        for point in metric.data.data_points
    }
    assert points == {"MISS": 1, "HIT": 2}


def test_aclose_cancels_a_call_still_running(
    upstream: Upstream, clock: Clock, gates: list[Gate]
) -> None:
    gates.append(Gate(upstream, "/stock"))

    async def main() -> bool:
        egress = Egress(LOOPBACK_POLICY, NO_RETRIES)
        cache = ResponseCache(egress.send, max_bytes=1 << 20, clock=clock)
        with pytest.raises(SendError):
            await cache.send(get(upstream.url("/stock")), options(timeout=0.1))
        flights = list(cache._flights.values())
        await cache.aclose()
        await egress.aclose()
        return all(flight.cancelled() for flight in flights) and len(flights) == 1

    assert asyncio.run(main())
