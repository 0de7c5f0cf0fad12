"""The security suite's safety net: loopback only, and every attempt counted.

Nothing in the security suite may send a packet anywhere but loopback, even if the egress guard
under test is broken. So every egress built there (directly, or by an in-process sidecar) gets:

- `RecordingOpener`, the egress's socket seam (`connector_factory`): it records every (host,
  port) the egress asks to connect to and refuses, before any socket exists, anything outside
  127.0.0.0/8 (counted as a violation). It checks the address handed to `connect` again, a
  second lock on the same door in case the client's internals change.
- `FakeResolver`, canned DNS answers per name (recording every lookup): no real DNS query is
  ever made for a hostile name. A name it does not know fails like NXDOMAIN.

The security suite's `sidecar_seams` fixture hands them to every in-process sidecar
(`recording_seams`, parameters of the composition root); `recording_egress` builds a bare
egress with them. The autouse `network` fixture fails the test if any violation was recorded.

- `guard_process`, the last lock, for what the seams cannot reach (an egress built without them,
  a future test that forgets them): while a security test runs, every socket `connect` in the
  test process to an address outside loopback, and every real DNS lookup of a name, is refused
  before the system call and recorded as a violation. Loopback, unix sockets and numeric
  loopback lookups go through.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from typing import Any

from sidecar.egress import Egress, EgressLimits
from sidecar.egress.policy import EgressPolicy
from sidecar.egress.pool import ResolvedAddress, open_socket
from tests.support.loopback import LOOPBACK_POLICY
from tests.support.sidecars import Seams

LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
FAST_RETRIES = EgressLimits(backoff_initial_seconds=0.01, backoff_max_seconds=0.05)


def is_loopback_v4(host: str) -> bool:
    """True for an address in 127.0.0.0/8, the only place this suite may connect to."""
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]) in LOOPBACK_V4
    except ValueError:
        return False


@dataclass
class Network:
    """What the egress tried to do on the network during one test.

    `connections` holds every (host, port) a connector was asked to connect to, loopback
    included; `violations` those outside 127.0.0.0/8 (refused, never opened); `lookups` every
    name given to the resolver; `dns` the fake resolver's answers (a list of addresses, or a
    list of such lists answered in turn, the last one repeated).
    """

    connections: list[tuple[str, int]] = field(default_factory=list)
    violations: list[tuple[str, int]] = field(default_factory=list)
    lookups: list[str] = field(default_factory=list)
    dns: dict[str, Any] = field(default_factory=dict)
    excused: list[tuple[str, int]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def record_connection(self, host: str, port: int) -> bool:
        """Record an attempt; True when it may go ahead (loopback)."""
        with self._lock:
            self.connections.append((host, port))
            if is_loopback_v4(host):
                return True
            self.violations.append((host, port))
            return False

    def record_lookup(self, host: str) -> int:
        """Record a lookup; the number of earlier lookups of the same name."""
        with self._lock:
            earlier = self.lookups.count(host)
            self.lookups.append(host)
            return earlier

    def non_loopback_attempts(self) -> list[tuple[str, int]]:
        """Connection attempts outside 127.0.0.0/8 (each one refused, and a violation)."""
        with self._lock:
            return list(self.violations)

    def excuse_violations(self) -> list[tuple[str, int]]:
        """Take the refused attempts out of the violations: a strict-xfail test that shows a
        guard gap uses them as its evidence (they were refused, no socket was opened)."""
        with self._lock:
            refused, self.violations[:] = list(self.violations), []
            self.excused += refused
            return refused

    def refuse_unless_loopback(self, sockaddr: Any) -> None:
        """The second lock, on the address `connect` is given: non-loopback is refused."""
        host, port = str(sockaddr[0]), int(sockaddr[1])
        if not is_loopback_v4(host):
            with self._lock:
                self.violations.append((host, port))
            raise OSError(errno.ENETUNREACH, f"test guard: {host}:{port} is not loopback")


def _is_local(address: Any) -> bool:
    """A unix socket path, or an (host, port, ...) tuple on loopback."""
    if isinstance(address, str | bytes):
        return True
    host = str(address[0])
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


@contextlib.contextmanager
def guard_process(network: Network) -> Iterator[None]:
    """Refuse (and record) every non-loopback connect and every name lookup in this process.

    Patched on the socket class and module, which asyncio looks up at call time, so
    it holds whatever connector or resolver an egress was built with.
    """
    real_connect, real_connect_ex = socket.socket.connect, socket.socket.connect_ex
    real_getaddrinfo = socket.getaddrinfo

    def refuse(address: Any) -> OSError:
        with network._lock:
            network.violations.append((str(address[0]), int(address[1])))
        return OSError(errno.ENETUNREACH, f"test guard: {address[0]} is not loopback")

    def connect(self: socket.socket, address: Any) -> None:
        if not _is_local(address):
            raise refuse(address)
        real_connect(self, address)

    def connect_ex(self: socket.socket, address: Any) -> int:
        if not _is_local(address):
            return refuse(address).errno or errno.ENETUNREACH
        return real_connect_ex(self, address)

    def getaddrinfo(host: Any, port: Any, *args: Any, **kwargs: Any) -> Any:
        text = host.decode() if isinstance(host, bytes) else str(host)
        if host is not None and not _is_local((text, 0)):
            network.record_lookup(text)
            with network._lock:
                network.violations.append((text, int(port or 0)))
            raise socket.gaierror(socket.EAI_NONAME, f"test guard: no real DNS for {text!r}")
        return real_getaddrinfo(host, port, *args, **kwargs)

    socket.socket.connect = connect  # type: ignore[method-assign]
    socket.socket.connect_ex = connect_ex  # type: ignore[method-assign]
    socket.getaddrinfo = getaddrinfo
    try:
        yield
    finally:
        socket.socket.connect = real_connect  # type: ignore[method-assign]
        socket.socket.connect_ex = real_connect_ex  # type: ignore[method-assign]
        socket.getaddrinfo = real_getaddrinfo


class RecordingOpener:
    """The egress's socket seam: records every address it is asked to connect to and refuses,
    without opening a socket, anything outside 127.0.0.0/8."""

    def __init__(self, network: Network) -> None:
        self._network = network

    async def __call__(self, address: ResolvedAddress) -> socket.socket:
        if not self._network.record_connection(address.host, address.port):
            raise OSError(errno.ENETUNREACH, "test guard: not a loopback address")
        self._network.refuse_unless_loopback(address.sockaddr)
        return await open_socket(address)


class FakeResolver:
    """Canned answers from `network.dns`; every lookup recorded; unknown names fail (NXDOMAIN)."""

    def __init__(self, network: Network) -> None:
        self._network = network

    async def resolve(self, host: str, port: int) -> list[ResolvedAddress]:
        earlier = self._network.record_lookup(host)
        answer = self._network.dns.get(host.rstrip(".").lower())
        if answer is None:
            raise OSError(errno.ENOENT, f"{host} is not in the test's fake DNS")
        if answer and isinstance(answer[0], list):  # answered in turn: DNS rebinding
            answer = answer[min(earlier, len(answer) - 1)]
        return [_resolved(address, port) for address in answer]


def _resolved(address: str, port: int) -> ResolvedAddress:
    """A canned answer as a resolver returns it (a zone the machine lacks: scope 0; such an
    address is refused by the guard anyway)."""
    try:
        return ResolvedAddress.of(address, port)
    except OSError:
        bare = address.partition("%")[0]
        return ResolvedAddress(address, port, socket.AF_INET6, (bare, port, 0, 0))


def recording_seams(network: Network) -> Seams:
    """The composition root's egress seams: the recording socket opener and the fake resolver."""
    return Seams(resolver=FakeResolver(network), connector_factory=RecordingOpener(network))


@contextlib.asynccontextmanager
async def recording_egress(
    network: Network,
    policy: EgressPolicy = LOOPBACK_POLICY,
    limits: EgressLimits | None = None,
    **transport_options: Any,
) -> AsyncIterator[Egress]:
    """An Egress with the recording opener and the fake resolver, closed on exit;
    `transport_options` replace fields of the limits (`dns_cache_seconds=0`,
    `keepalive_seconds=0`)."""
    egress = Egress(
        policy,
        dataclasses.replace(limits or FAST_RETRIES, **transport_options),
        resolver=FakeResolver(network),
        connector_factory=RecordingOpener(network),
    )
    try:
        yield egress
    finally:
        await egress.aclose()
