"""The egress's HTTP/1.1 client: asyncio transports, llhttp's parser (httptools), a keep-alive pool.

What it does, and nothing more (`transport` turns its exceptions into SendErrors):

    request(method, url, headers, body, cap)
      ├ a pooled connection to (scheme, host, port) idle for less than `keepalive_seconds`,
      │ or a new one: resolve (the `Resolver`, cached `dns_cache_seconds`; an IP literal is not
      │ resolved), open a socket to one of the addresses resolved (`SocketOpener`, the tests'
      │ seam), TLS with the host name verified; at most `max_connections` in use at once
      ├ the request line and headers written as given (the target byte for byte; Host,
      │ Content-Length and aiohttp's default Accept / Content-Type added when absent)
      └ the response parsed by llhttp: 1xx skipped; HEAD, 204 and 304 without a body; chunked
        or Content-Length or until the connection closes; the head at most HEAD_BYTES and
        MAX_HEADERS headers of MAX_FIELD_BYTES each; the body (de-chunked, still encoded)
        counted against `cap`, a declared Content-Length over it refused before any body byte

A connection goes back to the pool only after a response read to its end that lets it stay
open (HTTP/1.1 without `Connection: close`, not HEAD); every other exit closes it, cancellation
included. A request that meets a pooled connection the upstream had closed (no byte of an answer)
is sent once more on a new connection when its method is idempotent, as aiohttp did. The client
has no clock of its own: the egress's budget cancels the attempt. No proxy, no redirect.

httptools, not h11: llhttp is the parser Node.js ships, maintained and fuzzed, in C; httptools is
MagicStack's binding (uvicorn's default), a callback per header and body chunk. h11 is pure Python
and would parse every byte in the interpreter, the cost this client exists to remove.
"""

from __future__ import annotations

import asyncio
import ipaddress
import re
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NamedTuple, Protocol, cast

import httptools

HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 128  # aiohttp's limits, kept
MAX_FIELD_BYTES: Final = 8190
IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_DEFAULT_PORTS: Final = {"http": 80, "https": 443}
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_UNSAFE_VALUE = re.compile(r"[\x00\r\n]")
_DNS_CACHE_LIMIT = 1024


# -- what can go wrong (`transport.FAILURES` says what each means) ---------------------------------


class HttpError(Exception):
    """A failure of this client; its message never holds the URL or a header."""


class ResolveError(HttpError):
    """The host name did not resolve."""


class ConnectError(HttpError):
    """No connection could be established to any address: nothing was sent."""


class DisconnectedError(HttpError):
    """The upstream closed the connection before the first byte of an answer."""


class MalformedResponseError(HttpError):
    """The answer broke HTTP/1.1, or stopped before its end."""


class BodyTooLargeError(HttpError):
    """The body (declared or counted) is over the cap."""


class RequestError(HttpError):
    """The request cannot be written (a line break in a header, a method that is no token)."""


# -- the seams: name resolution and sockets --------------------------------------------------------


class ResolvedAddress(NamedTuple):
    """One address a name resolved to: `host` as text (`fe80::1%2` with its zone), the socket
    family and the address `connect` takes."""

    host: str
    port: int
    family: socket.AddressFamily
    sockaddr: tuple[str, int] | tuple[str, int, int, int]

    @classmethod
    def of(cls, host: str, port: int) -> ResolvedAddress:
        """From an address in text; a zone (`%2`, `%eth0`) becomes the scope id.

        >>> ResolvedAddress.of("127.0.0.1", 80).sockaddr
        ('127.0.0.1', 80)
        """
        bare, _, zone = host.partition("%")
        if ipaddress.ip_address(bare).version == 4:
            return cls(host, port, socket.AF_INET, (bare, port))
        scope = int(zone) if zone.isdigit() else (socket.if_nametoindex(zone) if zone else 0)
        return cls(host, port, socket.AF_INET6, (bare, port, 0, scope))


