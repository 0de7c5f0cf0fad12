"""The fleet on PostgreSQL (issue 12): propagation latency, write throughput, evaluation CPU.

Everything on loopback, on this machine: a throwaway PostgreSQL cluster (tests/support/postgres.py:
initdb in a temp directory, fsync off), three `rules-sidecar serve` replicas sharing its
store_url (the password in RULES_SIDECAR_STORE_PASSWORD), and one more sidecar on the embedded
SQLite store (durable commits) as the baseline.

1. Propagation: N RegisterConnector calls (create-or-replace over 20 ids), the writer rotating
   over the three replicas. For each, the time from sending the write until BOTH other replicas
   answer the new version to GetConnector (each polled in its own loop, 1 ms apart). p50/p99/max
   over the N changes; the target is 1 s at p99.
2. Registrations per second: one replica of each back end, 1 writer and 4 concurrent writers
   (distinct ids), and on PostgreSQL 3 writers, one per replica; rounds interleaved SQLite /
   PostgreSQL; median and spread over the rounds.
3. EvaluateNode sidecar CPU per call (bench/evaluate_node.py's driver, 16 concurrent callers)
   on a PostgreSQL replica and on the SQLite sidecar, interleaved; the ratio of the medians. No
   database is on the evaluation path, so it should be ~1.

The machine is shared and noisy: every measured part is repeated and interleaved, and the
report gives medians with min-max. Figures are benchmark output, never pass/fail.

    .venv/bin/python bench/fleet.py [--changes 1000] [--rounds 5] [--output FILE]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import grpc
from common import ROOT, sidecar, upstream
from evaluate_node import drive
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

sys.path.insert(0, str(ROOT))
from tests.support.postgres import PostgresCluster, server_bindir

URL = "https://api.store.com/orders/{{order_number}}"
IDS = [f"fleet-{n:02d}" for n in range(20)]
POLL_SECONDS = 0.001
GIVE_UP_SECONDS = 30.0


def connector(connector_id: str, note: str) -> pb.Connector:
    return json_format.ParseDict(
        {
            "id": connector_id,
            "status": "CONNECTOR_STATUS_LIVE",
            "url_template": URL,
            "display_name": note,
        },
        pb.Connector(),
    )


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(len(ordered) * fraction + 0.5) - 1))]


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


async def version_of(stub: pb_grpc.RulesSidecarServiceStub, connector_id: str) -> int:
    try:
        answer = await stub.GetConnector(pb.GetConnectorRequest(id=connector_id), timeout=5)
    except grpc.aio.AioRpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return 0
        raise
    return int(answer.connector.version)


async def seen_at(stub: pb_grpc.RulesSidecarServiceStub, connector_id: str, version: int) -> float:
    """perf_counter when this replica first answers `version` (or a newer one)."""
    give_up = time.perf_counter() + GIVE_UP_SECONDS
    while True:
        if await version_of(stub, connector_id) >= version:
            return time.perf_counter()
        if time.perf_counter() > give_up:
            raise SystemExit(f"{connector_id} v{version} not seen within {GIVE_UP_SECONDS} s")
        await asyncio.sleep(POLL_SECONDS)


async def propagation(addresses: list[str], changes: int) -> dict[str, Any]:
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    stubs = [pb_grpc.RulesSidecarServiceStub(channel) for channel in channels]
    try:
        acked: list[float] = []
        visible: list[float] = []
        for n in range(changes):
            writer = n % len(stubs)
            others = [stub for i, stub in enumerate(stubs) if i != writer]
            connector_id = IDS[n % len(IDS)]
            sent = time.perf_counter()
            answer = await stubs[writer].RegisterConnector(
                pb.RegisterConnectorRequest(connector=connector(connector_id, f"change {n}")),
                timeout=10,
            )
            acked.append(time.perf_counter() - sent)
            seen = await asyncio.gather(
                *(seen_at(stub, connector_id, answer.connector.version) for stub in others)
            )
            visible.append(max(seen) - sent)
    finally:
        for channel in channels:
            await channel.close()
    ms = [value * 1e3 for value in visible]
    return {
        "changes": changes,
        "visible_on_every_other_replica_ms": {
            "p50": percentile(ms, 0.50),
            "p90": percentile(ms, 0.90),
            "p99": percentile(ms, 0.99),
            "max": max(ms),
        },
        "write_acknowledged_ms": {
            "p50": percentile([v * 1e3 for v in acked], 0.50),
            "p99": percentile([v * 1e3 for v in acked], 0.99),
        },
    }


async def registrations(addresses: list[str], writers: int, per_writer: int, tag: str) -> float:
    """Registrations per second: `writers` concurrent loops, each over ids of its own, writer w
    calling addresses[w % len(addresses)]."""
    channels = [grpc.aio.insecure_channel(address) for address in addresses]
    stubs = [pb_grpc.RulesSidecarServiceStub(channel) for channel in channels]
    try:

        async def writer(w: int, stub: pb_grpc.RulesSidecarServiceStub) -> None:
            for n in range(per_writer):
                request = pb.RegisterConnectorRequest(
                    connector=connector(f"w-{tag}-{w}-{n % 10}", f"write {n}")
                )
                await stub.RegisterConnector(request, timeout=10)

        for stub in stubs:  # warm-up: connections, prepared paths
            await writer(99, stub)
        started = time.perf_counter()
        await asyncio.gather(*(writer(w, stubs[w % len(stubs)]) for w in range(writers)))
        return writers * per_writer / (time.perf_counter() - started)
    finally:
        for channel in channels:
            await channel.close()


def machine() -> dict[str, Any]:
    return {"cores": os.cpu_count(), "python": platform.python_version(), "kernel": os.uname()[2]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--changes", type=int, default=1000)
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--writes", type=int, default=200, help="registrations per round")
    parser.add_argument("--calls", type=int, default=3000, help="EvaluateNode calls per round")
    parser.add_argument("--output", type=Path)
    arguments = parser.parse_args()
    bindir = server_bindir()
    if bindir is None:
        raise SystemExit("no PostgreSQL server: scripts/postgres install")

    cluster = PostgresCluster.start(bindir)
    try:
        database = cluster.create_database("bench_fleet")
        fleet_env = {
            "RULES_SIDECAR_STORE_URL": database.url,
            "RULES_SIDECAR_STORE_PASSWORD": database.password,
        }
        with contextlib.ExitStack() as stack:
            upstream_port = stack.enter_context(upstream())
            replicas = [stack.enter_context(sidecar(upstream_port, fleet_env)) for _ in range(3)]
            embedded = stack.enter_context(sidecar(upstream_port))
            addresses = [replica.sidecar_address for replica in replicas]

            print(f"propagation: {arguments.changes} changes across 3 replicas ...", flush=True)
            asyncio.run(propagation(addresses, 30))  # warm-up
            result_propagation = asyncio.run(propagation(addresses, arguments.changes))

            writes: dict[str, list[float]] = {}
            cpu: dict[str, list[float]] = {"postgresql": [], "sqlite": []}
            for round_number in range(arguments.rounds):
                print(f"round {round_number + 1}/{arguments.rounds} ...", flush=True)
                order = [("sqlite", embedded), ("postgresql", replicas[0])]
                if round_number % 2:
                    order.reverse()
                cases = [
                    (f"{back_end}, {writers} writer(s)", [target.sidecar_address], writers)
                    for back_end, target in order
                    for writers in (1, 4)
                ]
                cases.append(("postgresql, 3 writers, one per replica", addresses, 3))
                for name, targets, writers in cases:
                    rate = asyncio.run(
                        registrations(
                            targets, writers, arguments.writes // writers, f"{round_number}"
                        )
                    )
                    writes.setdefault(name, []).append(rate)
                for back_end, target in order:
                    measured = asyncio.run(
                        drive(target.sidecar_address, arguments.calls, 16, target.sidecar.pid)
                    )
                    cpu[back_end].append(measured["sidecar_cpu_us_per_evaluation"])
    finally:
        cluster.stop()

    ratios = [pg / lite for pg, lite in zip(cpu["postgresql"], cpu["sqlite"], strict=True)]
    report = {
        "commit": subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
        ).stdout.strip(),
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "machine": machine(),
        "postgresql": {"server": str(bindir), "fsync": "off (throwaway test cluster)"},
        "propagation": result_propagation,
        "target_1s_p99_holds": result_propagation["visible_on_every_other_replica_ms"]["p99"]
        < 1000,
        "registrations_per_second": {name: spread(rates) for name, rates in writes.items()},
        "evaluate_node_cpu_us_per_call": {
            "postgresql": spread(cpu["postgresql"]),
            "sqlite": spread(cpu["sqlite"]),
            "ratio_postgresql_over_sqlite": spread(ratios),
        },
        "rounds": arguments.rounds,
    }
    text = json.dumps(report, indent=2)
    print(text)
    if arguments.output:
        arguments.output.write_text(text + "\n")


if __name__ == "__main__":
    main()
