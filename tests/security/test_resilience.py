"""Retries, circuit breakers, concurrency limits, deadlines and admission, with counted hits.

Everything goes through the real EvaluateNode RPC of an in-process sidecar (egress with the
recording connector) against loopback upstreams whose hits are counted server-side. No
assertion is on elapsed time: concurrency is held open by gates the test releases (counted
events), and the deadline test reads the budget the sidecar derived from the caller's deadline.
Durations are printed, never asserted; the only sleeps wait past a breaker's cool-down.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

import grpc
import pytest
import stamina.instrumentation
from aiohttp import web

from sidecar.core.model import Reason
from sidecar.core.model.exchange import OutboundRequest, SendError, SendOptions
from sidecar.egress import EgressLimits
from tests.support.calls import RPC_TIMEOUT, error, evaluate, evaluate_request, register, verdict
from tests.support.loopback import HOST, LOOPBACK_POLICY
from tests.support.network import Network, recording_egress
from tests.support.raw_servers import (
    RawServer,
    RawServers,
    answering,
    http_response,
    read_request,
    silent,
)
from tests.support.sidecars import InProcessSidecar
from tests.support.upstreams import Upstream, closed_port

MATCHED = ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
POLL_SECONDS = 0.05
POLL_LIMIT_SECONDS = 10.0


def statuses(*codes: int) -> Callable[[web.Request], Any]:
    """An aiohttp handler answering `codes` in turn, then 200."""
    remaining = list(codes)

    async def handler(request: web.Request) -> web.StreamResponse:
        code = remaining.pop(0) if remaining else 200
        return web.json_response({"status": code}, status=code)

    return handler


def wait_until(condition: Callable[[], bool], what: str) -> None:
    """Poll `condition` (bounded): the test fails, not hangs, if it never holds."""
    deadline = time.monotonic() + POLL_LIMIT_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting until {what}")
        time.sleep(POLL_SECONDS)


@pytest.fixture
def retry_waits() -> Iterator[list[float]]:
    """The waits stamina scheduled before each retry (its instrumentation hook)."""
    waits: list[float] = []
    saved = stamina.instrumentation.get_on_retry_hooks()
    stamina.instrumentation.set_on_retry_hooks(
        [*saved, lambda details: waits.append(details.wait_for)]
    )
    yield waits
    stamina.instrumentation.set_on_retry_hooks(saved)


@pytest.fixture
def other_upstream() -> Iterator[Upstream]:
    """A second upstream: another origin (same host, another port)."""
    server = Upstream()
    yield server
    server.close()


# ---------------------------------------------------------------------------------------------
# Retries: only where safe, at most 2
# ---------------------------------------------------------------------------------------------


def test_get_503_then_200_is_retried_once_and_matches(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    upstream.route("/flaky", statuses(503))
    register(sidecar.stub, "flaky", upstream.url("/flaky"))

    response = evaluate(sidecar.stub, "flaky")

    assert verdict(response) == MATCHED
    assert (response.http_status, response.attempts) == (200, 2)
    assert upstream.hits("/flaky") == 2


def test_post_503_without_an_idempotency_key_is_not_retried(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    upstream.route("/create", statuses(503))
    register(sidecar.stub, "create", upstream.url("/create"), method="HTTP_METHOD_POST")

    response = evaluate(sidecar.stub, "create")

    assert verdict(response) == error("UPSTREAM_ERROR")
    assert (response.http_status, response.attempts) == (503, 1)
    assert upstream.hits("/create") == 1


def test_post_503_with_an_idempotency_key_is_retried_with_the_same_key(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    upstream.route("/create", statuses(503))
    register(
        sidecar.stub,
        "create",
        upstream.url("/create"),
        method="HTTP_METHOD_POST",
        headers={"Idempotency-Key": "{{conversation_id}}"},
        idempotency_key_header="Idempotency-Key",
        body_template={"order": "{{order_number}}"},
    )

    response = evaluate(sidecar.stub, "create", {"conversation_id": "c-42", "order_number": "A-1"})

    assert verdict(response) == MATCHED
    assert (response.http_status, response.attempts) == (200, 2)
    assert upstream.hits("/create") == 2
    keys = [r.header("Idempotency-Key") for r in upstream.requests if r.path == "/create"]
    assert keys == ["c-42", "c-42"]


def test_retries_stop_after_two_so_an_upstream_sees_at_most_three_hits(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    register(sidecar.stub, "down", upstream.url("/status/503"))

    response = evaluate(sidecar.stub, "down")

    assert verdict(response) == error("UPSTREAM_ERROR")
    assert (response.http_status, response.attempts) == (503, 3)
    assert upstream.hits("/status/503") == 3


@pytest.mark.parametrize("method", ["HTTP_METHOD_GET", "HTTP_METHOD_POST"])
def test_refused_connection_is_retried_whatever_the_method(
    sidecar_factory: Callable[..., InProcessSidecar], network: Network, method: str
) -> None:
    # Nothing was established, so nothing can have happened twice: POST is retried too.
    sidecar = sidecar_factory()
    port = closed_port()
    register(sidecar.stub, "refused", f"http://{HOST}:{port}/orders", method=method)

    response = evaluate(sidecar.stub, "refused")

    assert verdict(response) == error("CONNECT_ERROR")
    assert network.connections == [(HOST, port)] * 3
    assert response.attempts == 3


def test_429_retry_after_within_the_budget_is_honoured(
    sidecar_factory: Callable[..., InProcessSidecar],
    upstream: Upstream,
    retry_waits: list[float],
) -> None:
    sidecar = sidecar_factory()
    answered = 0

    async def limited(request: web.Request) -> web.StreamResponse:
        nonlocal answered
        answered += 1
        if answered == 1:
            return web.json_response({}, status=429, headers={"Retry-After": "1"})
        return web.json_response({"ok": True})

    upstream.route("/limited", limited)
    register(sidecar.stub, "limited", upstream.url("/limited"))
    started = time.monotonic()

    response = evaluate(sidecar.stub, "limited")

    print(f"answered after {time.monotonic() - started:.2f}s; stamina waits {retry_waits}")
    assert verdict(response) == MATCHED
    assert (response.http_status, response.attempts) == (200, 2)
    assert upstream.hits("/limited") == 2
    assert retry_waits == [1.0]  # the wait scheduled was the upstream's Retry-After


def test_429_retry_after_beyond_the_budget_is_not_retried(
    sidecar_factory: Callable[..., InProcessSidecar],
    upstream: Upstream,
    retry_waits: list[float],
) -> None:
    sidecar = sidecar_factory()
    upstream.respond("/limited", status=429, json={}, headers={"Retry-After": "60"})
    register(sidecar.stub, "limited", upstream.url("/limited"), timeout="2s")

    response = evaluate(sidecar.stub, "limited")

    assert verdict(response) == ("OUTCOME_NO_MATCH", "REASON_NO_BRANCH_MATCHED")
    assert (response.http_status, response.attempts) == (429, 1)
    assert upstream.hits("/limited") == 1
    assert retry_waits == []


# ---------------------------------------------------------------------------------------------
# Circuit breaker
# ---------------------------------------------------------------------------------------------

BREAKER = {"retries": 0, "breaker_failure_threshold": 3, "breaker_cooldown_seconds": 0.5}


def test_breaker_opens_after_consecutive_failures_and_closes_after_one_probe(
    sidecar_factory: Callable[..., InProcessSidecar],
    upstream: Upstream,
    other_upstream: Upstream,
) -> None:
    sidecar = sidecar_factory(**BREAKER)
    healthy = False
    probe_may_answer = threading.Event()

    async def crm(request: web.Request) -> web.StreamResponse:
        if healthy:
            # The probe is held until the other calls have found it busy (the test opens it).
            await asyncio.to_thread(probe_may_answer.wait, POLL_LIMIT_SECONDS)
            return web.json_response({"ok": True})
        return web.json_response({"down": True}, status=500)

    upstream.route("/crm", crm)
    register(sidecar.stub, "crm", upstream.url("/crm"))
    register(sidecar.stub, "other", other_upstream.url("/json"))

    failing = [verdict(evaluate(sidecar.stub, "crm")) for _ in range(3)]
    assert failing == [error("UPSTREAM_ERROR")] * 3
    assert upstream.hits("/crm") == 3

    started = time.monotonic()
    opened = evaluate(sidecar.stub, "crm")
    print(f"CIRCUIT_OPEN answered in {(time.monotonic() - started) * 1000:.1f} ms")
    assert verdict(opened) == error("CIRCUIT_OPEN")
    assert opened.http_status == 0
    assert upstream.hits("/crm") == 3
    assert verdict(evaluate(sidecar.stub, "other")) == MATCHED  # another upstream: unaffected

    healthy = True
    time.sleep(0.6)  # past the 0.5 s cool-down: half-open
    probes = [
        sidecar.stub.EvaluateNode.future(evaluate_request("crm"), timeout=RPC_TIMEOUT)
        for _ in range(3)
    ]
    wait_until(lambda: sum(future.done() for future in probes) == 2, "two calls were refused")
    probe_may_answer.set()
    answers = sorted(verdict(future.result()) for future in probes)

    assert answers == sorted([MATCHED, error("CIRCUIT_OPEN"), error("CIRCUIT_OPEN")])
    assert upstream.hits("/crm") == 4  # exactly one probe went through
    assert verdict(evaluate(sidecar.stub, "crm")) == MATCHED  # the probe's success closed it
    assert upstream.hits("/crm") == 5


def test_breaker_counts_connect_errors_and_timeouts_too(
    sidecar_factory: Callable[..., InProcessSidecar],
    raw_servers: RawServers,
    network: Network,
) -> None:
    sidecar = sidecar_factory(**BREAKER)
    quiet = raw_servers.serve(silent)
    refused_port = closed_port()
    register(sidecar.stub, "quiet", quiet.url("/"), timeout="0.2s")
    register(sidecar.stub, "refused", f"http://{HOST}:{refused_port}/")

    quiet_reasons = [verdict(evaluate(sidecar.stub, "quiet"))[1] for _ in range(4)]
    refused_reasons = [verdict(evaluate(sidecar.stub, "refused"))[1] for _ in range(4)]

    assert quiet_reasons == ["REASON_TIMEOUT"] * 3 + ["REASON_CIRCUIT_OPEN"]
    assert refused_reasons == ["REASON_CONNECT_ERROR"] * 3 + ["REASON_CIRCUIT_OPEN"]
    assert len(quiet.requests) == 3
    assert network.connections.count((HOST, refused_port)) == 3


def test_callers_who_give_up_do_not_open_the_breaker(
    network: Network, raw_servers: RawServers
) -> None:
    served = 0
    arrived = threading.Semaphore(0)

    async def slow_then_fast(server: RawServer, reader: Any, writer: Any) -> None:
        nonlocal served
        served += 1
        if served > 2:
            await answering(http_response(200, b"{}"))(server, reader, writer)
            return
        server.requests.append((await read_request(reader))[0])
        arrived.release()
        await asyncio.sleep(30)  # never answers; cancelled when the servers stop

    server = raw_servers.serve(slow_then_fast)
    limits = EgressLimits(retries=0, breaker_failure_threshold=2, breaker_cooldown_seconds=60)
    request = OutboundRequest("GET", server.url("/"), (), None)
    options = SendOptions(timeout_seconds=5.0, max_response_bytes=1024)

    async def main() -> int | Reason:
        async with recording_egress(network, LOOPBACK_POLICY, limits) as egress:
            for _ in range(2):
                call = asyncio.ensure_future(egress.send(request, options))
                assert await asyncio.to_thread(arrived.acquire, True, POLL_LIMIT_SECONDS)
                call.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await call
            try:
                return (await egress.send(request, options)).status
            except SendError as failure:
                return failure.reason

    assert asyncio.run(main()) == 200


def test_a_probe_that_meets_a_garbage_answer_does_not_wedge_the_breaker(
    network: Network, raw_servers: RawServers
) -> None:
    # A half-open probe must end in success or failure, whatever the upstream answers: a
    # probe that ends in neither would leave the breaker refusing every call for good.
    server = raw_servers.serve(
        answering(
            http_response(503, b"{}"),
            b"SSH-2.0-OpenSSH_9.6\r\n\r\n",
            http_response(200, b"{}"),
        )
    )
    limits = EgressLimits(retries=0, breaker_failure_threshold=1, breaker_cooldown_seconds=0.2)
    request = OutboundRequest("GET", server.url("/"), (), None)
    options = SendOptions(timeout_seconds=2.0, max_response_bytes=1024)

    async def main() -> list[Any]:
        results: list[Any] = []
        async with recording_egress(network, LOOPBACK_POLICY, limits) as egress:
            for _ in range(3):  # 503 opens; the probe meets garbage; the next probe: 200
                try:
                    results.append((await egress.send(request, options)).status)
                except SendError as failure:
                    results.append(failure.reason)
                except Exception as unexpected:
                    results.append(type(unexpected).__name__)
                await asyncio.sleep(0.3)  # past the cool-down
        return results

    results = asyncio.run(main())

    assert results == [503, Reason.PROTOCOL_ERROR, 200]


@pytest.mark.parametrize("refusal", ["circuit-open", "blocked-at-resolution"])
def test_answers_that_sent_nothing_report_zero_attempts(
    sidecar_factory: Callable[..., InProcessSidecar],
    upstream: Upstream,
    network: Network,
    refusal: str,
) -> None:
    sidecar = sidecar_factory(**BREAKER)
    network.dns["meta.example.test"] = ["169.254.169.254"]
    if refusal == "circuit-open":
        register(sidecar.stub, "down", upstream.url("/status/500"))
        for _ in range(3):
            evaluate(sidecar.stub, "down")
    else:
        register(sidecar.stub, "down", "https://meta.example.test/")

    response = evaluate(sidecar.stub, "down")

    expected = "CIRCUIT_OPEN" if refusal == "circuit-open" else "BLOCKED_DESTINATION"
    assert verdict(response) == error(expected)
    assert network.non_loopback_attempts() == []
    assert response.attempts == 0


# ---------------------------------------------------------------------------------------------
# Per-upstream concurrency limit
# ---------------------------------------------------------------------------------------------


def test_per_upstream_limit_bounds_concurrent_requests_and_leaves_others_alone(
    sidecar_factory: Callable[..., InProcessSidecar],
    upstream: Upstream,
    other_upstream: Upstream,
) -> None:
    sidecar = sidecar_factory(per_upstream_concurrency=2)
    in_flight = peak = 0
    slow_may_answer = threading.Event()

    async def slow(request: web.Request) -> web.StreamResponse:
        nonlocal in_flight, peak
        in_flight += 1
        peak = max(peak, in_flight)
        try:
            # Held until the test has seen both slots taken (it opens the gate).
            await asyncio.to_thread(slow_may_answer.wait, POLL_LIMIT_SECONDS)
            return web.json_response({"ok": True})
        finally:
            in_flight -= 1

    upstream.route("/slow-api", slow)
    register(sidecar.stub, "slow", upstream.url("/slow-api"))
    register(sidecar.stub, "other", other_upstream.url("/json"))

    calls = [
        sidecar.stub.EvaluateNode.future(evaluate_request("slow"), timeout=RPC_TIMEOUT)
        for _ in range(6)
    ]
    wait_until(lambda: upstream.hits("/slow-api") == 2, "both slots at the slow upstream are taken")
    other = evaluate(sidecar.stub, "other")
    held = upstream.hits("/slow-api")  # the other four calls wait for a slot meanwhile
    slow_may_answer.set()
    slow_answers = [verdict(call.result()) for call in calls]

    assert verdict(other) == MATCHED
    assert held == 2
    assert slow_answers == [MATCHED] * 6
    assert upstream.hits("/slow-api") == 6
    assert peak == 2
    print(
        f"peak concurrent requests at the slow upstream: {peak}; connections {upstream.connections}"
    )
    assert upstream.connections <= 2


# ---------------------------------------------------------------------------------------------
# The caller's deadline, and the admission limit
# ---------------------------------------------------------------------------------------------

DEADLINE_SECONDS = 2.0  # the budget keeps 200 ms of it back: room for a loaded machine


@pytest.mark.parametrize("run", range(5))
def test_rpc_deadline_is_the_budget_and_the_answer_arrives_before_it(
    sidecar_factory: Callable[..., InProcessSidecar], raw_servers: RawServers, run: int
) -> None:
    sidecar = sidecar_factory()
    quiet = raw_servers.serve(silent)
    register(sidecar.stub, "quiet", quiet.url("/"), timeout="5s")
    request = evaluate_request("quiet")

    started = time.monotonic()
    response = sidecar.stub.EvaluateNode(request, timeout=DEADLINE_SECONDS)
    elapsed = time.monotonic() - started

    print(f"run {run}: answered after {elapsed * 1000:.1f} ms (deadline {DEADLINE_SECONDS} s)")
    # An answer at all (not DEADLINE_EXCEEDED) means it came before the deadline. The budget in
    # the message is the one the sidecar took from the deadline, not the connector's 5 s (the
    # margin it keeps is test_engine's to prove: gRPC's time remaining can run a little over
    # the caller's deadline). The upstream got the request: the budget left room to send it.
    assert verdict(response) == error("TIMEOUT")
    within = re.fullmatch(r"no complete response within ([0-9.]+)s", response.message)
    assert within, response.message
    assert 0 < float(within[1]) < DEADLINE_SECONDS
    assert len(quiet.requests) == 1


def test_admission_limit_answers_resource_exhausted_at_once(
    sidecar_factory: Callable[..., InProcessSidecar], raw_servers: RawServers
) -> None:
    sidecar = sidecar_factory(max_concurrent_evaluations=2)
    quiet = raw_servers.serve(silent)
    register(sidecar.stub, "quiet", quiet.url("/"), timeout="5s")
    busy = [
        sidecar.stub.EvaluateNode.future(evaluate_request("quiet"), timeout=RPC_TIMEOUT)
        for _ in range(2)
    ]
    try:
        wait_until(lambda: len(quiet.requests) == 2, "both admitted calls reached the upstream")

        started = time.monotonic()
        with pytest.raises(grpc.RpcError) as refused:
            sidecar.stub.EvaluateNode(evaluate_request("quiet"), timeout=RPC_TIMEOUT)
        print(f"RESOURCE_EXHAUSTED after {(time.monotonic() - started) * 1000:.1f} ms")
    finally:
        for call in busy:
            call.cancel()

    assert refused.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert len(quiet.requests) == 2
