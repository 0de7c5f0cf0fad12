"""sidecar.egress.http1 and .pool (the egress's HTTP/1.1 client) through `Transport`, against
raw loopback servers that write exact bytes (tests/support/raw_servers.py) and count connections.

What the pool promises: keep-alive reuse only after a response read to its end, a close on
`Connection: close`, HTTP/1.0, HEAD, a broken or cancelled exchange; framing (chunked, length,
until close, 1xx, 204/HEAD) by llhttp; the request written byte for byte; its own seams (the
resolver, the DNS cache, the socket opener) and TLS with the host name verified. The reasons are
asserted, never the time taken.
"""

from __future__ import annotations

import asyncio
import gzip
import ssl
from collections.abc import Awaitable, Callable, Iterator
from typing import Any, TypeVar

import pytest
import trustme

from sidecar.core.model import Reason
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendError
from sidecar.egress.http1 import RequestError, Target, request_head
from sidecar.egress.policy import EgressPolicy
from sidecar.egress.transport import Transport
from tests.support.loopback import HOST, LOOPBACK_POLICY
from tests.support.network import FakeResolver, Network, RecordingOpener
from tests.support.raw_servers import (
    RawHandler,
    RawServer,
    RawServers,
    answering,
    http_response,
    read_request,
)

T = TypeVar("T")
CAP = 1024 * 1024
Reader = asyncio.StreamReader
Writer = asyncio.StreamWriter


@pytest.fixture
def raw_servers() -> Iterator[RawServers]:
    servers = RawServers()
    yield servers
    servers.close()


def get(url: str, *headers: tuple[str, str]) -> OutboundRequest:
    return OutboundRequest("GET", url, tuple(headers), None)


def with_transport(use: Callable[[Transport], Awaitable[T]], **options: Any) -> T:
    """Run `use` with a fresh Transport (LOOPBACK_POLICY) in a fresh event loop, closed after."""
    policy = options.pop("policy", LOOPBACK_POLICY)

    async def main() -> T:
        transport = Transport(policy, max_connections=options.pop("max_connections", 8), **options)
        try:
            return await use(transport)
        finally:
            await transport.aclose()

    return asyncio.run(main())


def outcomes(
    requests: list[OutboundRequest], cap: int = CAP, **options: Any
) -> list[HttpResponse | SendError]:
    """Each request in turn on one Transport: its response or its SendError."""

    async def use(transport: Transport) -> list[HttpResponse | SendError]:
        seen: list[HttpResponse | SendError] = []
        for request in requests:
            try:
                seen.append(await transport.attempt(request, cap))
            except SendError as error:
                seen.append(error)
        return seen

    return with_transport(use, **options)


def response(result: HttpResponse | SendError) -> HttpResponse:
    assert isinstance(result, HttpResponse), f"{result.reason}: {result.message}"  # type: ignore[union-attr]
    return result


def reason(result: HttpResponse | SendError) -> Reason:
    assert isinstance(result, SendError), f"expected a failure, got HTTP {result.status}"  # type: ignore[union-attr]
    return result.reason


def per_connection(*handlers: RawHandler) -> RawHandler:
    """The first connection served by the first handler, the next by the next (last repeated)."""

    async def handler(server: RawServer, reader: Reader, writer: Writer) -> None:
        chosen = handlers[min(server.accepted - 1, len(handlers) - 1)]
        await chosen(server, reader, writer)

    return handler


def once(answer: bytes) -> RawHandler:
    """Answers one request with exactly these bytes, then closes the connection."""

    async def handler(server: RawServer, reader: Reader, writer: Writer) -> None:
        server.requests.append((await read_request(reader))[0])
        writer.write(answer)
        await writer.drain()

    return handler


OK = http_response(200, b'{"ok":true}')


# ---------------------------------------------------------------------------------------------
# Keep-alive: reused only after a whole response that lets the connection stay open
# ---------------------------------------------------------------------------------------------


def test_a_connection_is_reused_after_a_complete_response(raw_servers: RawServers) -> None:
    server = raw_servers.serve(answering(OK))

    results = outcomes([get(server.url("/a")), get(server.url("/b")), get(server.url("/c"))])

    assert [response(result).body for result in results] == [b'{"ok":true}'] * 3
    assert server.accepted == 1
    assert server.requests == ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /c HTTP/1.1"]


