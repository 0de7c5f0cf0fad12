"""The one way out: every outbound HTTP request of the sidecar passes through `Egress.send`.

One pooled, keep-alive client for the whole process, built on httpx's API with the aiohttp
transport of httpx-aiohttp. httpx 0.28's default transport (httpcore) collapses under concurrency
on this machine; `bench/transport_choice.py` measured, at 32 concurrent loopback GETs:

    httpx default (httpcore)      ~480-600 req/s   p99 ~206-326 ms   ~1,650 us CPU/request
    httpx + httpx-aiohttp         ~2,450-2,900     p99 ~27 ms        ~280 us

Semantics kept here rather than in the engine:
- the timeout is a total budget for the whole exchange (connect, headers, body), so an upstream
  that drips one byte at a time is cut at the deadline;
- the body is read in chunks and counted; past `max_response_bytes` the exchange stops with
  RESPONSE_TOO_LARGE (a declared Content-Length over the cap stops it before reading);
- redirects are not followed (a 3xx is the answer) and proxy environment variables are ignored;
- transport exceptions become a `SendError` with one reason each, translated in one place.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
from collections.abc import Iterator

import aiohttp
import httpx
from httpx_aiohttp import AiohttpTransport

from sidecar.model.exchange import HttpResponse, OutboundRequest, SendError, SendOptions
from sidecar.model.outcome import Reason

DEFAULT_MAX_CONNECTIONS = 256


class Egress:
    """The shared outbound HTTP client. Create once per process; `aclose` on shutdown.

    >>> egress = Egress()                                                      # doctest: +SKIP
    >>> response = await egress.send(request, SendOptions(5.0, 1 << 20))       # doctest: +SKIP
    """

    def __init__(
        self,
        *,
        max_connections: int = DEFAULT_MAX_CONNECTIONS,
        keepalive_seconds: float = 30.0,
        tls: ssl.SSLContext | None = None,
    ) -> None:
        # httpx logs every request URL at INFO; a URL may carry an API key in its query.
        logging.getLogger("httpx").setLevel(logging.WARNING)
        self._tls = tls or ssl.create_default_context()
        self._max_connections = max_connections
        self._keepalive_seconds = keepalive_seconds
        transport = AiohttpTransport(client=self._new_session)
        self._client = httpx.AsyncClient(
            transport=transport,
            follow_redirects=False,
            trust_env=False,
            timeout=None,  # noqa: S113 (send() enforces a total budget with asyncio.timeout)
        )

    def _new_session(self) -> aiohttp.ClientSession:
        """Built lazily by the transport, inside the running event loop, as aiohttp requires."""
        connector = aiohttp.TCPConnector(
            limit=self._max_connections,
            keepalive_timeout=self._keepalive_seconds,
            ssl=self._tls,
        )
        return aiohttp.ClientSession(connector=connector, trust_env=False, auto_decompress=False)

    async def send(self, request: OutboundRequest, options: SendOptions) -> HttpResponse:
        """Send one request; the response with its body, or SendError with a reason."""
        try:
            async with asyncio.timeout(options.timeout_seconds):
                return await self._exchange(request, options.max_response_bytes)
        except TimeoutError as exc:
            raise SendError(
                Reason.TIMEOUT, f"no complete response within {options.timeout_seconds:g}s"
            ) from exc
        except httpx.HTTPError as exc:
            raise _failure_of(exc) from exc

    async def _exchange(self, request: OutboundRequest, cap: int) -> HttpResponse:
        outgoing = self._client.build_request(
            request.method, request.url, headers=list(request.headers), content=request.body
        )
        response = await self._client.send(outgoing, stream=True)
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > cap:
                raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap, declared=True))
            body = bytearray()
            async for chunk in response.aiter_bytes():
                body += chunk
                if len(body) > cap:
                    raise SendError(Reason.RESPONSE_TOO_LARGE, _too_large(cap, declared=False))
        finally:
            await response.aclose()
        headers: dict[str, str] = {}
        for name, value in response.headers.multi_items():
            key = name.lower()
            headers[key] = f"{headers[key]}, {value}" if key in headers else value
        return HttpResponse(response.status_code, headers, bytes(body))

    async def aclose(self) -> None:
        """Close every pooled connection."""
        await self._client.aclose()


def _too_large(cap: int, *, declared: bool) -> str:
    how = "declares a body" if declared else "sent more"
    return f"the response {how} than the connector's limit of {cap} bytes"


def _failure_of(exc: httpx.HTTPError) -> SendError:
    """One reason per transport failure, judged on the underlying aiohttp/OS exception."""
    for cause in _causes(exc):
        if isinstance(cause, aiohttp.ClientConnectorDNSError):
            return SendError(Reason.DNS_ERROR, "the upstream host name could not be resolved")
        if isinstance(
            cause, aiohttp.ClientConnectorCertificateError | aiohttp.ClientSSLError | ssl.SSLError
        ):
            return SendError(Reason.TLS_ERROR, "the TLS handshake or certificate check failed")
        if isinstance(cause, aiohttp.ClientConnectorError):
            return SendError(Reason.CONNECT_ERROR, "the upstream refused the connection")
        if isinstance(cause, aiohttp.ServerTimeoutError | TimeoutError):
            return SendError(Reason.TIMEOUT, "the upstream did not answer in time")
        if isinstance(cause, aiohttp.ServerDisconnectedError | ConnectionError):
            return SendError(Reason.CONNECT_ERROR, "the upstream closed the connection early")
        if isinstance(cause, aiohttp.ClientPayloadError | aiohttp.ClientResponseError):
            return SendError(Reason.PROTOCOL_ERROR, "the upstream sent a malformed response")
    if isinstance(exc, httpx.DecodingError):
        return SendError(Reason.PROTOCOL_ERROR, "the response body could not be decoded")
    if isinstance(exc, httpx.TimeoutException):
        return SendError(Reason.TIMEOUT, "the upstream did not answer in time")
    return SendError(Reason.CONNECT_ERROR, f"the exchange failed ({type(exc).__name__})")


def _causes(exc: BaseException) -> Iterator[BaseException]:
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        yield current
        current = current.__cause__ or current.__context__