class Resolver(Protocol):
    """Names to addresses (the egress wraps one in `transport.GuardedResolver`)."""

    async def resolve(self, host: str, port: int) -> Sequence[ResolvedAddress]:
        """Every address of `host`; an OSError when it has none."""
        ...


class SystemResolver:
    """The system's resolver (getaddrinfo, in the event loop's thread pool)."""

    async def resolve(self, host: str, port: int) -> Sequence[ResolvedAddress]:
        infos = await asyncio.get_running_loop().getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_ADDRCONFIG
        )
        found: dict[str, ResolvedAddress] = {}
        for family, _, _, _, sockaddr in infos:
            if family not in (socket.AF_INET, socket.AF_INET6):
                continue
            text = str(sockaddr[0])
            if family == socket.AF_INET6 and sockaddr[3]:  # type: ignore[misc]
                text = f"{text.partition('%')[0]}%{sockaddr[3]}"  # type: ignore[misc]
            found.setdefault(text, ResolvedAddress.of(text, port))
        return list(found.values())


SocketOpener = Callable[[ResolvedAddress], Awaitable[socket.socket]]
"""Opens a connected, non-blocking TCP socket to one address (tests record and refuse here)."""


async def open_socket(address: ResolvedAddress) -> socket.socket:
    """The real `SocketOpener`: a socket of the address's family, TCP_NODELAY, connected."""
    sock = socket.socket(address.family, socket.SOCK_STREAM)
    try:
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        await asyncio.get_running_loop().sock_connect(sock, address.sockaddr)
    except BaseException:
        sock.close()
        raise
    return sock


# -- one request and its answer ------------------------------------------------------------------


class Target(NamedTuple):
    """Where a request goes, as written on the wire: `target` is the request line's path and
    query, `authority` the Host header, `host` the name resolved and verified by TLS."""

    scheme: str
    host: str
    port: int
    target: str
    authority: str


class Response(NamedTuple):
    """The status, the header pairs as received, and the body de-chunked (still encoded)."""

    status: int
    headers: list[tuple[bytes, bytes]]
    body: bytes


def request_head(
    method: str, url: Target, headers: Sequence[tuple[str, str]], body: bytes | None
) -> bytes:
    """The request line and headers. aiohttp's automatic headers are kept where absent (Host,
    Accept: */*, and for a body Content-Length and Content-Type: application/octet-stream); a
    caller's Content-Length or Transfer-Encoding is replaced by the body's own length.

    >>> request_head("GET", Target("http", "a.example", 80, "/x?y=%2F", "a.example"), (), None)
    b'GET /x?y=%2F HTTP/1.1\\r\\nHost: a.example\\r\\nAccept: */*\\r\\n\\r\\n'
    """
    if not _TOKEN.fullmatch(method):
        raise RequestError("the method is not an HTTP token")
    lines = [f"{method} {url.target} HTTP/1.1\r\n"]
    present: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in ("content-length", "transfer-encoding"):
            continue
        if not _TOKEN.fullmatch(name) or _UNSAFE_VALUE.search(value):
            raise RequestError("a header name or value cannot be sent (line break, NUL or space)")
        present.add(lowered)
        lines.append(f"{name}: {value}\r\n")
    if "host" not in present:
        lines.insert(1, f"Host: {url.authority}\r\n")
    if "accept" not in present:
        lines.append("Accept: */*\r\n")
    if body is not None or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body or b'')}\r\n")
        if body and "content-type" not in present:
            lines.append("Content-Type: application/octet-stream\r\n")
    lines.append("\r\n")
    return "".join(lines).encode("utf-8")


