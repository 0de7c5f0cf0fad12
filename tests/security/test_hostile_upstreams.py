"""Hostile upstreams on loopback: one documented reason per fault, bounded time, bounded memory.

Raw asyncio servers (tests/support/raw_servers.py) misbehave in ways no HTTP framework would;
the egress under test has the recording connector. Each test asserts the reason and that the
call came back; durations are printed, never asserted. Memory is bounded with tracemalloc's peak
during the call (a bound, not a timing).

    fault                                   reason
    drip (1 byte / 0.3 s), slow headers,    TIMEOUT (the budget is total, not per read)
    silence
    reset mid-body, truncated body          PROTOCOL_ERROR (the response began, then broke;
    (Content-Length > what was sent)        not retried: the request was delivered)
    garbage status line, endless headers,   PROTOCOL_ERROR
    endless header or status line, broken
    framing (NUL, bad or double Content-
    Length, chunked + Content-Length ...)
    3xx with a Location the client refuses     PROTOCOL_ERROR
    unknown or stacked content encoding     PROTOCOL_ERROR
    gzip / deflate bomb, huge body          RESPONSE_TOO_LARGE, memory well under 64 MiB
    (declared, chunked, until close)
    5xx burst                               UPSTREAM_ERROR after 3 hits, then CIRCUIT_OPEN
    429 + Retry-After within the budget     waited for and retried: the retry's answer
    429 + Retry-After beyond the budget     not retried: the 429 is the answer (NO_MATCH)
"""

from __future__ import annotations

import asyncio
import socket
import struct
import time
import tracemalloc
import zlib
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import pytest

from sidecar.core.engine import Engine, compile_node
from sidecar.core.model import Connector, Node, Outcome, Reason
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendError, SendOptions
from sidecar.core.secrets import SecretBindings
from sidecar.egress import Egress, EgressLimits
from tests.support.loopback import LOOPBACK_POLICY
from tests.support.network import FAST_RETRIES, Network, recording_egress
from tests.support.raw_servers import (
    RawServer,
    RawServers,
    answering,
    http_response,
    read_request,
    silent,
)

T = TypeVar("T")
CAP = 1024 * 1024
MEMORY_BOUND = 64 * 1024 * 1024
RETURN_BOUND_SECONDS = 30.0  # far above every budget: a call still running then is hung
DRIP_INTERVAL_SECONDS = 0.3
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


def options(budget: float = 1.0, *, cap: int = CAP, **fields: Any) -> SendOptions:
    return SendOptions(timeout_seconds=budget, max_response_bytes=cap, **fields)


def run_bounded(
    network: Network,
    use: Callable[[Egress], Awaitable[T]],
    limits: EgressLimits = FAST_RETRIES,
) -> T:
    """Run `use` with a recording egress; it must come back (printing how long it took)."""

    async def main() -> T:
        async with recording_egress(network, LOOPBACK_POLICY, limits) as egress:
            return await asyncio.wait_for(use(egress), RETURN_BOUND_SECONDS)

    started = time.monotonic()
    try:
        return asyncio.run(main())
    finally:
        print(f"returned after {time.monotonic() - started:.3f}s")


def failure(network: Network, server: RawServer, budget: float = 1.0, **fields: Any) -> SendError:
    """The SendError of one GET to `server` (AssertionError if a response came back)."""

    async def use(egress: Egress) -> HttpResponse | SendError:
        try:
            return await egress.send(
                OutboundRequest("GET", server.url("/"), (), None), options(budget, **fields)
            )
        except SendError as error:
            return error

    result = run_bounded(network, use)
    assert isinstance(result, SendError), f"expected a failure, got HTTP {result.status}"
    print(f"{result.reason}: {result.message}")
    return result


# ---------------------------------------------------------------------------------------------
# Slow: cut at the total budget
# ---------------------------------------------------------------------------------------------


async def drip(server: RawServer, reader: Reader, writer: Writer) -> None:
    """Headers, then one body byte every 0.3 s: never idle long enough for a read timeout."""
    server.requests.append((await read_request(reader))[0])
    writer.write(
        b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n"
    )
    for _ in range(100):
        writer.write(b" ")
        await writer.drain()
        await asyncio.sleep(DRIP_INTERVAL_SECONDS)


async def slow_headers(server: RawServer, reader: Reader, writer: Writer) -> None:
    """The status line, then one header line every 0.3 s."""
    server.requests.append((await read_request(reader))[0])
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for number in range(100):
        writer.write(f"X-Slow-{number}: 1\r\n".encode())
        await writer.drain()
        await asyncio.sleep(DRIP_INTERVAL_SECONDS)


