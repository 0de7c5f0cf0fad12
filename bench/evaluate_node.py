"""EvaluateNode under concurrency: sidecar CPU per evaluation and latency percentiles.

Three processes, all on loopback: a fast upstream (aiohttp.web) answering a ~1 KB order JSON, the
real `rules-sidecar serve`, and this load client (grpc.aio, C concurrent callers). The sidecar's
CPU time comes from its own accounting (/proc/<pid>/stat: utime + stime), read before and after
the measured calls, so the client's and the upstream's CPU are not counted.

Scenario: GET with an API key header from a secret, 3 conditions across 2 branches, 2
extractions.

    .venv/bin/python bench/evaluate_node.py [--calls 5000] [--concurrency 16]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import time

import grpc
from common import NODE, VARIABLES, cpu_seconds, rss_mib, sidecar, upstream
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc


async def drive(address: str, calls: int, concurrency: int, pid: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RulesSidecarServiceStub(channel)
        request = pb.EvaluateNodeRequest(node=json_format.ParseDict(NODE, pb.Node()))
        request.variables.update(VARIABLES)
        for _ in range(200):  # warm-up: pools, caches, compiled node
            answer = await stub.EvaluateNode(request)
        if answer.outcome != pb.OUTCOME_MATCHED:
            raise SystemExit(f"unexpected answer: {answer}")
        latencies: list[float] = []
        remaining = calls

        async def worker() -> None:
            nonlocal remaining
            while remaining > 0:
                remaining -= 1
                started = time.perf_counter()
                await stub.EvaluateNode(request)
                latencies.append(time.perf_counter() - started)

        cpu_before = cpu_seconds(pid)
        wall_started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        wall = time.perf_counter() - wall_started
        cpu = cpu_seconds(pid) - cpu_before
    latencies.sort()
    return {
        "evaluations": len(latencies),
        "evaluations_per_second": len(latencies) / wall,
        "sidecar_cpu_us_per_evaluation": cpu / len(latencies) * 1e6,
        "p50_ms": statistics.median(latencies) * 1e3,
        "p90_ms": latencies[int(len(latencies) * 0.90) - 1] * 1e3,
        "p99_ms": latencies[int(len(latencies) * 0.99) - 1] * 1e3,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=5000)
    parser.add_argument("--concurrency", type=int, default=16)
    parser.add_argument(
        "--sidecar-log-level",
        default="WARNING",
        help="the sidecar's log level; INFO adds its one log line per evaluation (written to a "
        "file, so the cost of formatting and writing it is counted, not a terminal's)",
    )
    arguments = parser.parse_args()
    extra_env = json.loads(os.environ.get("BENCH_SIDECAR_ENV", "{}"))
    with (
        upstream() as upstream_port,
        sidecar(upstream_port, extra_env, log_level=arguments.sidecar_log_level) as stack,
    ):
        idle_rss = rss_mib(stack.sidecar.pid)
        result = asyncio.run(
            drive(stack.sidecar_address, arguments.calls, arguments.concurrency, stack.sidecar.pid)
        )
        result["rss_idle_mib"] = idle_rss
        result["rss_after_mib"] = rss_mib(stack.sidecar.pid)
    print(
        f"EvaluateNode, {arguments.concurrency} concurrent callers, loopback upstream, "
        f"{os.cpu_count()} cores"
    )
    for name, value in result.items():
        print(f"  {name:32} {value:10.1f}")


if __name__ == "__main__":
    main()
