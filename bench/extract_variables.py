"""ExtractVariables CPU per call, this tree against another one and the echo floor, in one run.

`make bench` reports ExtractVariables against the echo floor, but its baseline row is
EvaluateNode only; this measures the same call (the scenario's two extractions on the 1 KB order
as a `json` Value) on two sidecars and the echo, rounds rotated, CPU from each server's /proc.

    .venv/bin/python bench/extract_variables.py --baseline DIR [--rounds 5] [--calls 1500]
    .venv/bin/python bench/extract_variables.py --in-process --baseline DIR [--rounds 7]

DIR is another checkout with its own .venv (a worktree of main, say).

`--in-process` measures the handler alone, as the server calls it: the method's layers (built
by `interceptors.layered` over the loaded sidecar's service), the request's bytes parsed, the
servicer, the answer serialised; thread CPU per call, one call at a time, each round a fresh
process per checkout, the order rotated. What a change to the Python path buys, without the
gRPC core's cost and noise around it.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc
import uvloop
from common import NODE, ORDER, echo_floor, sidecar, upstream, worker_in_tree
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


class _Context:
    """What the handler asks of grpc.aio's context on a call that succeeds."""

    def time_remaining(self) -> float | None:
        return None

    def invocation_metadata(self) -> tuple[()]:
        return ()

    def code(self) -> None:
        return None


class _CallDetails:
    method = f"/{SERVICE}/ExtractVariables"
    invocation_metadata = ()


async def handler_cpu(calls: int) -> float:
    """Thread CPU us per ExtractVariables through its layers, in this process."""
    from sidecar.api.interceptors import layered
    from sidecar.server import start_sidecar
    from sidecar.settings import Settings
    from sidecar.telemetry.instruments import Telemetry

    request = json_format.ParseDict(
        {"extractions": NODE["extractions"], "json": ORDER}, pb.ExtractVariablesRequest()
    ).SerializeToString()
    with tempfile.TemporaryDirectory() as scratch:
        settings = Settings(listen_address="127.0.0.1:0", data_dir=Path(scratch))
        running = await start_sidecar(settings, telemetry=Telemetry())
        try:
            service = layered(running.server.gate, telemetry=running.telemetry)
            context: Any = _Context()
            details: Any = _CallDetails()
            handler: Any  # its unary_unary is a coroutine function under grpc.aio
            for _ in range(300):  # compiled extractions cached, the code warm
                handler = service.service(details)
                handler.response_serializer(await handler.unary_unary(request, context))
            started = time.thread_time()
            for _ in range(calls):
                handler = service.service(details)
                handler.response_serializer(await handler.unary_unary(request, context))
            return (time.thread_time() - started) / calls * 1e6
        finally:
            await running.stop(0)


def in_process(baseline: Path, rounds: int, calls: int) -> None:
    trees = [Path(__file__).resolve().parent.parent, baseline.resolve()]
    cpu: dict[Path, list[float]] = {tree: [] for tree in trees}
    for index in range(rounds):
        for tree in trees[index % 2 :] + trees[: index % 2]:
            cpu[tree].append(json.loads(worker_in_tree(tree, __file__, str(calls))))
    print(f"handler CPU us per call, {rounds} rounds x {calls} calls, load {os.getloadavg()}")
    for tree, values in cpu.items():
        print(f"{tree!s:30s} min {min(values):6.1f}  median {statistics.median(values):6.1f}")
    ratios = [a / b for a, b in zip(cpu[trees[0]], cpu[trees[1]], strict=True)]
    print(
        f"this tree / baseline per round: {statistics.median(ratios):.2f} "
        f"({min(ratios):.2f}-{max(ratios):.2f})"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--baseline", type=Path)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=1500)
    parser.add_argument("--in-process", action="store_true")
    parser.add_argument("--worker", type=int, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    uvloop.install()
    if arguments.worker:
        print(json.dumps(asyncio.run(handler_cpu(arguments.worker))))
        return
    if arguments.baseline is None:
        parser.error("--baseline DIR is required")
    if arguments.in_process:
        in_process(arguments.baseline, arguments.rounds, arguments.calls)
        return
    asyncio.run(measure(arguments.baseline, arguments.rounds, arguments.calls))


if __name__ == "__main__":
    main()
