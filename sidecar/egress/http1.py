"""HTTP/1.1 on one connection: the request head written by us, the answer parsed by llhttp.

`Connection` is an asyncio protocol carrying one exchange at a time (`pool.Pool` keeps them):

    exchange(request head, body, head=..., cap=...)
      ├ the request line and headers as `request_head` wrote them (the target byte for byte;
      │ Host, Content-Length and aiohttp's default Accept / Content-Type added when absent)
      └ the response parsed by llhttp: 1xx skipped; HEAD, 204 and 304 without a body; chunked
        or Content-Length or until the connection closes; the head at most HEAD_BYTES and
        MAX_HEADERS headers of MAX_FIELD_BYTES each; the body (de-chunked, still encoded)
        counted against `cap`, a declared Content-Length over it refused before any body byte

`reusable` after an exchange says whether the connection may carry another: only after a
response read to its end that lets it stay open (HTTP/1.1 without `Connection: close`, not HEAD);
every failure closes it. There is no clock here: the egress's budget cancels the attempt, and
whoever awaited the exchange closes the connection then.

httptools, not h11: llhttp is the parser Node.js ships, maintained and fuzzed, in C; httptools is
MagicStack's binding (uvicorn's default), a callback per header and body chunk. h11 is pure Python
and would parse every byte in the interpreter, the cost this client exists to remove.
"""

from __future__ import annotations

import asyncio
import functools
import re
from collections.abc import Callable, Sequence
from typing import Final, NamedTuple, cast

import httptools

HEAD_BYTES: Final = 64 * 1024
MAX_HEADERS: Final = 128  # aiohttp's limits, kept
MAX_FIELD_BYTES: Final = 8190
_TOKEN = re.compile(r"[!#$%&'*+\-.^_`|~0-9A-Za-z]+")
_FRAMING: Final = frozenset({"content-length", "transfer-encoding"})  # the body's own, always
_UNSENDABLE_HEADER: Final = "a header name or value cannot be sent (line break, NUL or space)"


@functools.lru_cache(maxsize=1024)
def _is_token(text: str) -> bool:
    """Whether a method or header name is an HTTP token, kept per spelling (they come from
    connectors: the same few on every call)."""
    return _TOKEN.fullmatch(text) is not None


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
    """The status, the headers folded (names lower-cased, a repeated header's values joined
    with ", ", RFC 9110 5.3; values as UTF-8, else Latin-1) and the body de-chunked (still
    encoded)."""

    status: int
    headers: dict[str, str]
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
    if not _is_token(method):
        raise RequestError("the method is not an HTTP token")
    lines = [f"{method} {url.target} HTTP/1.1\r\n"]
    present: set[str] = set()
    for name, value in headers:
        lowered = name.lower()
        if lowered in _FRAMING:
            continue
        if not _is_token(name):
            raise RequestError(_UNSENDABLE_HEADER)
        if "\r" in value or "\n" in value or "\0" in value:
            raise RequestError(_UNSENDABLE_HEADER)
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


class Connection(asyncio.Protocol):
    """One connection and the response being read on it (one at a time); `on_closed` is told
    when it closes, by either side."""

    def __init__(
        self,
        key: tuple[str, str, int],
        on_closed: Callable[[Connection], None],
        loop: asyncio.AbstractEventLoop,
    ) -> None:
        self.key = key
        # Its transport's loop, kept: Python 3.11's get_running_loop() makes a getpid syscall.
        self._loop = loop
        self.idle_since = 0.0
        self.reused = False
        self._on_closed = on_closed
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
        self._headers: dict[str, str] = {}
        self._header_count = 0
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
        waiter: asyncio.Future[Response] = self._loop.create_future()
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

    def close(self, *, abort: bool = False) -> None:
        """Close it (TLS says close_notify first); `abort` drops it at once, for a shutdown
        that will not wait for the peer."""
        self._broken = True
        if self._transport is not None and not self._closed:
            if abort:
                self._transport.abort()
            else:
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
        self._on_closed(self)
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
        if self._header_count >= MAX_HEADERS or len(name) + len(value) > MAX_FIELD_BYTES:
            self._failure = MalformedResponseError("a response header is too large, or too many")
            raise _StopParsingError
        if b"\0" in value:
            self._failure = MalformedResponseError("a response header holds a NUL")
            raise _StopParsingError
        self._header_count += 1
        # Folded as it arrives: one pass over the headers, not a list kept to be walked again.
        key = name.decode("latin-1").lower()
        raw = value.rstrip(b" \t")
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            text = raw.decode("latin-1")
        headers = self._headers
        headers[key] = f"{headers[key]}, {text}" if key in headers else text
        if key == "content-length":
            self._framed = True
            length = raw.strip()
            if length.isdigit() and int(length) > self._cap:
                self._failure = BodyTooLargeError("declared")
                raise _StopParsingError
        elif key == "transfer-encoding":
            self._framed = True

    def on_headers_complete(self) -> None:
        status = self._parser.get_status_code()
        if 100 <= status < 200 and status != 101:
            self._interim = True  # 1xx: the real answer follows
            self._headers = {}
            self._header_count = 0
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
    """Raised in a parser callback to stop parsing; the reason is in `Connection._failure`."""