@pytest.mark.parametrize(
    "answer",
    [
        http_response(200, b"{}", {"Connection": "close"}),
        b"HTTP/1.0 200 OK\r\nContent-Length: 2\r\n\r\n{}",
    ],
    ids=["connection-close", "http-1.0"],
)
def test_a_connection_the_upstream_means_to_close_is_not_reused(
    raw_servers: RawServers, answer: bytes
) -> None:
    server = raw_servers.serve(answering(answer))

    results = outcomes([get(server.url("/a")), get(server.url("/b"))])

    assert [response(result).status for result in results] == [200, 200]
    assert server.accepted == 2


def test_no_keepalive_opens_a_connection_per_request(raw_servers: RawServers) -> None:
    server = raw_servers.serve(answering(OK))

    outcomes([get(server.url("/a")), get(server.url("/b"))], keepalive_seconds=0)

    assert server.accepted == 2


def test_an_idle_connection_older_than_the_keepalive_is_not_reused(
    raw_servers: RawServers,
) -> None:
    server = raw_servers.serve(answering(OK))

    async def use(transport: Transport) -> None:
        await transport.attempt(get(server.url("/a")), CAP)
        await asyncio.sleep(0.3)  # six times the keep-alive below: expired whatever the load
        await transport.attempt(get(server.url("/b")), CAP)

    with_transport(use, keepalive_seconds=0.05)

    assert server.accepted == 2


def test_a_pooled_connection_the_upstream_closed_is_replaced(raw_servers: RawServers) -> None:
    # The upstream answers as if it kept the connection, then closes it: the next request must
    # not fail for it (a new connection, or the request sent once more on one).
    server = raw_servers.serve(once(OK))

    results = outcomes([get(server.url("/a")), get(server.url("/b"))])

    assert [response(result).status for result in results] == [200, 200]
    assert server.requests == ["GET /a HTTP/1.1", "GET /b HTTP/1.1"]


@pytest.mark.parametrize(("method", "sent_again"), [("GET", True), ("POST", False)])
def test_a_request_the_pooled_connection_dropped_unanswered_is_resent_only_if_idempotent(
    raw_servers: RawServers, method: str, sent_again: bool
) -> None:
    async def answers_once_then_drops(server: RawServer, reader: Reader, writer: Writer) -> None:
        server.requests.append((await read_request(reader))[0])
        writer.write(OK)
        await writer.drain()
        server.requests.append((await read_request(reader))[0])  # then closes, unanswered

    server = raw_servers.serve(per_connection(answers_once_then_drops, answering(OK)))
    second = OutboundRequest(method, server.url("/b"), (), b"{}")

    first, last = outcomes([get(server.url("/a")), second])

    assert response(first).status == 200
    if sent_again:
        assert response(last).status == 200
        assert server.requests == ["GET /a HTTP/1.1", "GET /b HTTP/1.1", "GET /b HTTP/1.1"]
    else:
        assert reason(last) is Reason.CONNECT_ERROR
        assert not last.retryable  # type: ignore[union-attr]
        assert server.requests == ["GET /a HTTP/1.1", "POST /b HTTP/1.1"]


def test_at_most_max_connections_are_in_use_at_once(raw_servers: RawServers) -> None:
    server = raw_servers.serve(answering(OK, hold_seconds=0.05))

    async def use(transport: Transport) -> list[int]:
        calls = [transport.attempt(get(server.url(f"/{n}")), CAP) for n in range(6)]
        return [answer.status for answer in await asyncio.gather(*calls)]

    assert with_transport(use, max_connections=2) == [200] * 6
    assert server.peak_in_flight <= 2
    assert len(server.requests) == 6


# ---------------------------------------------------------------------------------------------
# A connection whose response was not read to its end is never reused
# ---------------------------------------------------------------------------------------------


def test_a_cancelled_attempt_closes_its_connection(raw_servers: RawServers) -> None:
    """The first connection answers late (after the caller gave up); had it gone back to the
    pool, the second request would read the first one's answer."""

    async def late(server: RawServer, reader: Reader, writer: Writer) -> None:
        server.requests.append((await read_request(reader))[0])
        await asyncio.sleep(0.5)
        writer.write(http_response(200, b'"first"'))
        await writer.drain()
        await asyncio.sleep(5)

    server = raw_servers.serve(per_connection(late, answering(http_response(200, b'"second"'))))

    async def use(transport: Transport) -> bytes:
        with pytest.raises(TimeoutError):
            await asyncio.wait_for(transport.attempt(get(server.url("/first")), CAP), 0.1)
        await asyncio.sleep(0.6)  # the late answer has arrived on the first connection by now
        return (await transport.attempt(get(server.url("/second")), CAP)).body

    assert with_transport(use) == b'"second"'
    assert server.accepted == 2


