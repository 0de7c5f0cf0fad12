"""One HTTP attempt on the shared pooled client: guarded resolution, capped and bounded body.

httpx's Request and Response on an aiohttp session (`aiohttp_transport.AiohttpTransport`).
httpx 0.28's default transport (httpcore) collapses under concurrency on this machine;
`bench/transport_choice.py` measured, at 32 concurrent loopback GETs: httpx default 402-599
req/s, p99 206-331 ms, 1,650-2,400 us CPU per request; httpx + httpx-aiohttp ~2,450-2,950 req/s,
~280-296 us; an httpx Request on the transport directly, ~3,050-3,200 req/s, ~186-207 us.

- Names are resolved by `GuardedResolver`, which judges every address and refuses the name
  whole if any is forbidden; aiohttp then connects only to the addresses it returned, so there is
  no window for DNS rebinding. TLS still verifies the host name.
- The body is read raw and counted; content encodings are decoded here, in bounded steps, so a
  gzip bomb stops at the cap with memory to match. Unknown encodings are refused.
- Redirects are never followed here; proxy environment variables are ignored.
"""

from __future__ import annotations

import ipaddress
import socket
import ssl
import zlib
from collections.abc import Callable, Iterator
from typing import Any

import aiohttp
import httpx
from aiohttp.abc import AbstractResolver, ResolveResult
from aiohttp.resolver import DefaultResolver

from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendError
from sidecar.core.model.outcome import Reason
from sidecar.egress.aiohttp_transport import AiohttpTransport
from sidecar.egress.policy import EgressPolicy

ConnectorFactory = Callable[[AbstractResolver], aiohttp.TCPConnector]


class DestinationBlockedError(Exception):
    """Raised by the resolver: the name resolves to a forbidden address. Never an OSError, so
    aiohttp does not mistake it for a DNS failure."""


class GuardedResolver(AbstractResolver):
    """Resolves with the system resolver, then judges every address before aiohttp connects."""

    def __init__(self, policy: EgressPolicy, inner: AbstractResolver | None = None) -> None:
        self._policy = policy
        self._inner = inner or DefaultResolver()

    async def resolve(
        self, host: str, port: int = 0, family: socket.AddressFamily = socket.AF_INET
    ) -> list[ResolveResult]:
        results = await self._inner.resolve(host, port, family)
        listed = self._policy.host_is_listed(host)
        for result in results:
            address = ipaddress.ip_address(result["host"].split("%", 1)[0])
            verdict = self._policy.judge_address(address, host_listed=listed)
            if not verdict.allowed:
                raise DestinationBlockedError(f"{host!r} resolves to {verdict.reason}")
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
        # httpx's Request and Response on the aiohttp transport, without httpx.AsyncClient: its
        # per-request machinery (cookies, auth flows, redirect handling, URL merging, event
        # hooks) is work the egress does not use, and cost ~100 us of CPU per request here
        # (bench/transport_choice.py: 290 -> 186 us). Redirects and proxies are the egress's.
        self._transport = AiohttpTransport(self._new_session)

    def _new_session(self) -> aiohttp.ClientSession:
        """Built lazily by the transport, inside the running event loop, as aiohttp requires."""
        return aiohttp.ClientSession(
            connector=self._connector_factory(self._resolver),
            trust_env=False,
            auto_decompress=False,
            timeout=aiohttp.ClientTimeout(total=None),  # the egress's budget is the only clock
        )

    async def attempt(self, request: OutboundRequest, cap: int) -> HttpResponse:
        """One exchange of `request` as given (its headers are the ones on the wire, see
        `headers`); SendError with a reason on any failure. Budget enforced by the caller."""
        try:
            return await self._exchange(request, cap)
        except DestinationBlockedError as exc:
            raise SendError(Reason.BLOCKED_DESTINATION, str(exc)) from exc
        except (httpx.HTTPError, httpx.InvalidURL, aiohttp.ClientError) as exc:
            # httpx-aiohttp lets some aiohttp errors through unmapped (bad status line, bad
            # Content-Length, malformed headers): they are transport failures all the same.
            raise failure_of(exc) from exc

    async def _exchange(self, request: OutboundRequest, cap: int) -> HttpResponse:
        outgoing = httpx.Request(
            request.method, request.url, headers=request.headers, content=request.body
        )
        response = await self._transport.handle_async_request(outgoing)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap))
            decoder = _decoder(response.headers.get("content-encoding", ""))
            body = bytearray()
            received = 0
            async for chunk in response.aiter_raw():
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
            await response.aclose()
        names: dict[str, str] = {}
        for name, value in response.headers.multi_items():
            key = name.lower()
            names[key] = f"{names[key]}, {value}" if key in names else value
        return HttpResponse(response.status_code, names, bytes(body))

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._transport.aclose()


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


def failure_of(exc: Exception) -> SendError:
    """One reason per transport failure, judged on the underlying aiohttp/OS exception."""
    for cause in _causes(exc):
        if isinstance(cause, DestinationBlockedError):
            return SendError(Reason.BLOCKED_DESTINATION, str(cause))
        if isinstance(cause, aiohttp.ClientConnectorDNSError):
            return SendError(Reason.DNS_ERROR, "the upstream host name could not be resolved")
        if isinstance(
            cause, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError
        ):
            return SendError(Reason.TLS_ERROR, "the TLS handshake or certificate check failed")
        if isinstance(cause, aiohttp.ClientConnectorError):
            return SendError(
                Reason.CONNECT_ERROR, "the upstream refused the connection", retryable=True
            )
        if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
            return SendError(Reason.TIMEOUT, "the upstream did not answer in time")
        if isinstance(cause, aiohttp.ServerDisconnectedError | ConnectionError):
            return SendError(Reason.CONNECT_ERROR, "the upstream closed the connection early")
        if isinstance(cause, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
            return SendError(Reason.PROTOCOL_ERROR, "the upstream sent a malformed response")
    if isinstance(exc, httpx.TimeoutException):
        return SendError(Reason.TIMEOUT, "the upstream did not answer in time")
    if isinstance(exc, httpx.ProtocolError | httpx.DecodingError | httpx.InvalidURL):
        return SendError(Reason.PROTOCOL_ERROR, "the upstream sent a malformed response")
    return SendError(Reason.CONNECT_ERROR, f"the exchange failed ({type(exc).__name__})")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
