"""The security suite's safety net: loopback only, and every attempt counted.

Nothing in this suite may send a packet anywhere but loopback, even if the egress guard under
test is broken. So every egress built here (directly, or by an in-process sidecar) gets:

- `RecordingConnector`, an `aiohttp.TCPConnector` that records every (host, port) it is asked
  to connect to and refuses, before any socket exists, anything outside 127.0.0.0/8 (counted as
  a violation). Its socket factory refuses the same addresses again, a second lock on the
  same door in case aiohttp's internals change.
- `FakeResolver`, canned DNS answers per name (recording every lookup): no real DNS query is
  ever made for a hostile name. A name it does not know fails like NXDOMAIN.

The autouse `network` fixture installs both into `sidecar.server` (so in-process sidecars use
them) and replaces the system resolver of `sidecar.egress.transport` with one that refuses
everything; at teardown it fails the test if any violation was recorded.

`RawServers` runs raw asyncio servers on 127.0.0.1 (drip, silence, garbage ...) in a background
thread, with per-server counts of connections, requests and peak concurrency.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import functools
import ipaddress
import socket
import threading
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import pytest
from aiohttp.abc import AbstractResolver, ResolveResult
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

import sidecar.egress.transport
import sidecar.server
from sidecar.egress import Egress, EgressLimits
from sidecar.egress.policy import EgressPolicy

HOST = "127.0.0.1"
LOOPBACK_V4 = ipaddress.ip_network("127.0.0.0/8")
START_DEADLINE_SECONDS = 10.0
# The policy of an operator who opened exactly 127.0.0.1 over http (the loopback controls).
LOOPBACK_POLICY = EgressPolicy(allow_cidrs=("127.0.0.1/32",), allow_http_hosts=(HOST,))
FAST_RETRIES = EgressLimits(backoff_initial_seconds=0.01, backoff_max_seconds=0.05)


# ---------------------------------------------------------------------------------------------
# Recording every connection attempt and lookup
# ---------------------------------------------------------------------------------------------


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

    def socket_factory(self, addr_info: Any) -> socket.socket:
        """aiohappyeyeballs' socket step: the second lock, refusing non-loopback addresses."""
        family, kind, proto, _, address = addr_info
        host, port = address[0], address[1]
        if not is_loopback_v4(host):
            with self._lock:
                self.violations.append((host, port))
            raise OSError(errno.ENETUNREACH, f"test guard: {host}:{port} is not loopback")
        return socket.socket(family, kind, proto)


class RecordingConnector(aiohttp.TCPConnector):
    """A TCPConnector that records every address it is asked to connect to and refuses, without
    opening a socket, anything outside 127.0.0.0/8."""

    def __init__(self, *, network: Network, **kwargs: Any) -> None:
        kwargs.setdefault("socket_factory", network.socket_factory)
        super().__init__(**kwargs)
        self._network = network

    async def _wrap_create_connection(
        self,
        *args: Any,
        addr_infos: list[Any],
        req: Any,
        timeout: Any,  # noqa: ASYNC109 (aiohttp's signature)
        client_error: type[Exception] = aiohttp.ClientConnectorError,
        **kwargs: Any,
    ) -> Any:
        allowed = [
            self._network.record_connection(address[0], address[1]) for *_, address in addr_infos
        ]
        if not all(allowed):
            refused = OSError(errno.ENETUNREACH, "test guard: not a loopback address")
            raise client_error(req.connection_key, refused)
        return await super()._wrap_create_connection(
            *args,
            addr_infos=addr_infos,
            req=req,
            timeout=timeout,
            client_error=client_error,
            **kwargs,
        )


class FakeResolver(AbstractResolver):
    """Canned answers from `network.dns`; every lookup recorded; unknown names fail (NXDOMAIN)."""

    def __init__(self, network: Network) -> None:
        self._network = network

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        earlier = self._network.record_lookup(host)
        answer = self._network.dns.get(host.rstrip(".").lower())
        if answer is None:
            raise OSError(errno.ENOENT, f"{host} is not in the test's fake DNS")
        if answer and isinstance(answer[0], list):  # answered in turn: DNS rebinding
            answer = answer[min(earlier, len(answer) - 1)]
        return [
            ResolveResult(
                hostname=host,
                host=address,
                port=port,
                family=socket.AF_INET6 if ":" in address else socket.AF_INET,
                proto=0,
                flags=socket.AI_NUMERICHOST,
            )
            for address in answer
        ]

    async def close(self) -> None:
        return None


class RefusingResolver(AbstractResolver):
    """Stands in for the system resolver: this suite never makes a real DNS query."""

    def __init__(self, network: Network) -> None:
        self._network = network

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        self._network.record_lookup(host)
        raise OSError(errno.ENOENT, f"real DNS is off in the security suite ({host})")

    async def close(self) -> None:
        return None