class _Connection(asyncio.Protocol):
    """One connection and the response being read on it (one at a time)."""

    def __init__(self, pool: Pool, key: tuple[str, str, int]) -> None:
        self.key = key
        self.idle_since = 0.0
        self.reused = False
        self._pool = pool
        self._transport: asyncio.Transport | None = None
        self._parser = httptools.HttpResponseParser(self)
        # As aiohttp's parser (llhttp too) had it: control characters in a header value and
        # obsolete line folding (RFC 9112 5.2: a client joins the lines) are accepted; NUL is
        # refused in `on_header`, header names and framing stay strict.
        self._parser.set_dangerous_leniencies(lenient_headers=True)
        self._closed = False
        self._broken = False
        self._waiter: asyncio.Future[Response] | None = None
        self._reset(head=False, cap=0)

    def _reset(self, *, head: bool, cap: int) -> None:
        self._head = head
        self._cap = cap
        self._received_any = False
        self._head_bytes = 0
        self._headers: list[tuple[bytes, bytes]] = []
        self._headers_done = False
        self._status = 0
        self._interim = False
        self._framed = False  # Content-Length or chunked: the end is known without a close
        self._body: list[bytes] = []
        self._body_bytes = 0
        self._complete = False
        self._keep_alive = False
        self._failure: HttpError | None = None

    # -- the exchange --

    @property
    def usable(self) -> bool:
        return not self._closed and not self._broken and self._transport is not None

    async def exchange(
        self, payload: bytes, body: bytes | None, *, head: bool, cap: int
    ) -> Response:
        """Write the request and wait for its answer; the caller closes the connection on any
        failure (and on cancellation)."""
        assert self._transport is not None
        self._reset(head=head, cap=cap)
        waiter: asyncio.Future[Response] = asyncio.get_running_loop().create_future()
        self._waiter = waiter
        if body and len(body) <= 65536:
            self._transport.write(payload + body)
        else:
            self._transport.write(payload)
            if body:
                self._transport.write(body)
        try:
            return await waiter
        finally:
            self._waiter = None

    @property
    def reusable(self) -> bool:
        """The answer was read to its end and the connection may carry another."""
        return self._complete and self._keep_alive and self.usable

    def close(self) -> None:
        self._broken = True
        if self._transport is not None and not self._closed:
            self._transport.close()

    def _settle(self) -> None:
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        if self._failure is not None:
            self._broken = True
            waiter.set_exception(self._failure)
        else:
            waiter.set_result(Response(self._status, self._headers, b"".join(self._body)))

    def _fail(self, failure: HttpError) -> None:
        if self._failure is None:
            self._failure = failure
        self._settle()
        self.close()

    # -- asyncio.Protocol --

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self._transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        if self._waiter is None or self._complete:
            self.close()  # bytes nobody asked for: the connection is not in a known state
            return
        self._received_any = True
        if not self._headers_done:
            self._head_bytes += len(data)
        try:
            self._parser.feed_data(data)
        except httptools.HttpParserUpgrade:
            self._fail(MalformedResponseError("the upstream switched protocols"))
            return
        except httptools.HttpParserError:
            self._fail(
                self._failure or MalformedResponseError("the upstream sent a malformed response")
            )
            return
        if self._failure is not None:
            self._fail(self._failure)
        elif not self._headers_done and self._head_bytes > HEAD_BYTES:
            self._fail(MalformedResponseError("the response head is too large"))
        elif self._complete:
            self._settle()

    def eof_received(self) -> bool | None:
        return False  # close; `connection_lost` decides what the end means

    def connection_lost(self, exc: Exception | None) -> None:
        self._closed = True
        self._pool.forget(self)
        if self._waiter is None or self._waiter.done():
            return
        if self._headers_done and not self._framed and not self._interim and exc is None:
            self._complete = True  # the body ran until the connection closed
            self._keep_alive = False
            self._settle()
            return
        failure: HttpError
        if not self._received_any:
            failure = DisconnectedError("the upstream closed the connection")
        else:
            failure = MalformedResponseError("the response stopped before its end")
        failure.__cause__ = exc
        self._fail(failure)

    # -- httptools callbacks --

    def on_message_begin(self) -> None:
        if self._complete:
            self._broken = True  # more than one answer to one request

    def on_header(self, name: bytes, value: bytes) -> None:
        if len(self._headers) >= MAX_HEADERS or len(name) + len(value) > MAX_FIELD_BYTES:
            self._failure = MalformedResponseError("a response header is too large, or too many")
            raise _StopParsingError
        if b"\0" in value:
            self._failure = MalformedResponseError("a response header holds a NUL")
            raise _StopParsingError
        value = value.rstrip(b" \t")
        self._headers.append((name, value))
        lowered = name.lower()
        if lowered == b"content-length":
            self._framed = True
            length = value.strip()
            if length.isdigit() and int(length) > self._cap:
                self._failure = BodyTooLargeError("declared")
                raise _StopParsingError
        elif lowered == b"transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 1xx: the real answer follows
            self._headers = []
            self._framed = False
            return
        self._status = status
        self._headers_done = True
        if self._head or status == 101:
            self._framed = True
            self._complete = True
            self._keep_alive = False

    def on_body(self, body: bytes) -> None:
        if self._complete:
            return  # HEAD: what would have been the body is never read
        self._body_bytes += len(body)
        if self._body_bytes > self._cap:
            self._failure = BodyTooLargeError("counted")
            raise _StopParsingError
        self._body.append(body)

    def on_message_complete(self) -> None:
        if self._interim:
            self._interim = False
            return
        if self._complete:
            return
        self._complete = True
        self._keep_alive = (
            self._parser.should_keep_alive() and self._parser.get_http_version() == "1.1"
        )