@pytest.mark.parametrize(
    ("answer", "expected"),
    [
        (b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\n" + b"x" * 10, Reason.PROTOCOL_ERROR),
        (b"HTTP/1.1 2OO OK\r\nContent-Length: 2\r\n\r\n{}", Reason.PROTOCOL_ERROR),
        (b"HTTP/1.1 200 OK\r\nX-Folded: a\r\n b\r\nContent-Length: 2\r\n\r\n{}", None),
    ],
    ids=["truncated-body", "malformed-status-line", "obsolete-line-folding"],
)
def test_a_broken_answer_fails_and_the_next_request_gets_a_new_connection(
    raw_servers: RawServers, answer: bytes, expected: Reason | None
) -> None:
    server = raw_servers.serve(per_connection(once(answer), answering(OK)))

    first, second = outcomes([get(server.url("/broken")), get(server.url("/fine"))])

    if expected is None:  # obs-fold (RFC 9112 5.2): llhttp joins the lines, as aiohttp did
        assert response(first).headers["x-folded"].split() == ["a", "b"]
    else:
        assert reason(first) is expected
    assert response(second).body == b'{"ok":true}'
    assert server.accepted == 2


def test_a_body_over_the_cap_closes_the_connection(raw_servers: RawServers) -> None:
    chunked = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n" + b"100\r\n" + b"y" * 256
    server = raw_servers.serve(per_connection(once(chunked + b"\r\n0\r\n\r\n"), answering(OK)))

    first, second = outcomes([get(server.url("/big")), get(server.url("/fine"))], cap=100)

    assert reason(first) is Reason.RESPONSE_TOO_LARGE
    assert response(second).status == 200
    assert server.accepted == 2


# ---------------------------------------------------------------------------------------------
# Framing
# ---------------------------------------------------------------------------------------------


def test_a_chunked_body_is_joined_with_extensions_and_trailers_ignored(
    raw_servers: RawServers,
) -> None:
    answer = (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b'4;name=value\r\n{"a"\r\n3\r\n:1}\r\n0\r\nX-Trailer: t\r\n\r\n'
    )
    server = raw_servers.serve(answering(answer))

    first, second = outcomes([get(server.url("/a")), get(server.url("/b"))])

    assert response(first).body == b'{"a":1}'
    assert response(second).body == b'{"a":1}'
    assert server.accepted == 1  # a chunked body read to its end leaves the connection usable


def test_a_body_without_length_runs_until_the_connection_closes(raw_servers: RawServers) -> None:
    server = raw_servers.serve(once(b"HTTP/1.1 200 OK\r\n\r\n" + b"z" * 5000))

    (result,) = outcomes([get(server.url("/a"))])

    assert response(result).body == b"z" * 5000


def test_interim_responses_are_skipped(raw_servers: RawServers) -> None:
    answer = b"HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\n" + OK
    server = raw_servers.serve(answering(answer))

    (result,) = outcomes([get(server.url("/a"))])

    assert (response(result).status, response(result).body) == (200, b'{"ok":true}')
    assert "link" not in response(result).headers


@pytest.mark.parametrize(
    ("method", "answer"),
    [
        ("HEAD", b"HTTP/1.1 200 OK\r\nContent-Length: 11\r\n\r\n"),
        ("GET", b"HTTP/1.1 204 No Content\r\n\r\n"),
        ("GET", b"HTTP/1.1 304 Not Modified\r\nContent-Length: 11\r\n\r\n"),
    ],
    ids=["head", "204", "304"],
)
def test_answers_without_a_body_end_at_their_head(
    raw_servers: RawServers, method: str, answer: bytes
) -> None:
    server = raw_servers.serve(answering(answer, OK))

    first, second = outcomes(
        [OutboundRequest(method, server.url("/a"), (), None), get(server.url("/b"))]
    )

    assert response(first).body == b""
    assert response(second).body == b'{"ok":true}'


def test_a_declared_length_over_the_cap_is_refused_before_the_body(
    raw_servers: RawServers,
) -> None:
    server = raw_servers.serve(once(b"HTTP/1.1 200 OK\r\nContent-Length: 101\r\n\r\n"))

    (result,) = outcomes([get(server.url("/a"))], cap=100)

    assert reason(result) is Reason.RESPONSE_TOO_LARGE


def test_a_chunked_gzip_bomb_stops_at_the_decoded_cap(raw_servers: RawServers) -> None:
    bomb = gzip.compress(bytes(4 * CAP))
    head = b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nTransfer-Encoding: chunked\r\n\r\n"
    server = raw_servers.serve(once(head + b"%x\r\n%s\r\n0\r\n\r\n" % (len(bomb), bomb)))

    (result,) = outcomes([get(server.url("/bomb"))])

    assert len(bomb) < CAP
    assert reason(result) is Reason.RESPONSE_TOO_LARGE
    assert "decoded body" in result.message  # type: ignore[union-attr]


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\n" + b"X-Many: 1\r\n" * 129 + b"Content-Length: 0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"v" * 8190 + b"\r\nContent-Length: 0\r\n\r\n",
    ],
    ids=["129-headers", "a-header-over-8190-bytes"],
)
def test_a_head_over_the_limits_is_a_protocol_error(raw_servers: RawServers, answer: bytes) -> None:
    server = raw_servers.serve(once(answer))

    (result,) = outcomes([get(server.url("/a"))])

    assert reason(result) is Reason.PROTOCOL_ERROR