def recording_egress_factory(network: Network) -> Callable[..., Egress]:
    """`Egress(policy, limits)` with the recording connector and the fake resolver."""

    def connector_factory(resolver: AbstractResolver) -> aiohttp.TCPConnector:
        return RecordingConnector(network=network, resolver=resolver)

    return functools.partial(
        Egress, resolver=FakeResolver(network), connector_factory=connector_factory
    )


# Totals over the session, reported at the end of the run (pytest_terminal_summary).
SESSION_TOTALS = {
    "tests": 0,
    "loopback connections": 0,
    "non-loopback attempts": 0,
    "refused as strict-xfail evidence": 0,
    "lookups": 0,
}


@pytest.fixture(autouse=True)
def network(monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    """Loopback only for every egress of the test; fails the test on any violation."""
    recorded = Network()
    monkeypatch.setattr(sidecar.server, "Egress", recording_egress_factory(recorded))
    monkeypatch.setattr(
        sidecar.egress.transport, "DefaultResolver", lambda: RefusingResolver(recorded)
    )
    yield recorded
    violations = recorded.non_loopback_attempts()
    SESSION_TOTALS["tests"] += 1
    loopback = len(recorded.connections) - len(violations) - len(recorded.excused)
    SESSION_TOTALS["loopback connections"] += loopback
    SESSION_TOTALS["non-loopback attempts"] += len(violations)
    SESSION_TOTALS["refused as strict-xfail evidence"] += len(recorded.excused)
    SESSION_TOTALS["lookups"] += len(recorded.lookups)
    assert violations == [], "a connection outside loopback was attempted"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many connections the security suite's egresses attempted, and where."""
    if SESSION_TOTALS["tests"]:
        figures = ", ".join(f"{name}: {count}" for name, count in SESSION_TOTALS.items())
        terminalreporter.write_line(f"security suite network record: {figures}")


@contextlib.asynccontextmanager
async def recording_egress(
    network: Network,
    policy: EgressPolicy = LOOPBACK_POLICY,
    limits: EgressLimits | None = None,
    **connector_options: Any,
) -> AsyncIterator[Egress]:
    """An Egress with the recording connector and the fake resolver, closed on exit."""

    def connector_factory(resolver: AbstractResolver) -> aiohttp.TCPConnector:
        return RecordingConnector(network=network, resolver=resolver, **connector_options)

    egress = Egress(
        policy,
        limits or FAST_RETRIES,
        resolver=FakeResolver(network),
        connector_factory=connector_factory,
    )
    try:
        yield egress
    finally:
        await egress.aclose()


# ---------------------------------------------------------------------------------------------
# Raw loopback servers for answers no HTTP framework will produce
# ---------------------------------------------------------------------------------------------

RawHandler = Callable[["RawServer", asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]
REQUEST_HEAD_LIMIT = 64 * 1024


@dataclass
class RawServer:
    """One raw server: its port and what it saw."""

    port: int
    accepted: int = 0
    requests: list[str] = field(default_factory=list)
    in_flight: int = 0
    peak_in_flight: int = 0

    def url(self, path: str = "/") -> str:
        return f"http://{HOST}:{self.port}{path}"


async def read_request(reader: asyncio.StreamReader) -> tuple[str, dict[str, str], bytes]:
    """Request line, headers (lower-cased names) and body of one HTTP/1.1 request."""
    head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), START_DEADLINE_SECONDS)
    lines = head.decode("latin-1").split("\r\n")
    headers: dict[str, str] = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        if name:
            headers[name.strip().lower()] = value.strip()
    length = int(headers.get("content-length", "0") or 0)
    body = await reader.readexactly(length) if length else b""
    return lines[0], headers, body