@pytest.mark.parametrize("handler", [drip, slow_headers, silent], ids=lambda h: h.__name__)
def test_slow_upstream_is_cut_at_the_total_budget_as_timeout(
    network: Network, raw_servers: RawServers, handler: Any
) -> None:
    server = raw_servers.serve(handler)

    error = failure(network, server, budget=1.0)

    assert error.reason is Reason.TIMEOUT
    assert len(server.requests) == 1  # a timeout is not retried


# ---------------------------------------------------------------------------------------------
# Broken: one reason each
# ---------------------------------------------------------------------------------------------


async def reset_mid_body(server: RawServer, reader: Reader, writer: Writer) -> None:
    server.requests.append((await read_request(reader))[0])
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"x" * 100)
    await writer.drain()
    await asyncio.sleep(0.5)  # the client has the headers and part of the body by now
    # SO_LINGER on with a zero timeout: close() sends an RST instead of a FIN.
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def truncated_body(server: RawServer, reader: Reader, writer: Writer) -> None:
    server.requests.append((await read_request(reader))[0])
    writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 4096\r\n\r\n" + b"x" * 100)
    await writer.drain()
    writer.close()


async def garbage_status_line(server: RawServer, reader: Reader, writer: Writer) -> None:
    server.requests.append((await read_request(reader))[0])
    writer.write(b"SSH-2.0-OpenSSH_9.6\r\n\r\n")
    await writer.drain()


async def endless_headers(server: RawServer, reader: Reader, writer: Writer) -> None:
    server.requests.append((await read_request(reader))[0])
    writer.write(b"HTTP/1.1 200 OK\r\n")
    for number in range(200_000):
        writer.write(f"X-Header-{number}: {'v' * 40}\r\n".encode())
        if number % 256 == 0:
            await writer.drain()


async def endless_header_line(server: RawServer, reader: Reader, writer: Writer) -> None:
    server.requests.append((await read_request(reader))[0])
    writer.write(b"HTTP/1.1 200 OK\r\nX-Long: ")
    for _ in range(4096):
        writer.write(b"v" * 4096)
        await writer.drain()


async def endless_status_line(server: RawServer, reader: Reader, writer: Writer) -> None:
    server.requests.append((await read_request(reader))[0])
    writer.write(b"HTTP/1.1 200 ")
    for _ in range(4096):
        writer.write(b"O" * 4096)
        await writer.drain()


def encoded(encoding: str) -> Callable[[RawServer, Reader, Writer], Awaitable[None]]:
    return answering(http_response(200, b"{}", {"Content-Encoding": encoding}))


def raw_answer(answer: bytes) -> Callable[[RawServer, Reader, Writer], Awaitable[None]]:
    """Answers exactly these bytes, then closes."""

    async def handler(server: RawServer, reader: Reader, writer: Writer) -> None:
        server.requests.append((await read_request(reader))[0])
        writer.write(answer)
        await writer.drain()

    return handler


MALFORMED = {
    "nul-in-a-header": b"HTTP/1.1 200 OK\r\nX-A: a\x00b\r\nContent-Length: 2\r\n\r\n{}",
    "header-without-colon": b"HTTP/1.1 200 OK\r\nNoColonHere\r\nContent-Length: 2\r\n\r\n{}",
    "content-length-not-a-number": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
    "content-length-negative": b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n{}",
    "content-length-absurd": b"HTTP/1.1 200 OK\r\nContent-Length: 99999999999999999999\r\n\r\n",
    "two-content-lengths": (
        b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\nContent-Length: 5\r\n\r\n{}xyz"
    ),
    "chunked-and-content-length": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\nContent-Length: 2\r\n\r\n"
        b"2\r\n{}\r\n0\r\n\r\n"
    ),
    "bad-chunk-size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
    "no-status-line": b"{}",
}


@pytest.mark.parametrize(
    ("handler", "reason"),
    [
        pytest.param(reset_mid_body, Reason.PROTOCOL_ERROR, id="reset-mid-body"),
        pytest.param(truncated_body, Reason.PROTOCOL_ERROR, id="truncated-body"),
        pytest.param(garbage_status_line, Reason.PROTOCOL_ERROR, id="garbage-status-line"),
        pytest.param(endless_headers, Reason.PROTOCOL_ERROR, id="endless-headers"),
        pytest.param(endless_header_line, Reason.PROTOCOL_ERROR, id="endless-header-line"),
        pytest.param(endless_status_line, Reason.PROTOCOL_ERROR, id="endless-status-line"),
        pytest.param(encoded("br"), Reason.PROTOCOL_ERROR, id="unknown-encoding"),
        pytest.param(encoded("gzip, gzip"), Reason.PROTOCOL_ERROR, id="stacked-encodings"),
        pytest.param(encoded("gzip"), Reason.PROTOCOL_ERROR, id="not-gzip-at-all"),
        *(
            pytest.param(raw_answer(answer), Reason.PROTOCOL_ERROR, id=name)
            for name, answer in MALFORMED.items()
        ),
    ],
)
def test_broken_upstream_answers_one_reason(
    network: Network, raw_servers: RawServers, handler: Any, reason: Reason
) -> None:
    server = raw_servers.serve(handler)

    error = failure(network, server, budget=5.0)

    assert error.reason is reason
    assert len(server.requests) == 1  # the request was delivered: never retried


