"""Which outbound transport: figures, not opinions.

Starts a loopback upstream (aiohttp.web, in its own process, answering a ~1 KB order JSON), then
drives each client variant with N GETs from C concurrent callers through one pooled, keep-alive
client, and reports requests/s, p50/p99 latency and the client's CPU per request:

    .venv/bin/python bench/transport_choice.py [--requests 3000] [--concurrency 32] [--rounds 5]
    .venv/bin/python bench/transport_choice.py --history    # + the httpx variants
    .venv/bin/python bench/transport_choice.py --loop asyncio  # the standard loop (uvloop default)

The question it answers for the egress: one attempt takes the core's `OutboundRequest` and
returns an `HttpResponse` (body read raw, counted against a cap, headers folded to lower-cased
names). The variants:

- `aiohttp direct (the egress before)`: aiohttp's own request and response over a pooled
  session, the cap declared and counted (the egress in 0.1.x, copied here);
- `pool.Pool (http1, httptools) alone`: our HTTP/1.1 client on asyncio transports with llhttp's
  parser, no guard, no decoding;
- `sidecar Transport.attempt`: what ships, measured as it is (guarded resolver, caps, decoder);
- with --history: `httpx types over aiohttp` (httpx.Request/Response over the same aiohttp
  session, the egress before that) and httpx 0.28's own AsyncClient (httpcore).

The machine is shared and noisy: the variants are interleaved round by round (a burst of load
elsewhere hits all of them alike), each figure is the median over the rounds with its spread
(min-max), and each variant's CPU is also given as a ratio to aiohttp's of the same round
(median of the per-round ratios).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import os
import random
import resource
import socket
import ssl
import statistics
import sys
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import uvloop
import yarl
from aiohttp import web
from common import ORDER

from sidecar.core.model.exchange import HttpResponse, OutboundRequest
from sidecar.egress.headers import DEFAULT_HEADERS
from sidecar.egress.policy import EgressPolicy
from sidecar.egress.transport import Transport

CAP = 1 << 20
HEADERS = (("X-API-Key", "fake-bench-key-0123456"), ("Accept", "application/json"))
BASELINE = "aiohttp direct (the egress before)"
Call = Callable[[], Awaitable[None]]


def _serve(port: int) -> None:
    body = json.dumps(ORDER).encode()

    async def order(_: web.Request) -> web.Response:
        return web.Response(body=body, content_type="application/json")

    app = web.Application()
    app.router.add_get("/orders/{number}", order)
    web.run_app(app, host="127.0.0.1", port=port, print=None, access_log=None)


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _session() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=100),
        auto_decompress=False,
        trust_env=False,
        timeout=aiohttp.ClientTimeout(total=None),
    )


def _folded(pairs: object) -> dict[str, str]:
    names: dict[str, str] = {}
    for name, value in pairs:  # type: ignore[attr-defined]
        key = name.lower()
        names[key] = f"{names[key]}, {value}" if key in names else value
    return names


async def _httpx_types_over_aiohttp(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The egress's attempt as it was: httpx.Request -> our httpx transport on aiohttp ->
    httpx.Response, its raw stream counted against the cap (a copy of the 0.1.x code, kept
    here so the comparison survives its removal from the sidecar)."""
    import httpx

    class Stream(httpx.AsyncByteStream):
        def __init__(self, response: aiohttp.ClientResponse) -> None:
            self._response = response

        async def __aiter__(self) -> AsyncIterator[bytes]:
            async for chunk in self._response.content.iter_chunked(64 * 1024):
                yield chunk

        async def aclose(self) -> None:
            self._response.release()

    class HttpxOverAiohttp(httpx.AsyncBaseTransport):
        def __init__(self) -> None:
            self.session = _session()

        async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
            response = await self.session.request(
                request.method,
                yarl.URL(str(request.url), encoded=True),
                headers=request.headers.multi_items(),
                data=request.content or None,
                allow_redirects=False,
                compress=None,
            )
            return httpx.Response(
                status_code=response.status,
                headers=response.raw_headers,
                stream=Stream(response),
                request=request,
            )

    transport = HttpxOverAiohttp()
    outbound = OutboundRequest("GET", url, HEADERS, None)

    async def call() -> None:
        request = httpx.Request(
            outbound.method,
            outbound.url,
            headers=[*outbound.headers, *DEFAULT_HEADERS],
            content=outbound.body,
        )
        response = await transport.handle_async_request(request)
        body = bytearray()
        try:
            async for chunk in response.aiter_raw():
                body += chunk
                if len(body) > CAP:
                    raise RuntimeError("over the cap")
        finally:
            await response.aclose()
        answer = HttpResponse(response.status_code, _folded(response.headers.multi_items()), body)
        assert answer.status == 200

    return call, transport.session.close


