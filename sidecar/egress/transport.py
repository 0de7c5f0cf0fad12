"""One HTTP attempt on the shared pooled aiohttp session: guarded resolution, capped body.

The core's `OutboundRequest` goes to aiohttp as it is and the answer comes back as an
`HttpResponse`; no other HTTP library's types stand in between. httpx's Request and Response did,
over this same session, until `bench/transport_choice.py` measured what they cost: client CPU per
loopback GET (32 concurrent, median of 9 interleaved rounds) 142 us with them, 78 us for this
module, guard and caps included (ratio 0.53, 0.41-0.73 across rounds). httpx 0.28's own
transport (httpcore) collapses under concurrency on this machine (402-599 req/s at 32 concurrent
GETs, 1,650-2,400 us CPU per request): aiohttp it is.

- The URL is sent as rendered, byte for byte (`wire_url`): aiohttp gets it already encoded, so
  `%3A` stays `%3A`. Only what could never be sent is touched, as httpx did: characters a URL
  may not carry raw (space, non-ASCII ...) are percent-encoded, a non-ASCII host is
  IDNA-encoded, `.` and `..` segments are resolved, and control characters are refused.
  Redirect targets come from upstreams, so this matters there most.
- Names are resolved by `GuardedResolver`, which judges every address and refuses the name
  whole if any is forbidden; aiohttp then connects only to the addresses it returned, so there is
  no window for DNS rebinding. TLS still verifies the host name.
- The body is read raw and counted; content encodings are decoded here, in bounded steps, so a
  gzip bomb stops at the cap with memory to match. Unknown encodings are refused.
- Redirects are never followed here (the egress judges each hop); proxy environment variables
  are ignored; aiohttp's own timeouts are off (the egress's total budget is the only clock).
- Every foreign exception becomes a SendError through one table, `FAILURES`.
"""

from __future__ import annotations

import ipaddress
import re
import socket
import ssl
import zlib
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Final, NamedTuple
from urllib.parse import quote, urlsplit

import aiohttp
import yarl
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendError
from sidecar.core.model.failures import EvaluationFailure
from sidecar.core.model.outcome import Reason
from sidecar.egress.policy import EgressPolicy

ConnectorFactory = Callable[[AbstractResolver], aiohttp.TCPConnector]
CHUNK_BYTES = 64 * 1024