# ---------------------------------------------------------------------------------------------
# The request as written
# ---------------------------------------------------------------------------------------------


def test_the_request_goes_out_byte_for_byte(raw_servers: RawServers) -> None:
    seen: list[tuple[str, dict[str, str], bytes]] = []

    async def record(server: RawServer, reader: Reader, writer: Writer) -> None:
        seen.append(await read_request(reader))
        writer.write(OK)
        await writer.drain()

    server = raw_servers.serve(record)
    request = OutboundRequest(
        "POST",
        server.url("/o/A%3A1;v=2?k=%2F%3F&x=a|b"),
        (("X-Key", "k-1"), ("Content-Type", "application/json")),
        b'{"q":1}',
    )

    response(outcomes([request])[0])

    line, headers, body = seen[0]
    assert line == "POST /o/A%3A1;v=2?k=%2F%3F&x=a|b HTTP/1.1"
    assert headers["host"] == f"{HOST}:{server.port}"
    assert (headers["x-key"], headers["content-type"]) == ("k-1", "application/json")
    assert (headers["content-length"], body) == ("7", b'{"q":1}')


@pytest.mark.parametrize(
    ("name", "value"),
    [("X-Evil", "a\r\nX-Injected: 1"), ("X-Evil", "a\nb"), ("X Evil", "a"), ("X-Nul", "a\0b")],
)
def test_a_header_that_would_split_the_request_is_refused_unsent(
    raw_servers: RawServers, name: str, value: str
) -> None:
    server = raw_servers.serve(answering(OK))

    (result,) = outcomes([get(server.url("/a"), (name, value))])

    assert reason(result) is Reason.PROTOCOL_ERROR
    assert server.requests == []


@pytest.mark.parametrize(
    ("method", "name", "value"),
    [
        ("GET", "X-Evil", "a\r\nX-Injected: 1"),  # after the name was accepted with a safe value
        ("GET", "\u212aey", "k"),  # KELVIN SIGN: its lower case is ASCII, the name is not a token
        ("G ET", "X-Key", "k"),
    ],
)
def test_a_name_or_value_once_refused_is_refused_again_after_good_ones(
    method: str, name: str, value: str
) -> None:
    # Known-good methods and names are kept; values are judged every time.
    url = Target("http", "a.example", 80, "/", "a.example")
    request_head("GET", url, (("X-Evil", "fine"), ("Key", "k")), None)

    for _ in range(2):
        with pytest.raises(RequestError):
            request_head(method, url, ((name, value),), None)


def test_the_request_head_adds_only_what_aiohttp_added() -> None:
    url = Target("https", "api.example.com", 443, "/a", "api.example.com")

    head = request_head("PUT", url, (("Accept", "application/json"),), b"{}")

    assert head.split(b"\r\n") == [
        b"PUT /a HTTP/1.1",
        b"Host: api.example.com",
        b"Accept: application/json",
        b"Content-Length: 2",
        b"Content-Type: application/octet-stream",
        b"",
        b"",
    ]


# ---------------------------------------------------------------------------------------------
# The seams: resolver, DNS cache, socket opener; TLS
# ---------------------------------------------------------------------------------------------

NAMED = EgressPolicy(allow_cidrs=("127.0.0.1/32",), allow_http_hosts=("orders.test",))


