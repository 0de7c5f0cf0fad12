"""Real loopback HTTP upstreams for tests: the business APIs the sidecar calls.

`Upstream` runs, in a background thread with its own event loop, three servers bound to
127.0.0.1 on ports the kernel picks:

- an aiohttp application (`url(path)`) with the behaviours below, a programmable route table
  (`respond`, `route`), a record of every request (`requests`, `hits`, `last`) and a count of
  accepted TCP connections (`connections`, to see keep-alive); `reset()` forgets all three when
  one Upstream serves many tests;
- a raw asyncio server (`raw_url(path)`) for answers no HTTP framework will produce;
- a connection counter (`trap_url`, `trap_connections`) that accepts and closes connections, to
  prove nothing was sent somewhere (e.g. to a proxy named in HTTP_PROXY).

Built-in paths of the aiohttp server:

    /orders/{number}     X-API-Key must be ORDER_API_KEY (else 401 JSON); a known order is 200
                         with ~1 KB of JSON (ORDERS), an unknown one 404 JSON
    /status/{code}       that status with {"status": code} as JSON
    /json                200 with FIXED_DOCUMENT (the body condition tables read it)
    /html                200 text/html (not JSON)
    /empty               204, no body
    /slow                sleeps SLOW_SECONDS, then 200 JSON
    /drip                headers, then one byte every DRIP_INTERVAL_SECONDS (DRIP_BYTES in all)
    /huge                HUGE_BYTES of JSON with a Content-Length
    /huge-stalled        declares HUGE_BYTES, then sends nothing for SLOW_SECONDS
    /huge-chunked        HUGE_BYTES, chunked, without a Content-Length
    /redirect            302 to /redirected (which answers 200; hits show whether it was followed)
    /echo/...            200 with what arrived: method, raw path, raw query, headers, body

Raw server paths: `/reset` sends the headers and part of the body, then resets the connection
(RST); the paths of MALFORMED answer bytes that break HTTP/1.1 (`/garbage`: not a status line at
all), then close.

`closed_port()` gives a port nothing listens on (connection refused). Every sleep is bounded, and
`close()` stops the servers, cancels in-flight handlers and closes the loop, so nothing leaks
under `filterwarnings = error`.

Usage::

    upstream = Upstream()
    upstream.respond("/teapot", status=418, json={"short": "stout"})
    upstream.url("/teapot")    # 'http://127.0.0.1:40123/teapot'
    upstream.close()
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import struct
import threading
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from tests.support.loopback import HOST

START_DEADLINE_SECONDS = 10.0
ORDER_API_KEY = "upstream-key-5bd1c0ffee"
SLOW_SECONDS = 3.0
DRIP_INTERVAL_SECONDS = 0.3
DRIP_BYTES = 20
HUGE_BYTES = 2 * 1024 * 1024  # over the default cap of 1 MiB
RESET_DECLARED_BYTES = 4096
RESET_SENT_BYTES = 100
HANDLER_SHUTDOWN_SECONDS = 0.5

ORDERS: dict[str, dict[str, Any]] = {
    "A-10023": {
        "order_number": "A-10023",
        "status": "shipped",
        "carrier": "UPS",
        "tracking_number": "1Z999AA10123456784",
        "eta": "2026-05-12",
        "total": "149.90",
        "currency": "USD",
        "customer": {"name": "Ada Lovelace", "email": "ada@example.com", "tier": "gold"},
        "shipping_address": {
            "line1": "221B Baker Street",
            "city": "Chicago",
            "postal_code": "60601",
            "country": "US",
        },
        "items": [
            {
                "sku": "BOOK-001",
                "title": "Notes on the Analytical Engine",
                "qty": 1,
                "price": 49.9,
                "status": "shipped",
            },
            {
                "sku": "PEN-042",
                "title": "Fountain pen",
                "qty": 2,
                "price": 25.0,
                "status": "shipped",
            },
            {
                "sku": "INK-007",
                "title": "Ink, blue-black",
                "qty": 2,
                "price": 25.0,
                "status": "shipped",
            },
        ],
        "notes": "Leave the parcel with the concierge if nobody answers the door.",
        "history": [
            {"at": "2026-05-08T09:12:00Z", "event": "ordered"},
            {"at": "2026-05-09T14:30:00Z", "event": "packed"},
            {"at": "2026-05-10T08:05:00Z", "event": "shipped"},
        ],
    },
    "A-10024": {
        "order_number": "A-10024",
        "status": "processing",
        "carrier": None,
        "eta": None,
        "total": "12.00",
        "items": [],
    },
}

FIXED_DOCUMENT: dict[str, Any] = {
    "count": 5,
    "count_text": "05",
    "price": "5.0",
    "flag": True,
    "flag_text": "true",
    "name": "Alice",
    "tags": ["new", "vip", "gift"],
    "empty_list": [],
    "empty_text": "",
    "nothing": None,
    "code": "AB1234",
    "order": {"total": 150.5, "customer": {"tier": "gold"}},
    "items": [
        {"sku": "a", "status": "shipped", "qty": 1},
        {"sku": "b", "status": "shipped", "qty": 3},
        {"sku": "c", "status": "pending", "qty": 2},
    ],
    "ratio": 0.25,
}
"""The body /json answers, so condition tables can name exactly what they read."""

ECHO_PREFIX = "/echo/"
MALFORMED: dict[str, bytes] = {
    "/garbage": b"THIS IS NOT HTTP AT ALL\r\n\r\n",
    "/bad-content-length": b"HTTP/1.1 200 OK\r\nContent-Length: abc\r\n\r\n{}",
    "/header-without-colon": b"HTTP/1.1 200 OK\r\nNo colon here\r\nContent-Length: 2\r\n\r\n{}",
    "/bad-chunk-size": (
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n"
    ),
}
"""Raw-server answers that no HTTP/1.1 client may accept, by path."""


@dataclass(frozen=True)
class RecordedRequest:
    """One request as the aiohttp server received it.

    `raw_path` is the request target as sent on the wire (still percent-encoded, query
    included), `query` its raw query string; `path` is decoded. `headers` keeps the names as
    sent, in order.
    """

    method: str
    raw_path: str
    path: str
    query: str
    headers: tuple[tuple[str, str], ...]
    body: bytes

    def header(self, name: str) -> str | None:
        """The first value of a header, looked up case-insensitively."""
        wanted = name.lower()
        return next((value for key, value in self.headers if key.lower() == wanted), None)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


class Upstream:
    """Loopback HTTP upstreams in a background thread; see the module docstring."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.connections = 0
        self.trap_connections = 0
        self.port = self.raw_port = self.trap_port = 0
        self._custom: dict[str, Handler] = {}
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self._run, name="test-upstream", daemon=True)
        self._thread.start()
        if not self._ready.wait(START_DEADLINE_SECONDS):
            raise TimeoutError("the test upstream did not start in time")
        if self._error is not None:
            raise self._error

    # -- addresses ------------------------------------------------------------------------

    def url(self, path: str) -> str:
        """An http:// URL on the aiohttp server."""
        return f"http://{HOST}:{self.port}{path}"

    def https_url(self, path: str) -> str:
        """An https:// URL on the same plain-HTTP port: every TLS handshake fails."""
        return f"https://{HOST}:{self.port}{path}"

    def raw_url(self, path: str) -> str:
        """An http:// URL on the raw (misbehaving) server."""
        return f"http://{HOST}:{self.raw_port}{path}"

    @property
    def trap_url(self) -> str:
        """A URL whose server counts connections and closes them without answering."""
        return f"http://{HOST}:{self.trap_port}"

    # -- programming ----------------------------------------------------------------------

    def route(self, path: str, handler: Handler) -> None:
        """Answer requests to exactly `path` (any method) with `handler`; wins over built-ins."""
        self._custom[path] = handler

    def respond(
        self,
        path: str,
        *,
        status: int = 200,
        json: Any = None,
        body: bytes | None = None,
        headers: Mapping[str, str] | None = None,
    ) -> None:
        """Answer `path` with a canned response: `json` as JSON, else `body` as given."""
        payload = _json_bytes(json) if body is None else body
        content_type = {"Content-Type": "application/json"} if body is None else {}

        async def canned(request: web.Request) -> web.StreamResponse:
            return web.Response(
                status=status, body=payload, headers={**content_type, **(headers or {})}
            )

        self.route(path, canned)

    # -- observing ------------------------------------------------------------------------

    def hits(self, path_prefix: str = "") -> int:
        """How many requests arrived whose decoded path starts with `path_prefix`."""
        return sum(1 for request in list(self.requests) if request.path.startswith(path_prefix))

    def last(self, path_prefix: str = "") -> RecordedRequest:
        """The latest request whose path starts with `path_prefix` (AssertionError if none)."""
        matching = [r for r in list(self.requests) if r.path.startswith(path_prefix)]
        assert matching, f"no request to {path_prefix!r} arrived"
        return matching[-1]

    def reset(self) -> None:
        """Forget recorded requests, connection counts and programmed routes (shared use)."""
        self.requests.clear()
        self._custom.clear()
        self.connections = self.trap_connections = 0

    # -- lifecycle ------------------------------------------------------------------------

    def close(self) -> None:
        """Stop every server, cancel in-flight handlers, close the loop and join the thread."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(START_DEADLINE_SECONDS)
        assert not self._thread.is_alive(), "the test upstream did not stop"

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        runner = web.AppRunner(
            self._application(),
            handle_signals=False,
            handler_cancellation=True,
            shutdown_timeout=HANDLER_SHUTDOWN_SECONDS,
            access_log=None,
        )
        servers: list[asyncio.AbstractServer] = []
        raw_tasks: set[asyncio.Task[None]] = set()
        try:
            await runner.setup()
            web_server = runner.server
            assert web_server is not None

            def accept() -> asyncio.BaseProtocol:
                self.connections += 1
                return web_server()

            http = await self._loop.create_server(accept, HOST, 0)
            raw = await asyncio.start_server(_tracked(self._raw, raw_tasks), HOST, 0)
            trap = await asyncio.start_server(_tracked(self._trap, raw_tasks), HOST, 0)
            servers = [http, raw, trap]
            self.port, self.raw_port, self.trap_port = (
                int(server.sockets[0].getsockname()[1]) for server in servers
            )
        except BaseException as exc:
            self._error = exc
        finally:
            self._ready.set()
        if self._error is None:
            await self._stop.wait()
        for server in servers:
            server.close()
        for task in list(raw_tasks):
            task.cancel()
        await asyncio.gather(*raw_tasks, return_exceptions=True)
        await runner.cleanup()

    # -- the aiohttp application ----------------------------------------------------------

    def _application(self) -> web.Application:
        app = web.Application(middlewares=[self._record_and_route])
        app.router.add_get("/orders/{number}", _order)
        app.router.add_route("*", "/status/{code:[0-9]{3}}", _status)
        app.router.add_get("/json", _fixed_json)
        app.router.add_get("/html", _html)
        app.router.add_get("/empty", _empty)
        app.router.add_get("/slow", _slow)
        app.router.add_get("/drip", _drip)
        app.router.add_get("/huge", _huge)
        app.router.add_get("/huge-stalled", _huge_stalled)
        app.router.add_get("/huge-chunked", _huge_chunked)
        app.router.add_get("/redirect", _redirect)
        app.router.add_get("/redirected", _redirected)
        app.router.add_route("*", ECHO_PREFIX + "{tail:.*}", _echo)
        app.router.add_route("*", "/{tail:.*}", _not_found)
        return app

    @web.middleware
    async def _record_and_route(self, request: web.Request, handler: Handler) -> Any:
        body = await request.read()
        self.requests.append(
            RecordedRequest(
                method=request.method,
                raw_path=request.raw_path,
                path=request.path,
                query=request.raw_path.partition("?")[2],
                headers=_raw_headers(request),
                body=body,
            )
        )
        custom = self._custom.get(request.path)
        return await (custom or handler)(request)

    # -- raw servers ----------------------------------------------------------------------

    async def _raw(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), SLOW_SECONDS)
            request_line = head.split(b"\r\n", 1)[0].decode("latin-1")
            path = request_line.split(" ")[1] if request_line.count(" ") >= 2 else ""
            if path.startswith("/reset"):
                writer.write(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    + f"Content-Length: {RESET_DECLARED_BYTES}\r\n\r\n".encode()
                    + b'{"padding": "'
                    + b"x" * (RESET_SENT_BYTES - 13)
                )
                await writer.drain()
                _reset(writer)
                return
            writer.write(MALFORMED.get(path, MALFORMED["/garbage"]))
            await writer.drain()
        except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError, TimeoutError):
            pass
        await _close(writer)

    async def _trap(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.trap_connections += 1
        await _close(writer)


# ---------------------------------------------------------------------------------------------
# Built-in handlers
# ---------------------------------------------------------------------------------------------


def _raw_headers(request: web.Request) -> tuple[tuple[str, str], ...]:
    """The request's headers as sent: original names, original order."""
    return tuple(
        (name.decode("latin-1"), value.decode("latin-1")) for name, value in request.raw_headers
    )


