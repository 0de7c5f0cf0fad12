"""Why the outbound transport is httpx + httpx-aiohttp: figures, not opinions.

Starts a loopback upstream (aiohttp.web, in its own process, answering a ~1 KB order JSON), then
for each client makes N GET requests with C concurrent callers through one pooled, keep-alive
client and prints requests/s, p50/p99 latency and client CPU per request:

    .venv/bin/python bench/transport_choice.py [--requests 3000] [--concurrency 32]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import resource
import socket
import statistics
import time
from collections.abc import Awaitable, Callable

import aiohttp
import httpx
from aiohttp import web
from common import ORDER
from httpx_aiohttp import AiohttpTransport

from sidecar.egress.aiohttp_transport import AiohttpTransport as OwnTransport


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


async def _drive(
    call: Callable[[], Awaitable[None]], requests: int, concurrency: int
) -> dict[str, float]:
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


async def _run(url: str, requests: int, concurrency: int) -> dict[str, dict[str, float]]:
    results = {}
    limits = httpx.Limits(max_connections=100, max_keepalive_connections=100)
    async with httpx.AsyncClient(limits=limits) as client:

        async def httpx_default() -> None:
            (await client.get(url)).raise_for_status()

        results["httpx 0.28 default (httpcore)"] = await _drive(
            httpx_default, requests, concurrency
        )

    async with httpx.AsyncClient(transport=AiohttpTransport(limits=limits)) as client:

        async def httpx_on_aiohttp() -> None:
            (await client.get(url)).raise_for_status()

        results["httpx + httpx-aiohttp"] = await _drive(httpx_on_aiohttp, requests, concurrency)

    own = OwnTransport(
        lambda: aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=100), auto_decompress=False, trust_env=False
        )
    )

    async def httpx_request_on_own_transport() -> None:
        response = await own.handle_async_request(httpx.Request("GET", url))
        await response.aread()
        response.raise_for_status()

    results["httpx Request -> sidecar's transport"] = await _drive(
        httpx_request_on_own_transport, requests, concurrency
    )
    await own.aclose()

    transport = AiohttpTransport(limits=limits)

    async def httpx_request_on_transport() -> None:
        response = await transport.handle_async_request(httpx.Request("GET", url))
        await response.aread()
        response.raise_for_status()

    results["httpx Request -> aiohttp transport"] = await _drive(
        httpx_request_on_transport, requests, concurrency
    )
    await transport.aclose()

    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=100)) as session:

        async def plain_aiohttp() -> None:
            async with session.get(url) as response:
                response.raise_for_status()
                await response.read()

        results["aiohttp (no httpx API)"] = await _drive(plain_aiohttp, requests, concurrency)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000)
    parser.add_argument("--concurrency", type=int, default=32)
    arguments = parser.parse_args()
    port = _free_port()
    upstream = multiprocessing.get_context("spawn").Process(
        target=_serve, args=(port,), daemon=True
    )
    upstream.start()
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), timeout=0.1).close()
                break
            except OSError:
                time.sleep(0.05)
        url = f"http://127.0.0.1:{port}/orders/A-10023"
        results = asyncio.run(_run(url, arguments.requests, arguments.concurrency))
    finally:
        upstream.terminate()
        upstream.join()
    print(f"{arguments.requests} GETs, {arguments.concurrency} concurrent, loopback upstream")
    print(f"{'client':36} {'req/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/req':>11}")
    for name, row in results.items():
        print(
            f"{name:36} {row['req_per_s']:8.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['cpu_us_per_req']:11.0f}"
        )


if __name__ == "__main__":
    main()
