"""One HTTP attempt on the shared keep-alive pool (`http1`): guarded resolution, capped body.

The core's `OutboundRequest` goes to `pool.Pool` as it is and the answer comes back as an
`HttpResponse`; no other HTTP library's types stand in between. The pool is our own HTTP/1.1
client on asyncio transports with llhttp's parser (httptools) since `bench/transport_choice.py`
measured it against aiohttp's client (client CPU per loopback GET, 32 concurrent, uvloop, median
of 7 interleaved rounds): 33 us for this module, guard and caps included, against 76 us for
aiohttp's request and response alone (ratio 0.44, 0.30-0.51 across rounds; 0.45 on the standard
loop). Before that, httpx's Request and Response over aiohttp cost 142 us against aiohttp's own
78 us, and httpx 0.28's own transport (httpcore) collapsed under concurrency on this machine.

- The URL is sent as rendered, byte for byte (`wire_url`): the request line is written from it,
  so `%3A` stays `%3A`. Only what could never be sent is touched, as httpx did: characters a URL
  may not carry raw (space, non-ASCII ...) are percent-encoded, a non-ASCII host is
  IDNA-encoded, `.` and `..` segments are resolved, and control characters are refused.
  Redirect targets come from upstreams, so this matters there most.
- Names are resolved by `GuardedResolver`, which judges every address and refuses the name
  whole if any is forbidden; the pool then connects only to the addresses it returned (cached
  10 s per name, judged when resolved), so there is no window for DNS rebinding. TLS verifies
  the host name (`server_hostname`) with the configured SSLContext.
- The body is read raw and counted (a declared Content-Length over the cap is refused before
  any body byte); content encodings are decoded here, in bounded steps, so a gzip bomb stops
  at the cap with memory to match. Unknown encodings are refused.
- Redirects are never followed here (the egress judges each hop); proxy environment variables
  are never read; the pool has no clock (the egress's total budget is the only one, and a
  cancelled attempt closes its connection).
- Every failure of the exchange becomes a SendError through one table, `FAILURES`.
"""

from __future__ import annotations

import functools
import ipaddress
import re
import ssl
import zlib
from collections.abc import Iterator, Mapping, Sequence
from typing import Final, NamedTuple
from urllib.parse import quote, urlsplit

from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendError
from sidecar.core.model.failures import EvaluationFailure
from sidecar.core.model.outcome import Reason
from sidecar.egress.http1 import (
    BodyTooLargeError,
    ConnectError,
    DisconnectedError,
    HttpError,
    MalformedResponseError,
    RequestError,
    ResolveError,
    Target,
)
from sidecar.egress.policy import EgressPolicy
from sidecar.egress.pool import (
    Pool,
    ResolvedAddress,
    Resolver,
    SocketOpener,
    SystemResolver,
    open_socket,
)

ConnectorFactory = SocketOpener
"""The composition root's name for the socket seam (tests record and refuse connections there)."""


class DestinationBlockedError(EvaluationFailure):
    """Raised by the resolver: the name resolves to a forbidden address. One of our evaluation
    failures (BLOCKED_DESTINATION), never an OSError, so it is not mistaken for a DNS failure;
    `Transport.attempt` passes it on as a SendError."""

    def __init__(self, message: str) -> None:
        super().__init__(Reason.BLOCKED_DESTINATION, message)


