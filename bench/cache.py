"""The response cache on a chat mix: upstream calls saved, p50/p99 with and without it.

Three processes on loopback: an order API that takes API_LATENCY_MS per call (a real API's
order of magnitude; loopback alone would hide what a saved call is worth) and counts every call
per order number, the real `rules-sidecar serve` with two connectors on that API (`plain`, and
`cached` with `cache: {ttl: 60s}`), and this load client (grpc.aio, C concurrent callers).

The mix (the same, seeded, for both connectors): L lookups where 30% repeat an order asked in
the last REPEAT_WINDOW lookups (well within a minute: a run lasts seconds, the ttl is 60 s) and
70% ask a new one, plus B bursts of 50 identical concurrent calls (a campaign: thousands of
visitors ask the same stock level at once), each burst for an order nobody asked before.

    .venv/bin/python bench/cache.py [--lookups 3000] [--bursts 10] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import statistics
import subprocess
import sys
import time
import urllib.request
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from common import NODE, free_port, sidecar, wait_for_port
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

API_LATENCY_MS = 40
REPEAT_SHARE = 0.30
REPEAT_WINDOW = 200
BURST_SIZE = 50
SEED = 16
UPSTREAM_SOURCE = """
import asyncio, collections, json, sys
from aiohttp import web
latency = float(sys.argv[2]) / 1000
calls = collections.Counter()
async def order(request):
    number = request.match_info["number"]
    calls[number] += 1
    await asyncio.sleep(latency)
    return web.json_response({"order_number": number, "status": "shipped",
                              "carrier": {"name": "UPS"}, "total": 42.5})
async def counted(request):
    return web.json_response(calls)
app = web.Application()
app.router.add_get("/orders/{number}", order)
app.router.add_get("/calls", counted)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


@dataclass(frozen=True)
class Lookup:
    """One step of the mix: one order asked, or a burst of identical calls for one order."""

    order: str
    calls: int = 1


def chat_mix(lookups: int, bursts: int, rng: random.Random) -> list[Lookup]:
    """The seeded mix: repeats within the window, new orders, bursts spread evenly."""
    steps: list[Lookup] = []
    asked: list[str] = []
    burst_every = max(lookups // max(bursts, 1), 1)
    made_bursts = 0
    for index in range(lookups):
        if bursts and index % burst_every == burst_every // 2 and made_bursts < bursts:
            steps.append(Lookup(f"BURST-{made_bursts}", BURST_SIZE))
            made_bursts += 1
        if asked and rng.random() < REPEAT_SHARE:
            order = rng.choice(asked[-REPEAT_WINDOW:])
        else:
            order = f"A-{index:06d}"
            asked.append(order)
        steps.append(Lookup(order))
    return steps


@contextmanager
def order_api() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM_SOURCE, str(port), str(API_LATENCY_MS)]
    )
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


def upstream_calls(port: int) -> dict[str, int]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/calls", timeout=10) as answer:
        counted: dict[str, int] = json.load(answer)
    return counted


async def run_mix(
    address: str, connector_id: str, steps: list[Lookup], concurrency: int
) -> dict[str, Any]:
    """Drive the mix through one connector; every call's latency and its cache status."""
    node = json_format.ParseDict({**NODE, "connector_id": connector_id}, pb.Node())
    latencies: list[float] = []
    statuses: dict[str, int] = {}
    by_status: dict[str, list[float]] = {}
    queue = list(reversed(steps))
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RulesSidecarServiceStub(channel)

        async def call(order: str) -> None:
            request = pb.EvaluateNodeRequest(node=node)
            request.variables.update({"order_number": order})
            started = time.perf_counter()
            answer = await stub.EvaluateNode(request)
            latencies.append(time.perf_counter() - started)
            if answer.outcome != pb.OUTCOME_MATCHED:
                raise SystemExit(f"unexpected answer: {answer}")
            name = pb.CacheStatus.Name(answer.cache_status).removeprefix("CACHE_STATUS_")
            statuses[name] = statuses.get(name, 0) + 1
            by_status.setdefault(name, []).append(latencies[-1])

        async def worker() -> None:
            while queue:
                step = queue.pop()
                await asyncio.gather(*(call(step.order) for _ in range(step.calls)))

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - started
    latencies.sort()
    return {
        "calls": len(latencies),
        "wall_seconds": wall,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
        "cache_statuses": statuses,
        "p50_ms_by_cache_status": {
            name: statistics.median(values) * 1e3 for name, values in by_status.items()
        },
    }