def test_followed_redirect_with_an_unparseable_location_is_protocol_error(
    network: Network, raw_servers: RawServers
) -> None:
    answer = b"HTTP/1.1 302 Found\r\nLocation: /next\x7fpage\r\nContent-Length: 0\r\n\r\n"
    server = raw_servers.serve(raw_answer(answer))

    error = failure(network, server, budget=5.0, follow_redirects=True)

    assert error.reason is Reason.PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------
# Big: stopped at the cap, with memory to match
# ---------------------------------------------------------------------------------------------

MIB = 1024 * 1024


def deflate_blocks(wbits: int) -> tuple[bytes, bytes]:
    """(first, next): compressed MiBs of zeros; `next` may be repeated to stream GiBs."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(MIB)
    first = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    following = compressor.compress(zeros) + compressor.flush(zlib.Z_FULL_FLUSH)
    return first, following


GZIP_WBITS = 16 + zlib.MAX_WBITS


def small_bomb(encoding: str, mebibytes: int) -> bytes:
    """A complete gzip or deflate body: `mebibytes` of zeros in a few KB."""
    wbits = GZIP_WBITS if encoding == "gzip" else zlib.MAX_WBITS
    compressor = zlib.compressobj(9, zlib.DEFLATED, wbits)
    zeros = bytes(MIB)
    return b"".join(compressor.compress(zeros) for _ in range(mebibytes)) + compressor.flush()


def streamed_bomb(gibibytes: int) -> Callable[[RawServer, Reader, Writer], Awaitable[None]]:
    """A chunked gzip body of `gibibytes` GiB of zeros, ~1 KB per MiB, generated as sent."""
    first, following = deflate_blocks(GZIP_WBITS)
    batch = following * 64

    async def handler(server: RawServer, reader: Reader, writer: Writer) -> None:
        server.requests.append((await read_request(reader))[0])
        writer.write(
            b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
            b"Content-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
        )
        writer.write(b"%x\r\n%s\r\n" % (len(first), first))
        for _ in range(gibibytes * 1024 // 64):
            writer.write(b"%x\r\n%s\r\n" % (len(batch), batch))
            await writer.drain()

    return handler


def huge(kind: str) -> Callable[[RawServer, Reader, Writer], Awaitable[None]]:
    """64 MiB of body: with a Content-Length, chunked, or until the connection closes."""
    chunk = b" " * (256 * 1024)
    head = {
        "declared": f"Content-Length: {64 * MIB}\r\n",
        "chunked": "Transfer-Encoding: chunked\r\n",
        "until-close": "Connection: close\r\n",
    }[kind]

    async def handler(server: RawServer, reader: Reader, writer: Writer) -> None:
        server.requests.append((await read_request(reader))[0])
        writer.write(f"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n{head}\r\n".encode())
        for _ in range(256):
            writer.write(b"%x\r\n%s\r\n" % (len(chunk), chunk) if kind == "chunked" else chunk)
            await writer.drain()

    return handler


def measured(network: Network, server: RawServer, budget: float = 10.0) -> tuple[SendError, int]:
    """One GET's failure and the tracemalloc peak (bytes) while it ran."""
    tracemalloc.start()
    try:
        error = failure(network, server, budget=budget)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    print(f"tracemalloc peak: {peak / MIB:.1f} MiB")
    return error, peak


@pytest.mark.parametrize(
    ("encoding", "mebibytes"), [("gzip", 64), ("deflate", 64)], ids=["gzip", "deflate"]
)
def test_small_compression_bomb_stops_at_the_cap_with_small_memory(
    network: Network, raw_servers: RawServers, encoding: str, mebibytes: int
) -> None:
    bomb = small_bomb(encoding, mebibytes)
    print(f"{encoding} bomb: {len(bomb)} bytes on the wire, {mebibytes} MiB decoded")
    assert len(bomb) < CAP  # so the raw count alone cannot stop it: the decoder must
    server = raw_servers.serve(answering(http_response(200, bomb, {"Content-Encoding": encoding})))

    error, peak = measured(network, server)

    assert error.reason is Reason.RESPONSE_TOO_LARGE
    assert peak < MEMORY_BOUND