class GuardedResolver:
    """Resolves with the system resolver (or `inner`), then judges every address before any
    connection is made; one forbidden address refuses the name."""

    def __init__(self, policy: EgressPolicy, inner: Resolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or SystemResolver()

    async def resolve(self, host: str, port: int) -> Sequence[ResolvedAddress]:
        results = await self._inner.resolve(host, port)
        for result in results:
            address = ipaddress.ip_address(result.host.split("%", 1)[0])
            verdict = self._policy.judge_resolved(host, address)
            if not verdict.allowed:
                raise DestinationBlockedError(verdict.reason)
        return results


class Transport:
    """The process-wide pooled client. Create once; `aclose` on shutdown.

    `resolver` and `connector_factory` are seams: a fake DNS and a socket opener that records
    and refuses (tests/support/network.py). `dns_cache_seconds=0` looks every new connection's
    name up again; `keepalive_seconds=0` keeps no connection open.
    """

    def __init__(
        self,
        policy: EgressPolicy,
        *,
        max_connections: int,
        keepalive_seconds: float = 30.0,
        tls: ssl.SSLContext | None = None,
        resolver: Resolver | None = None,
        connector_factory: ConnectorFactory | None = None,
        dns_cache_seconds: float = 10.0,
    ) -> None:
        self._pool = Pool(
            GuardedResolver(policy, resolver),
            connector_factory or open_socket,
            tls or ssl.create_default_context(),
            max_connections=max_connections,
            keepalive_seconds=keepalive_seconds,
            dns_cache_seconds=dns_cache_seconds,
        )

    async def attempt(self, request: OutboundRequest, cap: int) -> HttpResponse:
        """One exchange of `request` as given (its headers are the ones on the wire, see
        `headers`); SendError with a reason on any failure. Budget enforced by the caller."""
        try:
            response = await self._pool.request(
                request.method, wire_url(request.url), request.headers, request.body, cap=cap
            )
        except DestinationBlockedError as exc:
            raise SendError(exc.reason, exc.message) from exc
        except BodyTooLargeError as exc:
            raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap)) from exc
        except _FOREIGN as exc:
            raise failure_of(exc) from exc
        body = response.body
        headers = response.headers  # folded by the connection as they arrived
        encoding = headers.get("content-encoding")  # two headers: a stacked one, refused
        if encoding:
            body = _decoded(body, encoding, cap)
        return HttpResponse(response.status, headers, body)

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._pool.aclose()


# -- the URL on the wire ------------------------------------------------------------------------

# What may not go raw in a path or a query (besides controls and non-ASCII): percent-encoded as
# httpx does (WHATWG's path and query percent-encode sets), so its URLs and ours are the same.
_PATH_ESCAPES = re.compile(r'[^\x21-\x7e]|["#<>?`{}]')
_QUERY_ESCAPES = re.compile(r'[^\x21-\x7e]|["#<>]')
_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_NOT_IN_HOST = re.compile(r"[\s/?#@\\]")
DEFAULT_PORTS: Final = {"http": 80, "https": 443}
# `scheme://authority`, as urlsplit ends the authority (at the first "/", "?" or "#"):
# everything a destination's verdict and its Target's origin depend on.
ORIGIN_PREFIX = re.compile(r"[A-Za-z][A-Za-z0-9+.-]*://[^/?#]*")


@functools.lru_cache(maxsize=1024)
def _origin(prefix: str) -> Target:
    """The Target of a `scheme://authority` prefix (its target "/"): connectors' origins and
    redirects', kept (a refused one raises, and is not kept)."""
    return _target(prefix)


def wire_url(url: str) -> Target:
    """Where `url` goes and the request target written for it, byte for byte as rendered.

    A rendered URL is encoded already and goes out unchanged (`%3A` stays `%3A`); a redirect
    target from an upstream may need what httpx did to it: characters a URL may not carry raw
    percent-encoded (as UTF-8), a non-ASCII host IDNA-encoded, `.`/`..` segments resolved.
    Control characters are refused.

    >>> wire_url("https://api.example.com/a%3Ab/c d?q=caf\u00e9&r=%2F").target
    '/a%3Ab/c%20d?q=caf%C3%A9&r=%2F'
    """
    if _CONTROL.search(url):
        raise SendError(Reason.PROTOCOL_ERROR, "the URL holds a control character")
    prefix = ORIGIN_PREFIX.match(url)
    if prefix is None:  # no scheme://authority: urlsplit says what it is (it cannot be sent)
        return _target(url)
    # What urlsplit reads from `scheme://authority` alone, worked out once per prefix (a
    # connector's URL starts with the same one every call); then the path and query as it
    # splits them: the fragment off, the query after the first "?".
    origin = _origin(prefix.group())
    path, _, query = url[prefix.end() :].partition("#")[0].partition("?")
    scheme, host, port, _, authority = origin
    return Target(scheme, host, port, _request_target(path, query), authority)