async def _aiohttp_direct(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The egress's attempt as it was on aiohttp (0.1.x after httpx left): aiohttp's own request
    and response, the declared and counted cap, the headers folded (a copy of that code, kept
    here so the comparison survives its removal from the sidecar)."""
    session = _session()
    outbound = OutboundRequest("GET", url, HEADERS, None)

    async def call() -> None:
        response = await session.request(
            outbound.method,
            yarl.URL(outbound.url, encoded=True),
            headers=[*outbound.headers, *DEFAULT_HEADERS],
            data=outbound.body,
            allow_redirects=False,
            compress=None,
        )
        body = bytearray()
        try:
            declared = response.headers.get("content-length", "")
            if declared.isdigit() and int(declared) > CAP:
                raise RuntimeError("over the cap")
            async for chunk in response.content.iter_chunked(64 * 1024):
                body += chunk
                if len(body) > CAP:
                    raise RuntimeError("over the cap")
        finally:
            response.release()
        answer = HttpResponse(response.status, _folded(response.raw_headers), bytes(body))
        assert answer.status == 200

    return call, session.close


async def _pool_direct(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """The new client (`sidecar.egress.pool.Pool`) alone: no guard, no decoding."""
    from sidecar.egress.pool import Pool, SystemResolver, open_socket
    from sidecar.egress.transport import wire_url

    pool = Pool(
        SystemResolver(),
        open_socket,
        ssl.create_default_context(),
        max_connections=100,
        keepalive_seconds=30.0,
    )
    headers = (*HEADERS, *DEFAULT_HEADERS)

    async def call() -> None:
        response = await pool.request("GET", wire_url(url), headers, None, cap=CAP)
        assert response.status == 200

    return call, pool.aclose


async def _sidecar_transport(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    """`sidecar.egress.transport.Transport.attempt` as the egress calls it (guarded resolver,
    decoder, caps): what ships."""
    policy = EgressPolicy(allow_cidrs=("127.0.0.1/32",), allow_http_hosts=("127.0.0.1",))
    transport = Transport(policy, max_connections=100)
    outbound = OutboundRequest("GET", url, (*HEADERS, *DEFAULT_HEADERS), None)

    async def call() -> None:
        assert (await transport.attempt(outbound, CAP)).status == 200

    return call, transport.aclose


async def _httpx_client(url: str) -> tuple[Call, Callable[[], Awaitable[None]]]:
    import httpx

    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    client = httpx.AsyncClient(limits=limits)

    async def call() -> None:
        (await client.get(url)).raise_for_status()

    return call, client.aclose


VARIANTS = {
    BASELINE: _aiohttp_direct,
    "pool.Pool (http1, httptools) alone": _pool_direct,
    "sidecar Transport.attempt": _sidecar_transport,
}
HISTORY = {
    "httpx types over aiohttp": _httpx_types_over_aiohttp,
    "httpx 0.28 AsyncClient (httpcore)": _httpx_client,
}


async def _drive(call: Call, requests: int, concurrency: int) -> dict[str, float]:
    latencies: list[float] = []
    remaining = requests

    async def worker() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            start = time.perf_counter()
            await call()
            latencies.append(time.perf_counter() - start)

    for _ in range(50):  # warm the pool
        await call()
    cpu_start = resource.getrusage(resource.RUSAGE_SELF)
    wall_start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    wall = time.perf_counter() - wall_start
    cpu_end = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu_end.ru_utime - cpu_start.ru_utime) + (cpu_end.ru_stime - cpu_start.ru_stime)
    latencies.sort()
    return {
        "req_per_s": len(latencies) / wall,
        "p50_ms": statistics.median(latencies) * 1000,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1000,
        "cpu_us_per_req": cpu / len(latencies) * 1e6,
    }


async def _round(
    url: str, variants: dict[str, Callable[[str], Awaitable[tuple[Call, Call]]]], arguments: Any
) -> dict[str, dict[str, float]]:
    results = {}
    order = list(variants)
    random.shuffle(order)  # no variant always runs first (or right after the slowest)
    for name in order:
        call, close = await variants[name](url)
        try:
            results[name] = await _drive(call, arguments.requests, arguments.concurrency)
        finally:
            await close()
    return results


def _spread(values: list[float], digits: int = 0) -> str:
    return f"{statistics.median(values):.{digits}f} ({min(values):.{digits}f}-{max(values):.{digits}f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--history", action="store_true", help="add the httpx variants")
    parser.add_argument(
        "--loop", choices=("uvloop", "asyncio"), default="uvloop", help="the sidecar's default"
    )
    arguments = parser.parse_args()
    loop_factory = uvloop.new_event_loop if arguments.loop == "uvloop" else None
    variants = {**VARIANTS, **(HISTORY if arguments.history else {})}
    port = _free_port()
    upstream = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(port,), daemon=True
    )
    upstream.start()
    runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/orders/A-10023"
        for number in range(arguments.rounds):
            with asyncio.Runner(loop_factory=loop_factory) as runner:
                results = runner.run(_round(url, variants, arguments))
            for name, row in results.items():
                runs[name].append(row)
            print(
                f"  round {number + 1}: "
                + ", ".join(f"{name} {row['cpu_us_per_req']:.0f}" for name, row in results.items())
                + " us/req",
                file=sys.stderr,
                flush=True,
            )
    finally:
        upstream.terminate()
        upstream.join()
    print(
        f"{arguments.requests} GETs x {arguments.rounds} rounds (interleaved), "
        f"{arguments.concurrency} concurrent, {arguments.loop} loop, loopback upstream, "
        f"{os.cpu_count()} cores; "
        "median (min-max)"
    )
    print(
        f"  {'client':36} {'CPU us/req':>18} {'vs aiohttp':>14} {'req/s':>18} "
        f"{'p50 ms':>18} {'p99 ms':>18}"
    )
    for name, rows in runs.items():
        cpu = [row["cpu_us_per_req"] for row in rows]
        ratios = [
            row["cpu_us_per_req"] / base["cpu_us_per_req"]
            for row, base in zip(rows, runs[BASELINE], strict=True)
        ]
        print(
            f"  {name:36} {_spread(cpu):>18} {_spread(ratios, 2):>14} "
            f"{_spread([row['req_per_s'] for row in rows]):>18} "
            f"{_spread([row['p50_ms'] for row in rows], 2):>18} "
            f"{_spread([row['p99_ms'] for row in rows], 2):>18}"
        )


if __name__ == "__main__":
    main()
