"""The rules-sidecar benchmark: what the sidecar adds over calling the API directly.

    make bench                 # full run, writes bench/results/<version>.json
    make bench ARGS=--quick    # shorter runs, same report

One run, all on loopback, on this machine:

1. Fixed rates (200/s and 1000/s), open loop, the SAME Python asyncio client driving both paths:
   - sidecar: EvaluateNode over gRPC (the sidecar renders, calls, decides, extracts);
   - direct:  the backend's alternative, in-process: the same GET with the API key, the same
     three conditions and two extractions (aiohttp + jmespath).
   The added latency is sidecar minus direct, percentile by percentile.
2. Saturation with ghz (the standard gRPC load tool, pinned), for EvaluateNode, ExtractVariables
   and the grpcio floor (grpc.health.v1.Health/Check on the same server: a no-op unary call).
   Sidecar CPU per call comes from the sidecar process's own accounting (/proc/<pid>/stat).
3. Resident memory idle and after >= 100,000 evaluations (full mode).
4. The same EvaluateNode saturation with tracing sampled at 100% to a local OTLP sink, when the
   sidecar has telemetry.

Figures are benchmark output, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import subprocess
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

import aiohttp
import grpc
import jmespath
from common import (
    API_KEY,
    NODE,
    ORDER,
    ROOT,
    VARIABLES,
    Stack,
    cpu_seconds,
    rss_mib,
    sidecar,
    upstream,
)
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc
from tracing_cost import NoopCollector

GHZ = ROOT / ".tools/go/bin/ghz"
SERVICE = "rulesidecar.v1.RulesSidecarService"
EXTRACTIONS = NODE["extractions"]


def percentiles(latencies: list[float]) -> dict[str, float]:
    ordered = sorted(latencies)

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1e3

    return {"p50_ms": at(0.50), "p90_ms": at(0.90), "p99_ms": at(0.99)}


async def open_loop(
    call: Callable[[], Awaitable[None]], rate: float, seconds: float
) -> tuple[list[float], int]:
    """Start one call every 1/rate s regardless of answers (latency includes any queueing).

    Returns the latencies of the calls that succeeded and the number that failed.
    """
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures = 0

    async def timed(scheduled: float) -> None:
        nonlocal failures
        try:
            await call()
        except (grpc.RpcError, aiohttp.ClientError, WrongAnswerError):
            failures += 1
            return
        latencies.append(loop.time() - scheduled)

    tasks = []
    start = loop.time() + 0.05
    for index in range(int(rate * seconds)):
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(scheduled)))
    await asyncio.gather(*tasks)
    return latencies, failures


class WrongAnswerError(Exception):
    """A path answered something other than the scenario's expected branch."""


def direct_evaluation(session: aiohttp.ClientSession, url: str) -> Callable[[], Awaitable[None]]:
    """The backend doing it itself: same request, same three conditions, same two extractions."""
    status_path, carrier_path = jmespath.compile("status"), jmespath.compile("carrier.name")

    async def call() -> None:
        async with session.get(url, headers={"X-API-Key": API_KEY}) as response:
            body = await response.json(content_type=None)
            status = status_path.search(body)
            if 200 <= response.status <= 299 and status == "shipped":
                branch = "show-status"
            elif status in ("processing", "packed"):
                branch = "processing"
            else:
                branch = "not-found"
            extracted = {"order_status": status, "carrier": carrier_path.search(body)}
            if branch != "show-status" or extracted["order_status"] is None:
                raise WrongAnswerError(f"direct path went wrong: {branch} {extracted}")

    return call


def sidecar_evaluation(stub: pb_grpc.RulesSidecarServiceStub) -> Callable[[], Awaitable[None]]:
    request = pb.EvaluateNodeRequest(node=json_format.ParseDict(NODE, pb.Node()))
    request.variables.update(VARIABLES)

    async def call() -> None:
        answer = await stub.EvaluateNode(request)
        if answer.outcome != pb.OUTCOME_MATCHED:
            raise WrongAnswerError(f"sidecar path went wrong: {answer.reason}")

    return call


