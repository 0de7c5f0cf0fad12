"""Raw asyncio servers on 127.0.0.1 for answers no HTTP framework will produce.

`RawServers` runs them (drip, silence, garbage ...) in a background thread, with per-server
counts of connections, requests and peak concurrency; `answering` and `silent` are handlers.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass, field

from tests.support.loopback import HOST

START_DEADLINE_SECONDS = 10.0
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