class DestinationBlockedError(EvaluationFailure):
    """Raised by the resolver: the name resolves to a forbidden address. One of our evaluation
    failures (BLOCKED_DESTINATION), never an OSError, so aiohttp does not mistake it for a DNS
    failure; `Transport.attempt` passes it on as a SendError."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.BLOCKED_DESTINATION, message)


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then judges every address before aiohttp connects."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            verdict = self._policy.judge_resolved(host, address)
            if not verdict.allowed:
                raise DestinationBlockedError(verdict.reason)
        return results

    async def close(self) -> None:
        await self._inner.close()


class Transport:
    """The process-wide pooled client. Create once; `aclose` on shutdown."""

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        max_connections: int,
        keepalive_seconds: float = 30.0,
        tls: ssl.SSLContext | None = None,
        resolver: AbstractResolver | None = None,
        connector_factory: ConnectorFactory | None = None,
    ) -> None:
        self._resolver = GuardedResolver(policy, resolver)
        tls_context = tls or ssl.create_default_context()
        self._connector_factory = connector_factory or (
            lambda guarded: aiohttp.TCPConnector(
                limit=max_connections,
                keepalive_timeout=keepalive_seconds,
                ssl=tls_context,
                resolver=guarded,
            )
        )
        self._session: aiohttp.ClientSession | None = None

    def _open(self) -> aiohttp.ClientSession:
        """Built on first use, inside the running event loop, as aiohttp requires."""
        self._session = aiohttp.ClientSession(
            connector=self._connector_factory(self._resolver),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),  # the egress's budget is the only clock
        )
        return self._session

    async def attempt(self, request: OutboundRequest, cap: int) -> HttpResponse:
        """One exchange of `request` as given (its headers are the ones on the wire, see
        `headers`); SendError with a reason on any failure. Budget enforced by the caller."""
        try:
            return await self._exchange(request, cap)
        except DestinationBlockedError as exc:
            raise SendError(exc.reason, exc.message) from exc
        except _FOREIGN as exc:
            raise failure_of(exc) from exc

    async def _exchange(self, request: OutboundRequest, cap: int) -> HttpResponse:
        session = self._session or self._open()
        response = await session.request(
            request.method,
            wire_url(request.url),
            headers=request.headers,
            data=request.body,
            allow_redirects=False,
            compress=None,
        )
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap))
            decoder = _decoder(response.headers.get("content-encoding", ""))
            body = bytearray()
            received = 0
            async for chunk in response.content.iter_chunked(CHUNK_BYTES):
                received += len(chunk)
                if received > cap:
                    raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap))
                body += decoder.decode(chunk, cap + 1 - len(body))
                if len(body) > cap or decoder.pending:
                    raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap, decoded=True))
            body += decoder.finish(cap + 1 - len(body))
            if len(body) > cap:
                raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap, decoded=True))
        finally:
            response.release()  # back to the pool, or closed if the body was not read to its end
        return HttpResponse(response.status, _folded(response.raw_headers), bytes(body))

    async def aclose(self) -> None:
        """Close every pooled connection."""
        if self._session is not None:
            await self._session.close()
            self._session = None


# -- the URL on the wire ------------------------------------------------------------------------

# What may not go raw in a path or a query (besides controls and non-ASCII): percent-encoded as
# httpx does (WHATWG's path and query percent-encode sets), so its URLs and ours are the same.
_PATH_ESCAPES = re.compile(r'[^\x21-\x7e]|["#<>?`{}]')
_QUERY_ESCAPES = re.compile(r'[^\x21-\x7e]|["#<>]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")


def wire_url(url: str) -> yarl.URL:
    """`url` as aiohttp must send it: already encoded, so aiohttp sends it byte for byte.

    A rendered URL is encoded already and goes out unchanged (`%3A` stays `%3A`); a redirect
    target from an upstream may need what httpx did to it: characters a URL may not carry raw
    percent-encoded (as UTF-8), a non-ASCII host IDNA-encoded, `.`/`..` segments resolved.
    Control characters are refused.

    >>> wire_url("https://api.example.com/a%3Ab/c d?q=caf\u00e9&r=%2F").raw_path_qs
    '/a%3Ab/c%20d?q=caf%C3%A9&r=%2F'
    """
    if _CONTROL.search(url):
        raise SendError(Reason.PROTOCOL_ERROR, "the URL holds a control character")
    parts = urlsplit(url)
    netloc, path, query = parts.netloc, parts.path, parts.query
    if not netloc.isascii():
        try:
            host = (parts.hostname or "").encode("idna").decode("ascii")
            netloc = host if parts.port is None else f"{host}:{parts.port}"
        except (UnicodeError, ValueError) as exc:
            raise SendError(Reason.PROTOCOL_ERROR, "the URL's host is not a valid name") from exc
    path = _PATH_ESCAPES.sub(_escape, _without_dot_segments(path))
    query = _QUERY_ESCAPES.sub(_escape, query)
    encoded = f"{parts.scheme}://{netloc}{path}" + (f"?{query}" if query else "")
    try:
        return yarl.URL(encoded, encoded=True)
    except (ValueError, UnicodeError) as exc:
        raise SendError(Reason.PROTOCOL_ERROR, "the URL cannot be sent") from exc


def _escape(match: re.Match[str]) -> str:
    return quote(match.group(), safe="")


def _without_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, as httpx applies it: `/a/./b/../c` is `/a/c`."""
    segments = path.split("/")
    if "." not in segments and ".." not in segments:
        return path
    kept: list[str] = []
    for segment in segments:
        if segment == "..":
            if kept and kept != [""]:
                kept.pop()
        elif segment != ".":
            kept.append(segment)
    return "/".join(kept)


# -- the response -------------------------------------------------------------------------------


def _folded(raw: tuple[tuple[bytes, bytes], ...]) -> dict[str, str]:
    """Header names lower-cased, repeated headers joined with ", " (RFC 9110 5.3)."""
    names: dict[str, str] = {}
    for raw_name, raw_value in raw:
        key = raw_name.decode("latin-1").lower()
        try:
            value = raw_value.decode("utf-8")
        except UnicodeDecodeError:
            value = raw_value.decode("latin-1")
        names[key] = f"{names[key]}, {value}" if key in names else value
    return names


