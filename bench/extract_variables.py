"""ExtractVariables CPU per call, this tree against another one and the echo floor, in one run.

`make bench` reports ExtractVariables against the echo floor, but its baseline row is
EvaluateNode only; this measures the same call (the scenario's two extractions on the 1 KB order
as a `json` Value) on two sidecars and the echo, rounds rotated, CPU from each server's /proc.

    .venv/bin/python bench/extract_variables.py --baseline DIR [--rounds 5] [--calls 1500]

DIR is another checkout with its own .venv (a worktree of main, say).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
from pathlib import Path

import grpc
import uvloop
from common import NODE, ORDER, echo_floor, sidecar, upstream
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from run import SERVICE, System, extracted, grpc_call, saturate


async def measure(baseline: Path, rounds: int, calls: int) -> None:
    request = json_format.ParseDict(
        {"extractions": NODE["extractions"], "json": ORDER}, pb.ExtractVariablesRequest()
    ).SerializeToString()
    method = f"/{SERVICE}/ExtractVariables"
    with (
        upstream() as upstream_port,
        sidecar(upstream_port, log_level="INFO") as this,
        sidecar(upstream_port, log_level="INFO", checkout=baseline) as other,
        echo_floor() as (echo_port, echo_process),
    ):
        async with (
            grpc.aio.insecure_channel(this.sidecar_address) as this_channel,
            grpc.aio.insecure_channel(other.sidecar_address) as other_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
        ):
            systems = [
                System(
                    "echo",
                    echo_process.pid,
                    grpc_call(echo_channel, "/bench.Echo/Echo", request, lambda _: None),
                ),
                System(
                    "this tree",
                    this.sidecar.pid,
                    grpc_call(this_channel, method, request, extracted),
                ),
                System(
                    "baseline",
                    other.sidecar.pid,
                    grpc_call(other_channel, method, request, extracted),
                ),
            ]
            for system in systems:  # warm up: compiled extractions cached, connections open
                await saturate(system, 300)
            cpu: dict[str, list[float]] = {system.name: [] for system in systems}
            for index in range(rounds):
                for system in systems[index % 3 :] + systems[: index % 3]:
                    cpu[system.name].append((await saturate(system, calls))["cpu_us"])
    print(f"CPU us per call, {rounds} rounds rotated: median (min-max), x echo floor")
    for name, values in cpu.items():
        ratios = [value / echo for value, echo in zip(values, cpu["echo"], strict=True)]
        print(
            f"{name:10s} {statistics.median(values):6.0f} ({min(values):.0f}-{max(values):.0f})"
            f"  {statistics.median(ratios):.2f}x ({min(ratios):.2f}-{max(ratios):.2f})"
        )
    relative = [a / b for a, b in zip(cpu["this tree"], cpu["baseline"], strict=True)]
    print(
        f"this tree / baseline per round: {statistics.median(relative):.2f} "
        f"({min(relative):.2f}-{max(relative):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path, required=True)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1500)
    arguments = parser.parse_args()
    uvloop.install()
    asyncio.run(measure(arguments.baseline, arguments.rounds, arguments.calls))


if __name__ == "__main__":
    main()