@pytest.mark.parametrize(("ttl", "lookups"), [(10.0, 1), (0.0, 2)])
def test_a_name_is_resolved_once_within_the_dns_cache_time(
    raw_servers: RawServers, ttl: float, lookups: int
) -> None:
    server = raw_servers.serve(answering(OK))
    network = Network(dns={"orders.test": [HOST]})
    url = f"http://orders.test:{server.port}/a"

    results = outcomes(
        [get(url), get(url)],
        policy=NAMED,
        resolver=FakeResolver(network),
        connector_factory=RecordingOpener(network),
        keepalive_seconds=0,
        dns_cache_seconds=ttl,
    )

    assert [response(result).status for result in results] == [200, 200]
    assert network.lookups == ["orders.test"] * lookups
    assert network.connections == [(HOST, server.port)] * 2


def test_every_address_is_tried_in_turn_and_only_those(raw_servers: RawServers) -> None:
    server = raw_servers.serve(answering(OK))
    # Nothing listens on 127.0.0.2 at the server's port: refused there, then the next address.
    network = Network(dns={"orders.test": ["127.0.0.2", HOST]})

    (result,) = outcomes(
        [get(f"http://orders.test:{server.port}/a")],
        policy=EgressPolicy(allow_cidrs=("127.0.0.0/30",), allow_http_hosts=("orders.test",)),
        resolver=FakeResolver(network),
        connector_factory=RecordingOpener(network),
    )

    assert response(result).status == 200
    assert network.connections == [("127.0.0.2", server.port), (HOST, server.port)]


def test_a_refused_connection_is_a_retryable_connect_error(raw_servers: RawServers) -> None:
    network = Network(dns={"orders.test": [HOST]})
    server = raw_servers.serve(answering(OK))
    port = server.port
    raw_servers.close()

    (result,) = outcomes(
        [get(f"http://orders.test:{port}/a")],
        policy=NAMED,
        resolver=FakeResolver(network),
        connector_factory=RecordingOpener(network),
    )

    assert reason(result) is Reason.CONNECT_ERROR
    assert result.retryable  # type: ignore[union-attr]


@pytest.fixture(scope="module")
def tls_server() -> Iterator[tuple[trustme.CA, int]]:
    """An HTTPS server on loopback with a certificate for orders.test; (its CA, its port)."""
    ca = trustme.CA()
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    ca.issue_cert("orders.test").configure_cert(context)
    servers = RawServers()

    async def start() -> int:
        async def handle(reader: Reader, writer: Writer) -> None:
            try:
                await read_request(reader)
                writer.write(OK)
                await writer.drain()
            except (OSError, asyncio.IncompleteReadError):
                pass
            finally:
                writer.close()

        server = await asyncio.start_server(handle, HOST, 0, ssl=context)
        servers._servers.append(server)  # closed with the others
        return int(server.sockets[0].getsockname()[1])

    port = asyncio.run_coroutine_threadsafe(start(), servers._loop).result(10)
    yield ca, port
    servers.close()


@pytest.mark.parametrize(
    ("name", "trusted", "expected"),
    [("orders.test", True, 200), ("other.test", True, Reason.TLS_ERROR)],
    ids=["verified", "wrong-name"],
)
def test_tls_verifies_the_host_name_with_the_configured_context(
    tls_server: tuple[trustme.CA, int], name: str, trusted: bool, expected: int | Reason
) -> None:
    ca, port = tls_server
    context = ssl.create_default_context()
    ca.configure_trust(context)
    network = Network(dns={name: [HOST]})

    (result,) = outcomes(
        [get(f"https://{name}:{port}/a")],
        policy=EgressPolicy(allow_cidrs=("127.0.0.1/32",)),
        resolver=FakeResolver(network),
        connector_factory=RecordingOpener(network),
        tls=context,
    )

    if isinstance(expected, Reason):
        assert reason(result) is expected
    else:
        assert response(result).status == expected


def test_an_unknown_certificate_authority_is_a_tls_error(
    tls_server: tuple[trustme.CA, int],
) -> None:
    _, port = tls_server
    network = Network(dns={"orders.test": [HOST]})

    (result,) = outcomes(
        [get(f"https://orders.test:{port}/a")],
        policy=EgressPolicy(allow_cidrs=("127.0.0.1/32",)),
        resolver=FakeResolver(network),
        connector_factory=RecordingOpener(network),
    )

    assert reason(result) is Reason.TLS_ERROR