class _Decoder:
    """Incremental content decoding with a bound on the output of each step."""

    def __init__(self, decompressor: Any | None) -> None:
        self._decompressor = decompressor

    @property
    def pending(self) -> bool:
        """Input left over because the output bound was reached: the body is over the cap."""
        return bool(self._decompressor is not None and self._decompressor.unconsumed_tail)

    def decode(self, chunk: bytes, limit: int) -> bytes:
        if self._decompressor is None:
            return chunk
        try:
            return bytes(self._decompressor.decompress(chunk, max(limit, 1)))
        except zlib.error as exc:
            raise SendError(Reason.PROTOCOL_ERROR, "the response body is not valid gzip") from exc

    def finish(self, limit: int) -> bytes:
        if self._decompressor is None:
            return b""
        return bytes(self._decompressor.decompress(b"", max(limit, 1)))


def _decoder(encoding: str) -> _Decoder:
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return _Decoder(None)
    if name in ("gzip", "x-gzip"):
        return _Decoder(zlib.decompressobj(16 + zlib.MAX_WBITS))
    if name == "deflate":
        return _Decoder(zlib.decompressobj())
    raise SendError(Reason.PROTOCOL_ERROR, f"unsupported content encoding {encoding[:40]!r}")


def _too_large(cap: int, *, decoded: bool = False) -> str:
    what = "decoded body" if decoded else "response body"
    return f"the {what} is larger than the connector's limit of {cap} bytes"


# -- foreign exceptions -------------------------------------------------------------------------


class Failure(NamedTuple):
    """What a foreign exception means: its reason, a message safe to return to a caller, and
    whether trying again cannot repeat a side effect."""

    reason: Reason
    message: str
    retryable: bool = False


_REFUSED = "the upstream refused the connection"
_TLS = "the TLS handshake or certificate check failed"
_TIMEOUT = "the upstream did not answer in time"
_CLOSED = "the upstream closed the connection early"
_MALFORMED = "the upstream sent a malformed response"

# aiohttp, asyncio, ssl and OS exceptions to what they mean. The first type that matches wins,
# so a subclass comes before its base (a DNS failure is also a connector error).
FAILURES: Final[Mapping[type[Exception], Failure]] = {
    aiohttp.ClientConnectorDNSError: Failure(
        Reason.DNS_ERROR, "the upstream host name could not be resolved"
    ),
    aiohttp.ClientConnectorCertificateError: Failure(Reason.TLS_ERROR, _TLS),
    aiohttp.ClientSSLError: Failure(Reason.TLS_ERROR, _TLS),
    ssl.SSLError: Failure(Reason.TLS_ERROR, _TLS),
    # No connection was ever established: retrying cannot repeat a side effect.
    aiohttp.ClientConnectorError: Failure(Reason.CONNECT_ERROR, _REFUSED, retryable=True),
    aiohttp.ServerTimeoutError: Failure(Reason.TIMEOUT, _TIMEOUT),
    TimeoutError: Failure(Reason.TIMEOUT, _TIMEOUT),
    aiohttp.ServerDisconnectedError: Failure(Reason.CONNECT_ERROR, _CLOSED),
    ConnectionError: Failure(Reason.CONNECT_ERROR, _CLOSED),
    aiohttp.ClientPayloadError: Failure(Reason.PROTOCOL_ERROR, _MALFORMED),
    aiohttp.ClientResponseError: Failure(Reason.PROTOCOL_ERROR, _MALFORMED),
    aiohttp.InvalidURL: Failure(Reason.PROTOCOL_ERROR, _MALFORMED),
}
_FOREIGN: Final[tuple[type[Exception], ...]] = (*FAILURES, aiohttp.ClientError)


def failure_of(exc: BaseException) -> SendError:
    """The SendError of a foreign exception, judged on it and the exceptions that caused it
    (aiohttp wraps the OS's); one of our failures among them keeps its reason, and an
    exception no entry names is a CONNECT_ERROR by type."""
    for cause in _causes(exc):
        if isinstance(cause, EvaluationFailure):  # ours, raised inside aiohttp (the resolver)
            return SendError(cause.reason, cause.message)
        for kind, failure in FAILURES.items():
            if isinstance(cause, kind):
                return SendError(failure.reason, failure.message, retryable=failure.retryable)
    return SendError(Reason.CONNECT_ERROR, f"the exchange failed ({type(exc).__name__})")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