def _json_bytes(data: Any) -> bytes:
    return json.dumps(data).encode()


async def _order(request: web.Request) -> web.StreamResponse:
    if request.headers.get("X-API-Key") != ORDER_API_KEY:
        return web.json_response({"error": "missing or wrong API key"}, status=401)
    order = ORDERS.get(request.match_info["number"])
    if order is None:
        return web.json_response({"error": "no such order"}, status=404)
    return web.json_response(order)


async def _status(request: web.Request) -> web.StreamResponse:
    code = int(request.match_info["code"])
    return web.json_response({"status": code}, status=code)


async def _fixed_json(request: web.Request) -> web.StreamResponse:
    return web.json_response(
        FIXED_DOCUMENT, headers={"X-Request-Id": "req-42", "X-Rate-Limit": "99"}
    )


async def _html(request: web.Request) -> web.StreamResponse:
    return web.Response(text="<html><body>Maintenance</body></html>", content_type="text/html")


async def _empty(request: web.Request) -> web.StreamResponse:
    return web.Response(status=204)


async def _slow(request: web.Request) -> web.StreamResponse:
    await asyncio.sleep(SLOW_SECONDS)
    return web.json_response({"slow": True})


async def _drip(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = DRIP_BYTES
    await response.prepare(request)
    for _ in range(DRIP_BYTES):
        await response.write(b" ")
        await asyncio.sleep(DRIP_INTERVAL_SECONDS)
    return response


async def _huge(request: web.Request) -> web.StreamResponse:
    padding = "x" * (HUGE_BYTES - 20)
    return web.Response(body=_json_bytes({"padding": padding}), content_type="application/json")


async def _huge_stalled(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.content_length = HUGE_BYTES
    await response.prepare(request)
    await asyncio.sleep(SLOW_SECONDS)
    return response


async def _huge_chunked(request: web.Request) -> web.StreamResponse:
    response = web.StreamResponse(headers={"Content-Type": "application/json"})
    response.enable_chunked_encoding()
    await response.prepare(request)
    chunk = b" " * 65536
    for _ in range(HUGE_BYTES // len(chunk) + 1):
        await response.write(chunk)
    await response.write_eof()
    return response


async def _redirect(request: web.Request) -> web.StreamResponse:
    return web.json_response({"moved": True}, status=302, headers={"Location": "/redirected"})


async def _redirected(request: web.Request) -> web.StreamResponse:
    return web.json_response({"redirected": True})


async def _echo(request: web.Request) -> web.StreamResponse:
    body = await request.read()
    try:
        parsed: Any = json.loads(body) if body else None
    except ValueError:
        parsed = None
    echoed = {
        "method": request.method,
        "raw_path": request.raw_path.partition("?")[0],
        "query": request.raw_path.partition("?")[2],
        "headers": [list(pair) for pair in _raw_headers(request)],
        "body": body.decode("utf-8", errors="replace"),
        "json": parsed,
    }
    return web.json_response(echoed)


async def _not_found(request: web.Request) -> web.StreamResponse:
    return web.json_response({"error": f"nothing at {request.path}"}, status=404)


# ---------------------------------------------------------------------------------------------
# Sockets
# ---------------------------------------------------------------------------------------------


def _tracked(
    handler: Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]],
    tasks: set[asyncio.Task[None]],
) -> Callable[[asyncio.StreamReader, asyncio.StreamWriter], Awaitable[None]]:
    """Wrap a raw connection handler so close() can cancel connections still open."""

    async def run(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        tasks.add(task)  # type: ignore[arg-type]
        try:
            await handler(reader, writer)
        except asyncio.CancelledError:
            writer.transport.abort()
            raise
        finally:
            tasks.discard(task)  # type: ignore[arg-type]

    return run


def _reset(writer: asyncio.StreamWriter) -> None:
    """Close with an RST instead of a FIN: SO_LINGER on with a zero timeout."""
    sock = writer.get_extra_info("socket")
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    writer.transport.abort()


async def _close(writer: asyncio.StreamWriter) -> None:
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()


def closed_port() -> int:
    """A loopback port nothing listens on: bound to get a free number, then closed."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])