def test_streamed_gzip_bomb_of_gibibytes_stops_at_the_cap_with_small_memory(
    network: Network, raw_servers: RawServers
) -> None:
    server = raw_servers.serve(streamed_bomb(gibibytes=4))

    error, peak = measured(network, server)

    assert error.reason is Reason.RESPONSE_TOO_LARGE
    assert peak < MEMORY_BOUND


@pytest.mark.parametrize("kind", ["declared", "chunked", "until-close"])
def test_huge_body_stops_at_the_cap_with_small_memory(
    network: Network, raw_servers: RawServers, kind: str
) -> None:
    server = raw_servers.serve(huge(kind))

    error, peak = measured(network, server)

    assert error.reason is Reason.RESPONSE_TOO_LARGE
    assert peak < MEMORY_BOUND


# ---------------------------------------------------------------------------------------------
# Overloaded: 5xx bursts and 429, through the engine (the reason a visitor's call ends with)
# ---------------------------------------------------------------------------------------------


class NoSecrets:
    def resolve(self, name: str) -> str | None:
        return None

    def searched(self, name: str) -> str:
        return "looked nowhere"


def evaluate_many(
    network: Network, url: str, calls: int, limits: EgressLimits, *, timeout: str = "5s"
) -> list[Outcome]:
    """`calls` sequential evaluations of a GET connector on `url` (2xx -> "ok")."""
    connector = Connector.model_validate(
        {"id": "hostile", "status": "LIVE", "url_template": url, "timeout": timeout, "version": 1}
    )
    node = compile_node(
        Node.model_validate(
            {
                "connector_id": "hostile",
                "branches": [
                    {
                        "target": "ok",
                        "conditions": [
                            {
                                "subject": {"kind": "STATUS"},
                                "operator": "STATUS_CLASS",
                                "operand": "2xx",
                            }
                        ],
                    }
                ],
                "else_target": "else",
                "error_target": "error",
            }
        )
    )

    async def use(egress: Egress) -> list[Outcome]:
        engine = Engine(
            {"hostile": connector}, NoSecrets(), egress.send, bindings=SecretBindings({})
        )
        return [await engine.evaluate(node, {}) for _ in range(calls)]

    return run_bounded(network, use, limits)


def test_5xx_burst_is_upstream_error_after_three_hits_then_circuit_open(
    network: Network, raw_servers: RawServers
) -> None:
    server = raw_servers.serve(answering(http_response(503, b'{"busy": true}')))
    limits = EgressLimits(
        retries=2,
        backoff_initial_seconds=0.01,
        backoff_max_seconds=0.05,
        breaker_failure_threshold=6,
        breaker_cooldown_seconds=60,
    )

    outcomes = evaluate_many(network, server.url("/orders"), 3, limits)

    assert [(o.reason, o.http_status) for o in outcomes] == [
        (Reason.UPSTREAM_ERROR, 503),
        (Reason.UPSTREAM_ERROR, 503),
        (Reason.CIRCUIT_OPEN, 0),
    ]
    assert [o.attempts for o in outcomes[:2]] == [3, 3]
    assert len(server.requests) == 6


def test_429_with_retry_after_within_the_budget_is_waited_for_and_retried(
    network: Network, raw_servers: RawServers
) -> None:
    server = raw_servers.serve(
        answering(
            http_response(429, b"{}", {"Retry-After": "1"}),
            http_response(200, b'{"ok": true}'),
        )
    )

    (outcome,) = evaluate_many(network, server.url("/orders"), 1, FAST_RETRIES)

    assert (outcome.reason, outcome.http_status, outcome.attempts) == (
        Reason.BRANCH_MATCHED,
        200,
        2,
    )
    assert len(server.requests) == 2


@pytest.mark.parametrize(
    "retry_after", ["60", "Wed, 21 Oct 2099 07:28:00 GMT"], ids=["seconds", "http-date"]
)
def test_429_with_retry_after_beyond_the_budget_is_the_answer(
    network: Network, raw_servers: RawServers, retry_after: str
) -> None:
    server = raw_servers.serve(answering(http_response(429, b"{}", {"Retry-After": retry_after})))

    (outcome,) = evaluate_many(network, server.url("/orders"), 1, FAST_RETRIES)

    assert (outcome.reason, outcome.http_status, outcome.attempts) == (
        Reason.NO_BRANCH_MATCHED,
        429,
        1,
    )
    assert len(server.requests) == 1