async def fixed_rates(stack: Stack, rates: list[int], seconds: float) -> dict[str, Any]:
    results: dict[str, Any] = {}
    async with (
        aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session,
        grpc.aio.insecure_channel(stack.sidecar_address) as channel,
    ):
        paths = {
            "direct": direct_evaluation(session, stack.order_url),
            "sidecar": sidecar_evaluation(pb_grpc.RulesSidecarServiceStub(channel)),
        }
        for call in paths.values():  # warm pools and caches
            for _ in range(200):
                await call()
        for rate in rates:
            row: dict[str, Any] = {}
            for name, call in paths.items():
                cpu_before = cpu_seconds(stack.sidecar.pid)
                latencies, failures = await open_loop(call, rate, seconds)
                cpu = cpu_seconds(stack.sidecar.pid) - cpu_before
                row[name] = {**percentiles(latencies), "failed": failures}
                if name == "sidecar":
                    row[name]["sidecar_cpu_us_per_evaluation"] = cpu / len(latencies) * 1e6
            row["added"] = {
                key: row["sidecar"][key] - row["direct"][key]
                for key in ("p50_ms", "p90_ms", "p99_ms")
            }
            results[f"{rate}/s"] = row
    return results


def ghz(
    stack: Stack, call: str, data: dict[str, Any], total: int, concurrency: int, proto: str = ""
) -> dict[str, Any]:
    """Saturate one RPC with ghz; sidecar CPU from /proc around the run."""
    cpu_before = cpu_seconds(stack.sidecar.pid)
    completed = subprocess.run(
        [
            str(GHZ),
            "--import-paths",
            f"{ROOT / 'proto'},{ROOT / 'bench' / 'protos'}",
            "--proto",
            proto or "rulesidecar/v1/rules_sidecar.proto",
            "--insecure",
            "--call",
            call,
            "--data",
            json.dumps(data),
            "--concurrency",
            str(concurrency),
            "--connections",
            "4",
            "--total",
            str(total),
            "--format",
            "json",
            stack.sidecar_address,
        ],
        check=False,
        capture_output=True,
        text=True,
    )
    cpu = cpu_seconds(stack.sidecar.pid) - cpu_before
    if completed.returncode != 0:
        raise SystemExit(
            f"ghz failed for {call}: {completed.stderr.strip() or completed.stdout[:500]}"
        )
    report = json.loads(completed.stdout)
    distribution = {
        int(item["percentage"]): item["latency"] / 1e6 for item in report["latencyDistribution"]
    }
    ok = report["statusCodeDistribution"].get("OK", 0)
    return {
        "calls": report["count"],
        "ok": ok,
        "calls_per_second": report["rps"],
        "p50_ms": distribution.get(50, 0.0),
        "p90_ms": distribution.get(90, 0.0),
        "p99_ms": distribution.get(99, 0.0),
        "sidecar_cpu_us_per_call": cpu / max(report["count"], 1) * 1e6,
    }


def saturation(stack: Stack, total: int, concurrency: int) -> dict[str, Any]:
    evaluate = {"node": NODE, "variables": VARIABLES}
    extract = {"extractions": EXTRACTIONS, "json": ORDER}
    results = {
        "echo_floor (Health/Check)": ghz(
            stack, "grpc.health.v1.Health/Check", {}, total, concurrency, proto="health.proto"
        ),
        "ExtractVariables": ghz(stack, f"{SERVICE}/ExtractVariables", extract, total, concurrency),
        "EvaluateNode": ghz(stack, f"{SERVICE}/EvaluateNode", evaluate, total, concurrency),
    }
    floor = results["echo_floor (Health/Check)"]["sidecar_cpu_us_per_call"]
    results["ExtractVariables"]["cpu_vs_echo_floor"] = (
        results["ExtractVariables"]["sidecar_cpu_us_per_call"] / floor
    )
    return results


