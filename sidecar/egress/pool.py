"""The egress's keep-alive pool: connections per (scheme, host, port), and how they are opened.

    request(method, url, headers, body, cap)
      ├ a pooled connection to (scheme, host, port) idle for less than `keepalive_seconds`,
      │ or a new one: resolve (the `Resolver`, cached `dns_cache_seconds`; an IP literal is not
      │ resolved), open a socket to the addresses resolved in turn (`SocketOpener`, the tests'
      │ seam), TLS with the host name verified; at most `max_connections` in use at once
      └ one exchange on it (`http1.Connection`); back to the pool only if `reusable`, closed on
        every other exit, cancellation included

A request that meets a pooled connection the upstream had closed (no byte of an answer) is sent
once more on a new connection when its method is idempotent, as aiohttp did. No clock of its
own (the egress's budget cancels the attempt), no proxy, no redirect.
"""

from __future__ import annotations

import asyncio
import ipaddress
import socket
import ssl
import time
from collections.abc import Awaitable, Callable, Sequence
from typing import Final, NamedTuple, Protocol

from sidecar.egress.http1 import (
    ConnectError,
    Connection,
    DisconnectedError,
    ResolveError,
    Response,
    Target,
    request_head,
)
from sidecar.egress.slots import Slots

IDEMPOTENT: Final = frozenset({"GET", "HEAD", "OPTIONS", "TRACE", "PUT", "DELETE"})
_DNS_CACHE_LIMIT = 1024


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
        self._slots = Slots(max_connections)
        self._idle: dict[tuple[str, str, int], list[Connection]] = {}
        self._live: set[Connection] = set()
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
        if not self._slots.take():
            await self._slots.wait()
        key = (url.scheme, url.host, url.port)
        try:
            for retry in (False, True):
                connection = None if retry else self._idle_connection(key)
                if connection is None:
                    connection = await self._open(key, url)
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
            self._slots.give()

    def _idle_connection(self, key: tuple[str, str, int]) -> Connection | None:
        """A pooled connection to `key` still open and idle for less than keepalive_seconds
        (the most recently parked first); the stale ones on the way are closed."""
        idle = self._idle.get(key)
        if idle:
            now = time.monotonic()
            while idle:
                connection = idle.pop()
                if connection.usable and now - connection.idle_since < self._keepalive:
                    connection.reused = True
                    return connection
                connection.close()
        return None

    async def _open(self, key: tuple[str, str, int], url: Target) -> Connection:
        addresses = await self._resolve(url.host, url.port)
        loop = asyncio.get_running_loop()
        last: BaseException | None = None
        for address in addresses:
            try:
                sock = await self._opener(address)
            except OSError as exc:
                last = exc
                continue
            connection = Connection(key, self.forget, loop)
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

    def _park(self, connection: Connection) -> None:
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

    def forget(self, connection: Connection) -> None:
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
            connection.close(abort=True)  # a TLS close would wait for the peer's close_notify
        self._idle.clear()
        self._addresses.clear()
        for _ in range(2):  # the transports' close callbacks (TLS: the inner transport's too)
            await asyncio.sleep(0)
