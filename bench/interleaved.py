"""Two checkouts' sidecars side by side: EvaluateNode CPU per call, batches interleaved.

    .venv/bin/python bench/interleaved.py OTHER [--batches 40] [--calls 1000]
                                         [--log-level INFO] [--other-log-level LEVEL]

Both sidecars run at once against one loopback upstream (this checkout's as A, OTHER's, with
its own .venv, as B), and the driver sends them batches of `--calls` calls at 16 concurrent,
A then B, then B then A. CPU per call is each process's own, every thread's (schedstat, in ns).
On this shared 2-core machine the load moves a sidecar's CPU 10-15% between rounds of
`make bench`; batches a second apart see the same load, so the ratio per pair of batches is the
figure to read (an A/A run gives 1.00-1.03: a few percent is the method's own spread).
`--other-log-level WARNING` with OTHER this same checkout prices the INFO line.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
from pathlib import Path

import grpc
from common import NODE, ROOT, VARIABLES, sidecar, upstream
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb

METHOD = "/rulesidecar.v1.RulesSidecarService/EvaluateNode"
CONCURRENCY = 16


def cpu_ns(pid: int) -> int:
    """Every thread's CPU time so far (schedstat: nanoseconds, finer than /proc/<pid>/stat)."""
    total = 0
    for thread in os.listdir(f"/proc/{pid}/task"):
        try:
            total += int(Path(f"/proc/{pid}/task/{thread}/schedstat").read_text().split()[0])
        except OSError:  # the thread ended meanwhile
            continue
    return total


async def batches(
    addresses: list[str], pids: list[int], count: int, calls: int
) -> list[list[float]]:
    """CPU us per call of each sidecar, one figure per batch, the order alternated."""
    request = pb.EvaluateNodeRequest(node=json_format.ParseDict(NODE, pb.Node()))
    request.variables.update(VARIABLES)
    payload = request.SerializeToString()
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    stubs = [channel.unary_unary(METHOD) for channel in channels]
    for stub in stubs:  # warm-up: pools, caches, the compiled node
        for _ in range(1000):
            answer = pb.EvaluateNodeResponse.FromString(await stub(payload))
        if answer.outcome != pb.OUTCOME_MATCHED:
            raise SystemExit(f"unexpected answer: {answer}")
    figures: list[list[float]] = [[], []]
    for number in range(count):
        for side in (0, 1) if number % 2 == 0 else (1, 0):
            stub, remaining = stubs[side], calls

            async def caller(stub: grpc.aio.UnaryUnaryMultiCallable = stub) -> None:
                nonlocal remaining
                while remaining > 0:
                    remaining -= 1
                    await stub(payload)

            before = cpu_ns(pids[side])
            await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
            figures[side].append((cpu_ns(pids[side]) - before) / calls / 1000)
    for channel in channels:
        await channel.close()
    return figures


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("other", type=Path, help="the other checkout (B), with its own .venv")
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--calls", type=int, default=1000, help="calls per batch")
    parser.add_argument("--log-level", default="INFO")
    parser.add_argument("--other-log-level", help="B's log level (default: --log-level)")
    arguments = parser.parse_args()
    other = arguments.other.resolve()
    with (
        upstream() as port,
        sidecar(port, checkout=ROOT, log_level=arguments.log_level) as a,
        sidecar(
            port, checkout=other, log_level=arguments.other_log_level or arguments.log_level
        ) as b,
    ):
        first, second = asyncio.run(
            batches(
                [a.sidecar_address, b.sidecar_address],
                [a.sidecar.pid, b.sidecar.pid],
                arguments.batches,
                arguments.calls,
            )
        )
    ratios = [b_figure / a_figure for a_figure, b_figure in zip(first, second, strict=True)]
    low, _, high = statistics.quantiles(ratios, n=4)
    print(f"load average {os.getloadavg()[0]:.1f}, {arguments.batches} pairs of batches")
    print(f"A {ROOT}: {statistics.median(first):.1f} us per call (median)")
    print(f"B {other}: {statistics.median(second):.1f} us per call (median)")
    print(
        f"B/A per pair: median {statistics.median(ratios):.3f} (quartiles {low:.3f}-{high:.3f}); "
        f"of the sums {sum(second) / sum(first):.3f}"
    )


if __name__ == "__main__":
    main()