class RawServers:
    """Raw asyncio servers on 127.0.0.1 in a background thread; `close()` stops them all."""

    def __init__(self) -> None:
        self._loop = asyncio.new_event_loop()
        self._servers: list[asyncio.AbstractServer] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._thread = threading.Thread(target=self._loop.run_forever, name="raw-servers")
        self._thread.daemon = True
        self._thread.start()

    def serve(self, handler: RawHandler) -> RawServer:
        """Start a server that runs `handler` for every connection (after counting it)."""
        future = asyncio.run_coroutine_threadsafe(self._start(handler), self._loop)
        return future.result(START_DEADLINE_SECONDS)

    async def _start(self, handler: RawHandler) -> RawServer:
        record = RawServer(port=0)

        async def connection(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            task = asyncio.current_task()
            assert task is not None
            self._tasks.add(task)
            record.accepted += 1
            record.in_flight += 1
            record.peak_in_flight = max(record.peak_in_flight, record.in_flight)
            try:
                await handler(record, reader, writer)
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                pass
            except asyncio.CancelledError:
                writer.transport.abort()
                raise
            finally:
                record.in_flight -= 1
                self._tasks.discard(task)
                writer.close()

        server = await asyncio.start_server(connection, HOST, 0, limit=REQUEST_HEAD_LIMIT)
        self._servers.append(server)
        record.port = int(server.sockets[0].getsockname()[1])
        return record

    def close(self) -> None:
        """Stop every server, cancel every connection, stop the loop and join the thread."""

        async def stop() -> None:
            for server in self._servers:
                server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            for server in self._servers:
                await server.wait_closed()

        if self._thread.is_alive():
            asyncio.run_coroutine_threadsafe(stop(), self._loop).result(START_DEADLINE_SECONDS)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(START_DEADLINE_SECONDS)
        assert not self._thread.is_alive(), "the raw servers did not stop"
        self._loop.close()


@pytest.fixture
def raw_servers() -> Iterator[RawServers]:
    """Raw loopback servers, stopped at teardown."""
    servers = RawServers()
    yield servers
    servers.close()


def http_response(
    status: int = 200,
    body: bytes = b"{}",
    headers: Mapping[str, str] | None = None,
    reason: str = "X",
) -> bytes:
    """A complete HTTP/1.1 response with a Content-Length."""
    lines = [f"HTTP/1.1 {status} {reason}", f"Content-Length: {len(body)}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


def answering(*responses: bytes, hold_seconds: float = 0.0) -> RawHandler:
    """A handler answering each request with the next of `responses` (the last one repeated),
    after holding it `hold_seconds`; keep-alive connections are served until the client
    leaves."""
    remaining = list(responses)

    async def handler(
        server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        while True:
            try:
                request_line, _, _ = await read_request(reader)
            except asyncio.IncompleteReadError:
                return
            server.requests.append(request_line)
            if hold_seconds:
                await asyncio.sleep(hold_seconds)
            writer.write(remaining.pop(0) if len(remaining) > 1 else remaining[0])
            await writer.drain()

    return handler


async def silent(
    server: RawServer, reader: asyncio.StreamReader, writer: asyncio.StreamWriter
) -> None:
    """Reads the request and never answers (until the client leaves or the server stops)."""
    request_line, _, _ = await read_request(reader)
    server.requests.append(request_line)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(reader.read(), 30.0)


# ---------------------------------------------------------------------------------------------
# Talking to an in-process sidecar
# ---------------------------------------------------------------------------------------------

RPC_TIMEOUT = 10.0
OK_WHEN_2XX = {
    "target": "ok",
    "conditions": [
        {
            "subject": {"kind": "SUBJECT_KIND_STATUS"},
            "operator": "OPERATOR_STATUS_CLASS",
            "operand": "2xx",
        }
    ],
}


def connector_message(connector_id: str, url: str, **fields: Any) -> pb.Connector:
    """A LIVE connector as the proto message (fields as ParseDict data)."""
    data = {"id": connector_id, "status": "CONNECTOR_STATUS_LIVE", "url_template": url, **fields}
    return json_format.ParseDict(data, pb.Connector())


def register(
    stub: pb_grpc.RulesSidecarServiceStub,
    connector_id: str,
    url: str,
    *,
    metadata: Sequence[tuple[str, str]] | None = None,
    **fields: Any,
) -> pb.Connector:
    """RegisterConnector; the stored connector."""
    request = pb.RegisterConnectorRequest(connector=connector_message(connector_id, url, **fields))
    response: pb.RegisterConnectorResponse = stub.RegisterConnector(
        request, timeout=RPC_TIMEOUT, metadata=metadata
    )
    return response.connector


def evaluate_request(
    connector_id: str, variables: Mapping[str, Any] | None = None, *, explain: bool = False
) -> pb.EvaluateNodeRequest:
    """A node on `connector_id`: 2xx -> "ok", else "else", errors "error"."""
    data = {
        "node": {
            "id": "security-node",
            "connector_id": connector_id,
            "branches": [OK_WHEN_2XX],
            "else_target": "else",
            "error_target": "error",
        },
        "variables": dict(variables or {}),
        "explain": explain,
    }
    return json_format.ParseDict(data, pb.EvaluateNodeRequest())


def evaluate(
    stub: pb_grpc.RulesSidecarServiceStub,
    connector_id: str,
    variables: Mapping[str, Any] | None = None,
    *,
    explain: bool = False,
    timeout: float = RPC_TIMEOUT,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> pb.EvaluateNodeResponse:
    """EvaluateNode over the wire."""
    request = evaluate_request(connector_id, variables, explain=explain)
    response: pb.EvaluateNodeResponse = stub.EvaluateNode(
        request, timeout=timeout, metadata=metadata
    )
    return response


def verdict(response: pb.EvaluateNodeResponse) -> tuple[str, str]:
    """(outcome, reason) by enum name, for one-line assertions."""
    return pb.Outcome.Name(response.outcome), pb.Reason.Name(response.reason)


def error(reason: str) -> tuple[str, str]:
    return "OUTCOME_ERROR", f"REASON_{reason}"