class _StopParsingError(Exception):
    """Raised in a parser callback to stop parsing; the reason is in `_Connection._failure`."""


class Pool:
    """Connections per (scheme, host, port), the addresses of names, and the limit in use.

    Usage::

        pool = Pool(SystemResolver(), open_socket, ssl.create_default_context(),
                    max_connections=100, keepalive_seconds=30.0)
        url = Target("http", "127.0.0.1", 8080, "/orders/1", "127.0.0.1:8080")
        response = await pool.request("GET", url, (), None, cap=1 << 20)
        await pool.aclose()
    """

    def __init__(
        self,
        resolver: Resolver,
        opener: SocketOpener,
        tls: ssl.SSLContext,
        *,
        max_connections: int,
        keepalive_seconds: float,
        dns_cache_seconds: float = 10.0,
    ) -> None:
        self._resolver = resolver
        self._opener = opener
        self._tls = tls
        self._keepalive = keepalive_seconds
        self._dns_ttl = dns_cache_seconds
        self._limit = max_connections
        self._in_use = 0
        self._waiting: list[asyncio.Future[None]] = []
        self._idle: dict[tuple[str, str, int], list[_Connection]] = {}
        self._live: set[_Connection] = set()
        self._addresses: dict[tuple[str, int], tuple[float, Sequence[ResolvedAddress]]] = {}
        self._sweep: asyncio.TimerHandle | None = None

    async def request(
        self,
        method: str,
        url: Target,
        headers: Sequence[tuple[str, str]],
        body: bytes | None,
        *,
        cap: int,
    ) -> Response:
        """One exchange; an HttpError (or ssl.SSLError, TimeoutError ...) when it fails."""
        payload = request_head(method, url, headers, body)
        head = method == "HEAD"
        await self._take_slot()
        try:
            for retry in (False, True):
                connection = await self._connection(url, fresh=retry)
                try:
                    response = await connection.exchange(payload, body, head=head, cap=cap)
                except DisconnectedError:
                    connection.close()
                    if retry or not (connection.reused and method in IDEMPOTENT):
                        raise
                    continue  # the upstream had closed it while it was idle: once more, anew
                except BaseException:
                    connection.close()
                    raise
                if connection.reusable and self._keepalive > 0:
                    self._park(connection)
                else:
                    connection.close()
                return response
            raise AssertionError("unreachable: the second pass returns or raises")
        finally:
            self._give_slot()

    async def _take_slot(self) -> None:
        if self._in_use < self._limit and not self._waiting:
            self._in_use += 1
            return
        waiter = asyncio.get_running_loop().create_future()
        self._waiting.append(waiter)
        try:
            await waiter
        except BaseException:
            if waiter in self._waiting:
                self._waiting.remove(waiter)
            elif not waiter.cancelled():
                self._give_slot()  # handed a slot as it was cancelled: pass it on
            raise
        # `_give_slot` counted this request in before waking it

    def _give_slot(self) -> None:
        while self._waiting:
            waiter = self._waiting.pop(0)
            if not waiter.done():
                waiter.set_result(None)
                return
        self._in_use -= 1

    async def _connection(self, url: Target, *, fresh: bool = False) -> _Connection:
        key = (url.scheme, url.host, url.port)
        idle = None if fresh else self._idle.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.usable and now - connection.idle_since < self._keepalive:
                    connection.reused = True
                    return connection
                connection.close()
        return await self._open(key, url)

    async def _open(self, key: tuple[str, str, int], url: Target) -> _Connection:
        addresses = await self._resolve(url.host, url.port)
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        for address in addresses:
            try:
                sock = await self._opener(address)
            except OSError as exc:
                last = exc
                continue
            connection = _Connection(self, key)
            try:
                await loop.create_connection(
                    lambda connection=connection: connection,
                    sock=sock,
                    ssl=self._tls if url.scheme == "https" else None,
                    server_hostname=url.host.rstrip(".") if url.scheme == "https" else None,
                )
            except ssl.SSLError:
                sock.close()
                raise
            except OSError as exc:
                sock.close()
                last = exc
                continue
            except BaseException:
                sock.close()
                raise
            self._live.add(connection)
            return connection
        raise ConnectError("no address of the upstream accepted a connection") from last

    async def _resolve(self, host: str, port: int) -> Sequence[ResolvedAddress]:
        bare = host.strip("[]")
        try:
            return [ResolvedAddress.of(bare, port)]  # an IP literal is never looked up
        except ValueError:
            pass
        now = time.monotonic()
        cached = self._addresses.get((host, port))
        if cached is not None and cached[0] > now:
            return cached[1]
        try:
            addresses = await self._resolver.resolve(host, port)
        except OSError as exc:
            raise ResolveError("the upstream host name could not be resolved") from exc
        if not addresses:
            raise ResolveError("the upstream host name has no address")
        if self._dns_ttl > 0:
            if len(self._addresses) >= _DNS_CACHE_LIMIT:
                self._addresses = {k: v for k, v in self._addresses.items() if v[0] > now}
                if len(self._addresses) >= _DNS_CACHE_LIMIT:
                    self._addresses.clear()
            self._addresses[(host, port)] = (now + self._dns_ttl, addresses)
        return addresses

    def _park(self, connection: _Connection) -> None:
        connection.idle_since = time.monotonic()
        self._idle.setdefault(connection.key, []).append(connection)
        if self._sweep is None:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def _expire(self) -> None:
        """Close what stayed idle longer than `keepalive_seconds`; look again later if any left."""
        self._sweep = None
        now = time.monotonic()
        for key, idle in list(self._idle.items()):
            kept = []
            for connection in idle:
                if connection.usable and now - connection.idle_since < self._keepalive:
                    kept.append(connection)
                else:
                    connection.close()
            if kept:
                self._idle[key] = kept
            else:
                del self._idle[key]
        if self._idle:
            self._sweep = asyncio.get_running_loop().call_later(self._keepalive, self._expire)

    def forget(self, connection: _Connection) -> None:
        """A connection closed (by either side): never handed out again."""
        self._live.discard(connection)
        idle = self._idle.get(connection.key)
        if idle and connection in idle:
            idle.remove(connection)

    async def aclose(self) -> None:
        """Close every connection, idle or in use."""
        if self._sweep is not None:
            self._sweep.cancel()
            self._sweep = None
        for connection in list(self._live):
            connection.close()
        self._idle.clear()
        self._addresses.clear()
        await asyncio.sleep(0)  # let the transports run their close callbacks
