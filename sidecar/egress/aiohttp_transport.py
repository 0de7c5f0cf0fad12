"""httpx's transport interface on an aiohttp client session: httpx's types, aiohttp's speed.

httpx 0.28's own transport (httpcore) collapses under concurrency on this machine; aiohttp does
not. The egress builds an `httpx.Request` and gets an `httpx.Response` back, so its code reads as
httpx, while the bytes go through one pooled aiohttp session. Written here rather than taken
from httpx-aiohttp, which did the same job in v0.1 of this project, for two reasons measured in
the evaluation suites and the benchmark: it handed aiohttp the URL as a string, which aiohttp's
URL library re-quotes (the bytes on the wire then differ from the URL that was rendered and
explained: `%3A` became `:`), and it built a timeout object and mapped exceptions on every call,
work the egress does itself (one total budget; `transport.failure_of`).

Redirects are never followed and nothing is decompressed here: the egress decides both.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import aiohttp
import httpx
import yarl

CHUNK_BYTES = 64 * 1024


class AiohttpTransport(httpx.AsyncBaseTransport):
    """Sends httpx requests through an aiohttp session created lazily, inside the event loop."""

    def __init__(self, session_factory: Callable[[], aiohttp.ClientSession]) -> None:
        self._session_factory = session_factory
        self._session: aiohttp.ClientSession | None = None

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        if self._session is None:
            self._session = self._session_factory()
        response = await self._session.request(
            request.method,
            # encoded=True: the URL is already percent-encoded; send it byte for byte.
            yarl.URL(str(request.url), encoded=True),
            headers=request.headers.multi_items(),
            data=request.content or None,
            allow_redirects=False,
            compress=None,
        )
        return httpx.Response(
            status_code=response.status,
            headers=response.raw_headers,
            stream=_ResponseStream(response),
            request=request,
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None


class _ResponseStream(httpx.AsyncByteStream):
    """The body as aiohttp delivers it, raw; releasing returns the connection to the pool."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self._response = response

    async def __aiter__(self) -> AsyncIterator[bytes]:
        async for chunk in self._response.content.iter_chunked(CHUNK_BYTES):
            yield chunk

    async def aclose(self) -> None:
        self._response.release()