def machine() -> dict[str, Any]:
    model = ""
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    memory_kib = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpu": model,
        "cores": os.cpu_count(),
        "memory_gib": round(memory_kib / 1024 / 1024, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="rules-sidecar benchmark")
    parser.add_argument("--quick", action="store_true", help="shorter runs (~1 min)")
    parser.add_argument(
        "--output", type=Path, help="results file (default bench/results/<version>.json)"
    )
    arguments = parser.parse_args()
    if not GHZ.exists():
        raise SystemExit("ghz is missing: run scripts/bench (it installs the pinned ghz)")
    seconds, total, memory_total = (
        (4.0, 5000, 20_000) if arguments.quick else (15.0, 20_000, 100_000)
    )
    version = subprocess.run(
        [
            str(ROOT / ".venv/bin/python"),
            "-c",
            "import importlib.metadata as m; print(m.version('rules-sidecar'))",
        ],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    commit = subprocess.run(
        ["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT
    ).stdout.strip()
    results: dict[str, Any] = {
        "version": version,
        "commit": commit,
        "date": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
        "mode": "quick" if arguments.quick else "full",
        "machine": machine(),
    }
    with upstream() as upstream_port:
        with sidecar(upstream_port) as stack:
            results["rss_idle_mib"] = rss_mib(stack.sidecar.pid)
            results["fixed_rate"] = asyncio.run(fixed_rates(stack, [200, 1000], seconds))
            results["saturation"] = saturation(stack, total, concurrency=16)
            evaluations = ghz(
                stack,
                f"{SERVICE}/EvaluateNode",
                {"node": NODE, "variables": VARIABLES},
                memory_total,
                16,
            )
            results["memory"] = {
                "evaluations_run": memory_total,
                "rss_after_mib": rss_mib(stack.sidecar.pid),
                "growth_mib": rss_mib(stack.sidecar.pid) - results["rss_idle_mib"],
                "evaluations_per_second": evaluations["calls_per_second"],
            }
        evaluate = {"node": NODE, "variables": VARIABLES}
        collector = NoopCollector()  # a loopback OTLP receiver that accepts and drops exports
        try:
            tracing_env = {
                "OTEL_SDK_DISABLED": "false",
                "OTEL_TRACES_SAMPLER": "always_on",
                "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{collector.port}",
            }
            with sidecar(upstream_port, tracing_env) as stack:
                results["tracing_100_percent"] = ghz(
                    stack, f"{SERVICE}/EvaluateNode", evaluate, total, 16
                )
        finally:
            collector.close()
        with sidecar(upstream_port, log_level="INFO") as stack:
            results["info_log_line_per_evaluation"] = ghz(
                stack, f"{SERVICE}/EvaluateNode", evaluate, total, 16
            )
    output = arguments.output or ROOT / "bench" / "results" / f"v{version}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {output}")


def print_table(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(
        f"rules-sidecar {results['version']} ({results['commit']}), {results['mode']} run, "
        f"{m['cores']} cores {m['cpu']}, Python {m['python']}"
    )
    print(
        f"\n{'fixed rate':10} {'path':8} {'p50 ms':>8} {'p90 ms':>8} {'p99 ms':>8} {'CPU us/eval':>12}"
    )
    for rate, row in results["fixed_rate"].items():
        for path in ("direct", "sidecar", "added"):
            cells = row[path]
            cpu = cells.get("sidecar_cpu_us_per_evaluation")
            print(
                f"{rate:10} {path:8} {cells['p50_ms']:8.2f} {cells['p90_ms']:8.2f} {cells['p99_ms']:8.2f} "
                f"{(f'{cpu:12.0f}' if cpu else ''):>12}"
            )
    print(
        f"\n{'saturation (ghz, 16 concurrent)':32} {'calls/s':>8} {'p50 ms':>8} {'p99 ms':>8} {'CPU us/call':>12}"
    )
    rows = dict(results["saturation"])
    rows["EvaluateNode, tracing 100%"] = results["tracing_100_percent"]
    rows["EvaluateNode, INFO log lines"] = results["info_log_line_per_evaluation"]
    for name, row in rows.items():
        print(
            f"{name:32} {row['calls_per_second']:8.0f} {row['p50_ms']:8.2f} {row['p99_ms']:8.2f} "
            f"{row['sidecar_cpu_us_per_call']:12.0f}"
        )
    ratio = results["saturation"]["ExtractVariables"]["cpu_vs_echo_floor"]
    print(f"\nExtractVariables CPU / echo floor: {ratio:.2f}x")
    mem = results["memory"]
    print(
        f"RSS idle {results['rss_idle_mib']:.1f} MiB; after {mem['evaluations_run']} evaluations "
        f"{mem['rss_after_mib']:.1f} MiB (growth {mem['growth_mib']:+.1f} MiB)"
    )


if __name__ == "__main__":
    main()