def measure(
    port: int, address: str, connector_id: str, steps: list[Lookup], concurrency: int
) -> dict[str, Any]:
    before = upstream_calls(port)
    result = asyncio.run(run_mix(address, connector_id, steps, concurrency))
    after = upstream_calls(port)
    delta = {order: after[order] - before.get(order, 0) for order in after}
    result["upstream_calls"] = sum(delta.values())
    bursts = [step.order for step in steps if step.calls > 1]
    result["upstream_calls_per_burst_of_50"] = [delta.get(order, 0) for order in bursts]
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lookups", type=int, default=3000)
    parser.add_argument("--bursts", type=int, default=10)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument("--output", help="also write the figures as JSON to this file")
    arguments = parser.parse_args()
    steps = chat_mix(arguments.lookups, arguments.bursts, random.Random(SEED))  # noqa: S311 (a seeded workload)
    with order_api() as port:
        url = f"http://127.0.0.1:{port}/orders/{{{{order_number}}}}"
        connectors = [
            {"id": "plain", "status": "LIVE", "url_template": url},
            {"id": "cached", "status": "LIVE", "url_template": url, "cache": {"ttl": "60s"}},
        ]
        with sidecar(port, connectors=connectors) as stack:
            # Each connector asks the same orders; the order numbers are namespaced per run so
            # the second run cannot profit from the first one's cache (there is none for plain).
            plain = measure(port, stack.sidecar_address, "plain", steps, arguments.concurrency)
            renamed = [Lookup(f"C{step.order}", step.calls) for step in steps]
            cached = measure(port, stack.sidecar_address, "cached", renamed, arguments.concurrency)
    saved = plain["upstream_calls"] - cached["upstream_calls"]
    figures = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, check=False
        ).stdout.strip(),
        "machine_cores": os.cpu_count(),
        "api_latency_ms": API_LATENCY_MS,
        "lookups": arguments.lookups,
        "bursts_of_50": arguments.bursts,
        "concurrency": arguments.concurrency,
        "without_cache": plain,
        "with_cache": cached,
        "upstream_calls_saved": saved,
        "upstream_calls_saved_share": saved / plain["upstream_calls"],
    }
    print(
        f"Chat mix: {arguments.lookups} lookups (30% repeats within a minute) + "
        f"{arguments.bursts} bursts of {BURST_SIZE}, {arguments.concurrency} concurrent callers, "
        f"API latency {API_LATENCY_MS} ms, {os.cpu_count()} cores"
    )
    print(f"  {'':28} {'without cache':>14} {'with cache':>14}")
    for name in ("calls", "upstream_calls", "p50_ms", "p99_ms", "wall_seconds"):
        print(f"  {name:28} {plain[name]:14.1f} {cached[name]:14.1f}")
    print(f"  upstream calls saved         {saved} ({figures['upstream_calls_saved_share']:.0%})")
    print(
        f"  upstream calls per burst     {plain['upstream_calls_per_burst_of_50']} -> {cached['upstream_calls_per_burst_of_50']}"
    )
    print(f"  cache statuses (cached)      {cached['cache_statuses']}")
    by_status = ", ".join(
        f"{name} {value:.1f}" for name, value in cached["p50_ms_by_cache_status"].items()
    )
    print(f"  p50 ms by cache status       {by_status}")
    if arguments.output:
        with open(arguments.output, "w", encoding="utf-8") as output:
            json.dump(figures, output, indent=2)
            output.write("\n")


if __name__ == "__main__":
    main()