def _target(url: str) -> Target:
    parts = urlsplit(url)
    try:
        host = (parts.hostname or "").rstrip()
        port = parts.port
        if not host.isascii():
            host = host.encode("idna").decode("ascii")
    except (UnicodeError, ValueError) as exc:
        raise SendError(Reason.PROTOCOL_ERROR, "the URL's host is not a valid name") from exc
    scheme = parts.scheme.lower()
    if scheme not in DEFAULT_PORTS or not host or _NOT_IN_HOST.search(host):
        raise SendError(Reason.PROTOCOL_ERROR, "the URL cannot be sent")
    named = f"[{host}]" if ":" in host else host
    authority = named if port in (None, DEFAULT_PORTS[scheme]) else f"{named}:{port}"
    target = _request_target(parts.path, parts.query)
    return Target(scheme, host, port or DEFAULT_PORTS[scheme], target, authority)


def _request_target(path: str, query: str) -> str:
    path = _PATH_ESCAPES.sub(_escape, _without_dot_segments(path)) or "/"
    query = _QUERY_ESCAPES.sub(_escape, query)
    return f"{path}?{query}" if query else path


def _escape(match: re.Match[str]) -> str:
    return quote(match.group(), safe="")


def _without_dot_segments(path: str) -> str:
    """RFC 3986 5.2.4, as httpx applies it: `/a/./b/../c` is `/a/c`."""
    if "." not in path:
        return path
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


def _decoded(body: bytes, encoding: str, cap: int) -> bytes:
    """`body` decoded in one step bounded to `cap` + 1 bytes of output, so a gzip bomb costs
    no more memory than the cap; input left over at the bound means the body is too large."""
    name = encoding.strip().lower()
    if name in ("", "identity"):
        return body
    if name in ("gzip", "x-gzip"):
        decompressor = zlib.decompressobj(16 + zlib.MAX_WBITS)
    elif name == "deflate":
        decompressor = zlib.decompressobj()
    else:
        raise SendError(Reason.PROTOCOL_ERROR, f"unsupported content encoding {encoding[:40]!r}")
    try:
        decoded = decompressor.decompress(body, cap + 1)
        if len(decoded) <= cap and not decompressor.unconsumed_tail:
            decoded += decompressor.decompress(b"", cap + 1 - len(decoded))
    except zlib.error as exc:
        raise SendError(Reason.PROTOCOL_ERROR, "the response body is not valid gzip") from exc
    if len(decoded) > cap or decompressor.unconsumed_tail:
        raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap, decoded=True))
    return decoded


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
_UNSENDABLE = "the request cannot be sent (a header holds a line break, or the method is invalid)"

# The client's, ssl's and the OS's exceptions to what they mean. The first type that matches
# wins, so a subclass comes before its base (a certificate error is also an OSError).
FAILURES: Final[Mapping[type[Exception], Failure]] = {
    ResolveError: Failure(Reason.DNS_ERROR, "the upstream host name could not be resolved"),
    ssl.SSLError: Failure(Reason.TLS_ERROR, _TLS),
    ssl.CertificateError: Failure(Reason.TLS_ERROR, _TLS),
    # No connection was ever established: retrying cannot repeat a side effect.
    ConnectError: Failure(Reason.CONNECT_ERROR, _REFUSED, retryable=True),
    TimeoutError: Failure(Reason.TIMEOUT, _TIMEOUT),
    DisconnectedError: Failure(Reason.CONNECT_ERROR, _CLOSED),
    ConnectionError: Failure(Reason.CONNECT_ERROR, _CLOSED),
    MalformedResponseError: Failure(Reason.PROTOCOL_ERROR, _MALFORMED),
    RequestError: Failure(Reason.PROTOCOL_ERROR, _UNSENDABLE),
}
_FOREIGN: Final[tuple[type[Exception], ...]] = (*FAILURES, HttpError, OSError)


def failure_of(exc: BaseException) -> SendError:
    """The SendError of a foreign exception, judged on it and the exceptions that caused it
    (the client wraps the OS's); one of our failures among them keeps its reason, and an
    exception no entry names is a CONNECT_ERROR by type."""
    for cause in _causes(exc):
        if isinstance(cause, EvaluationFailure):  # ours, raised inside the pool (the resolver)
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
