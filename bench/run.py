"""The rules-sidecar benchmark, with its anchors: what one decision costs next to what it could.

    make bench                 # full run (~8 min), writes bench/results/v<version>-<commit>.json
    make bench ARGS=--quick    # fewer and shorter rounds, same report
    make bench ARGS='--rounds 9'  # more rounds: narrower medians on a noisy machine

One run, in one private network namespace (`unshare -rn`; plain loopback when user namespaces
are unavailable, and the report says which), with the same upstream (a ~1 KB order JSON) and the
same Python asyncio driver for every system:

| system | what it is |
|---|---|
| echo floor | a no-op grpc.aio server answering the request's bytes (bench/echo_server.py): the floor of one unary call |
| sidecar | `rules-sidecar serve` with its defaults (INFO, the evaluation line of every error and one in 100 others), EvaluateNode |
| sidecar, WARNING | the same with `--log-level WARNING`: no evaluation line |
| sidecar, every evaluation logged | the defaults with `evaluation_log_every: 1`: one line per evaluation (v0.1's default); one line's cost is this against WARNING |
| sidecar, traced 100% | the defaults plus traces sampled at 100% and metrics, to a no-op OTLP receiver |
| ExtractVariables | the default sidecar's ExtractVariables on the same document and extractions |
| direct | the backend doing it itself, in the driver's process: the same GET with the API key, the same three conditions and two extractions (aiohttp + jmespath) |
| OPA | OPA (built from the Go module proxy, pinned in scripts/bench) with the node as Rego (bench/opa/decision.rego, `http.send`), over its REST API; skipped with a note when missing |

Each round measures every system, in an order rotated by one each round (so a burst of load from
elsewhere on this shared machine hits each alike):
- CPU per decision at saturation (16 concurrent callers): the server process's own accounting
  (/proc/<pid>/stat), the driver's for `direct`; and the ratio to the echo floor of the same round;
- latency at fixed rates, open loop (a call started every 1/rate s whatever the answers): at
  200/s every call is done before the next starts (concurrency 1). "added" is a system's
  percentile minus the direct path's, in the same round.
Reported: the median over rounds and the spread (min-max). Then the default sidecar's resident
memory idle, after the warm-up and after >= 100,000 evaluations (full mode).

Figures are benchmark output, never pass/fail.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import AsyncExitStack
from dataclasses import dataclass, field
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
    cpu_seconds,
    echo_floor,
    opa_server,
    rss_mib,
    sidecar,
    upstream,
)
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from tracing_cost import NoopCollector

OPA = ROOT / ".tools/go/bin/opa"
EVERY_LINE = {"RULES_SIDECAR_EVALUATION_LOG_EVERY": "1"}  # an INFO line for each evaluation
SERVICE = "rulesidecar.v1.RulesSidecarService"
EXTRACTIONS = NODE["extractions"]
CONCURRENCY = 16
NETNS_MARK = "BENCH_NETWORK"


class WrongAnswerError(Exception):
    """A system answered something other than the scenario's expected branch."""


@dataclass
class System:
    """One row: the process charged for its CPU and one call of it."""

    name: str
    pid: int
    call: Callable[[], Awaitable[None]]
    rounds: list[dict[str, Any]] = field(default_factory=list)


# -- the calls -------------------------------------------------------------------------------------


def grpc_call(
    channel: grpc.aio.Channel, method: str, request: bytes, check: Callable[[bytes], None]
) -> Callable[[], Awaitable[None]]:
    """A unary call with pre-serialised bytes, the same way for every gRPC system."""
    stub = channel.unary_unary(method)

    async def call() -> None:
        check(await stub(request))

    return call


def evaluated(answer: bytes) -> None:
    response = pb.EvaluateNodeResponse.FromString(answer)
    if response.outcome != pb.OUTCOME_MATCHED:
        raise WrongAnswerError(f"sidecar: {response.reason} {response.message}")


def extracted(answer: bytes) -> None:
    if not pb.ExtractVariablesResponse.FromString(answer).complete:
        raise WrongAnswerError("ExtractVariables: incomplete")


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
            variables = {"order_status": status, "carrier": carrier_path.search(body)}
            if branch != "show-status" or variables["order_status"] is None:
                raise WrongAnswerError(f"direct: {branch} {variables}")

    return call


def opa_evaluation(session: aiohttp.ClientSession, port: int) -> Callable[[], Awaitable[None]]:
    url = f"http://127.0.0.1:{port}/v1/data/sidecar/decision"
    body = json.dumps({"input": {"variables": VARIABLES}}).encode()

    async def call() -> None:
        async with session.post(url, data=body, headers={"content-type": "application/json"}) as r:
            result = (await r.json()).get("result", {})
            if result.get("target") != "show-status":
                raise WrongAnswerError(f"OPA: {result}")

    return call


# -- the measurements ------------------------------------------------------------------------------


async def saturate(system: System, calls: int) -> dict[str, float]:
    """`calls` calls by CONCURRENCY closed-loop callers: CPU per call of the charged process."""
    remaining = calls

    async def caller() -> None:
        nonlocal remaining
        while remaining > 0:
            remaining -= 1
            await system.call()

    cpu_before = cpu_seconds(system.pid)
    started = time.perf_counter()
    await asyncio.gather(*(caller() for _ in range(CONCURRENCY)))
    wall = time.perf_counter() - started
    cpu = cpu_seconds(system.pid) - cpu_before
    return {"cpu_us": cpu / calls * 1e6, "calls_per_second": calls / wall}


async def paced(system: System, rate: float, seconds: float) -> dict[str, float]:
    """Open loop at `rate`: latency (queueing included) percentiles, and failures."""
    loop = asyncio.get_running_loop()
    latencies: list[float] = []
    failures = 0

    async def timed(scheduled: float) -> None:
        nonlocal failures
        try:
            await system.call()
        except (grpc.RpcError, aiohttp.ClientError, WrongAnswerError):
            failures += 1
            return
        latencies.append(loop.time() - scheduled)

    tasks = []
    start = loop.time() + 0.02
    for index in range(int(rate * seconds)):
        scheduled = start + index / rate
        delay = scheduled - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.create_task(timed(scheduled)))
    await asyncio.gather(*tasks)
    ordered = sorted(latencies) or [float("nan")]

    def at(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, int(len(ordered) * fraction))] * 1e3

    return {"p50_ms": at(0.50), "p99_ms": at(0.99), "failed": failures}


def spread(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def rotated(systems: list[System], shift: int) -> Iterator[System]:
    shift %= len(systems)
    yield from systems[shift:] + systems[:shift]


# -- the run ---------------------------------------------------------------------------------------


async def measure(
    systems: list[System],
    *,
    rounds: int,
    calls: int,
    rates: list[int],
    seconds: float,
    after_warm_up: Callable[[], None],
) -> None:
    for system in systems:
        for _ in range(200):  # pools, caches, compiled nodes
            await system.call()
    after_warm_up()
    for round_number in range(rounds):
        for system in rotated(systems, round_number):
            row: dict[str, Any] = await saturate(system, calls)
            for rate in rates:
                row[f"{rate}/s"] = await paced(system, rate, seconds)
            system.rounds.append(row)
            print(
                f"  round {round_number + 1}/{rounds} {system.name}: {row['cpu_us']:.0f} us/call, "
                f"{row['calls_per_second']:.0f}/s, p50 at {rates[0]}/s "
                f"{row[f'{rates[0]}/s']['p50_ms']:.2f} ms",
                file=sys.stderr,
                flush=True,
            )


def summarise(systems: list[System], rates: list[int]) -> dict[str, Any]:
    by_name = {system.name: system for system in systems}
    floor = by_name["echo floor"].rounds
    direct = by_name["direct"].rounds
    table: dict[str, Any] = {}
    for system in systems:
        rows = system.rounds
        entry: dict[str, Any] = {
            "cpu_us": spread([row["cpu_us"] for row in rows]),
            "x_floor": spread(
                [row["cpu_us"] / base["cpu_us"] for row, base in zip(rows, floor, strict=True)]
            ),
            "calls_per_second": spread([row["calls_per_second"] for row in rows]),
        }
        for rate in rates:
            key = f"{rate}/s"
            entry[key] = {
                name: spread([row[key][name] for row in rows]) for name in ("p50_ms", "p99_ms")
            }
            entry[key]["failed"] = sum(row[key]["failed"] for row in rows)
            entry[key]["added"] = {
                name: spread(
                    [
                        row[key][name] - base[key][name]
                        for row, base in zip(rows, direct, strict=True)
                    ]
                )
                for name in ("p50_ms", "p99_ms")
            }
        entry["rounds"] = rows  # each round's figures, for ratios between rows of one round
        table[system.name] = entry
    default = by_name["sidecar"].rounds

    def over_default(name: str) -> dict[str, float] | None:
        if name not in by_name:
            return None
        return spread(
            [
                row["cpu_us"] - base["cpu_us"]
                for row, base in zip(by_name[name].rounds, default, strict=True)
            ]
        )

    def over_quiet(rounds: list[dict[str, Any]]) -> dict[str, float] | None:
        if "sidecar, WARNING" not in by_name:
            return None
        quiet = by_name["sidecar, WARNING"].rounds
        return spread(
            [row["cpu_us"] - base["cpu_us"] for row, base in zip(rounds, quiet, strict=True)]
        )

    every_line = by_name.get("sidecar, every evaluation logged")
    return {
        "systems": table,
        # One line's price (every evaluation logged, against none), and what the default's
        # sampled lines cost a decision.
        "log_line_us": over_quiet(every_line.rounds) if every_line else None,
        "sampled_log_lines_us": over_quiet(default),
        "tracing_100_percent_us": over_default("sidecar, traced 100%"),
    }


def comparison(text: str) -> tuple[str, dict[str, str]]:
    name, _, assignments = text.partition(":")
    return name, dict(item.split("=", 1) for item in assignments.split(",") if item)


def private_network() -> str:
    """Re-run this script in a private network namespace when possible; what the run used."""
    if os.environ.get(NETNS_MARK):
        return os.environ[NETNS_MARK]
    unshare = shutil.which("unshare")
    probe = (
        subprocess.run([unshare, "-rn", "true"], capture_output=True, text=True, check=False)
        if unshare
        else None
    )
    if probe is None or probe.returncode != 0:
        why = "no unshare" if probe is None else probe.stderr.strip()[:120]
        return f"loopback (no private network namespace: {why})"
    mark = "a private network namespace (unshare -rn), loopback inside it"
    os.execve(  # noqa: S606 (the same script again, in the namespace)
        unshare,
        [unshare, "-rn", sys.executable, *sys.argv],
        {**os.environ, NETNS_MARK: mark, "BENCH_LO_UP": "1"},
    )
    raise AssertionError("unreachable")


def loopback_up() -> None:
    if os.environ.pop("BENCH_LO_UP", None):
        subprocess.run(["ip", "link", "set", "lo", "up"], check=True)


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
        "load_average_at_start": os.getloadavg(),
    }


def opa_version() -> str:
    if not OPA.exists():
        return ""
    output = subprocess.run([str(OPA), "version"], capture_output=True, text=True, check=False)
    for line in output.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "unknown"


async def run(arguments: argparse.Namespace, results: dict[str, Any]) -> None:
    rounds, calls, seconds, memory_total = (
        (3, 1500, 1.5, 20_000) if arguments.quick else (5, 4000, 3.0, 100_000)
    )
    rounds = arguments.rounds or rounds
    rates = arguments.rates
    results["settings"] = {
        "rounds": rounds,
        "calls_per_round": calls,
        "concurrency": CONCURRENCY,
        "rates": rates,
        "seconds_per_rate": seconds,
    }
    collector = NoopCollector()  # a loopback OTLP receiver that accepts and drops exports
    otlp = f"http://127.0.0.1:{collector.port}"
    tracing = {"OTEL_TRACES_SAMPLER": "always_on", "OTEL_EXPORTER_OTLP_ENDPOINT": otlp}
    evaluate = pb.EvaluateNodeRequest(node=json_format.ParseDict(NODE, pb.Node()))
    evaluate.variables.update(VARIABLES)
    extract = json_format.ParseDict(
        {"extractions": EXTRACTIONS, "json": ORDER}, pb.ExtractVariablesRequest()
    )
    async with AsyncExitStack() as stack:
        stack.callback(collector.close)
        upstream_port = stack.enter_context(upstream())
        default = stack.enter_context(sidecar(upstream_port, log_level="INFO"))
        quiet = stack.enter_context(sidecar(upstream_port, log_level="WARNING"))
        every_line = stack.enter_context(sidecar(upstream_port, EVERY_LINE, log_level="INFO"))
        traced = stack.enter_context(sidecar(upstream_port, tracing, log_level="INFO"))
        compared = {
            name: stack.enter_context(
                sidecar(
                    upstream_port,
                    {key: value.replace("{otlp}", otlp) for key, value in environment.items()},
                    log_level="INFO",
                )
            )
            for name, environment in arguments.compare
        }
        if arguments.baseline is not None:
            name = f"baseline {arguments.baseline.name}"
            for label, environment in ((name, {}), (f"{name}, traced 100%", tracing)):
                compared[label] = stack.enter_context(
                    sidecar(upstream_port, environment, "INFO", checkout=arguments.baseline)
                )
        echo_port, echo_process = stack.enter_context(echo_floor())
        opa = stack.enter_context(opa_server(OPA, upstream_port)) if OPA.exists() else None
        results["rss_idle_mib"] = rss_mib(default.sidecar.pid)
        async with (
            aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=256)) as session,
            grpc.aio.insecure_channel(default.sidecar_address) as default_channel,
            grpc.aio.insecure_channel(quiet.sidecar_address) as quiet_channel,
            grpc.aio.insecure_channel(every_line.sidecar_address) as every_line_channel,
            grpc.aio.insecure_channel(traced.sidecar_address) as traced_channel,
            grpc.aio.insecure_channel(f"127.0.0.1:{echo_port}") as echo_channel,
        ):
            evaluate_bytes = evaluate.SerializeToString()
            method = f"/{SERVICE}/EvaluateNode"
            systems = [
                System(
                    "echo floor",
                    echo_process.pid,
                    grpc_call(echo_channel, "/bench.Echo/Echo", evaluate_bytes, lambda _: None),
                ),
                System(
                    "sidecar",
                    default.sidecar.pid,
                    grpc_call(default_channel, method, evaluate_bytes, evaluated),
                ),
                System(
                    "sidecar, WARNING",
                    quiet.sidecar.pid,
                    grpc_call(quiet_channel, method, evaluate_bytes, evaluated),
                ),
                System(
                    "sidecar, every evaluation logged",
                    every_line.sidecar.pid,
                    grpc_call(every_line_channel, method, evaluate_bytes, evaluated),
                ),
                System(
                    "sidecar, traced 100%",
                    traced.sidecar.pid,
                    grpc_call(traced_channel, method, evaluate_bytes, evaluated),
                ),
                System(
                    "ExtractVariables",
                    default.sidecar.pid,
                    grpc_call(
                        default_channel,
                        f"/{SERVICE}/ExtractVariables",
                        extract.SerializeToString(),
                        extracted,
                    ),
                ),
                System("direct", os.getpid(), direct_evaluation(session, default.order_url)),
            ]
            for name, other in compared.items():
                channel = await stack.enter_async_context(
                    grpc.aio.insecure_channel(other.sidecar_address)
                )
                call = grpc_call(channel, method, evaluate_bytes, evaluated)
                systems.append(System(f"sidecar, {name}", other.sidecar.pid, call))
            if opa is not None:
                systems.append(System("OPA", opa[1].pid, opa_evaluation(session, opa[0])))
            else:
                results["opa_note"] = f"skipped: {OPA} is missing (scripts/bench builds it)"

            def after_warm_up() -> None:
                results["rss_after_warm_up_mib"] = rss_mib(default.sidecar.pid)

            await measure(
                systems,
                rounds=rounds,
                calls=calls,
                rates=rates,
                seconds=seconds,
                after_warm_up=after_warm_up,
            )
            results.update(summarise(systems, rates))
            done = 200 + rounds * (calls + sum(int(rate * seconds) for rate in rates))
            top_up = System("memory", default.sidecar.pid, systems[1].call)
            if memory_total > done:
                await saturate(top_up, memory_total - done)
            after = rss_mib(default.sidecar.pid)
            results["memory"] = {
                "evaluations_run": max(memory_total, done),
                "rss_idle_mib": results.pop("rss_idle_mib"),
                "rss_after_warm_up_mib": results.pop("rss_after_warm_up_mib"),
                "rss_after_mib": after,
            }
            results["memory"]["growth_after_warm_up_mib"] = (
                after - results["memory"]["rss_after_warm_up_mib"]
            )
        results["spans_received"] = collector.spans


def main() -> None:
    parser = argparse.ArgumentParser(description="rules-sidecar benchmark, with its anchors")
    parser.add_argument("--quick", action="store_true", help="3 short rounds (~2.5 min)")
    parser.add_argument(
        "--output", type=Path, help="results file (default bench/results/v<version>-<commit>.json)"
    )
    parser.add_argument(
        "--rates",
        type=lambda text: [int(rate) for rate in text.split(",")],
        default=[200],
        help="fixed rates for the latency, comma-separated (default 200: concurrency 1)",
    )
    parser.add_argument(
        "--compare",
        action="append",
        default=[],
        type=comparison,
        metavar="NAME:VAR=VALUE[,VAR=VALUE]",
        help="one more sidecar row, the defaults with these environment variables (repeatable), "
        "e.g. 'asyncio loop:RULES_SIDECAR_EVENT_LOOP=asyncio' ({otlp}: the no-op OTLP receiver)",
    )
    parser.add_argument(
        "--baseline",
        type=Path,
        help="two more sidecar rows from another checkout (with its .venv): its defaults, and "
        "traced at 100%%; before and after in one run",
    )
    parser.add_argument(
        "--rounds",
        type=int,
        help="rounds to rotate (default 5, 3 with --quick): more narrow the medians on a noisy "
        "machine, each round adding about a minute",
    )
    parser.add_argument(
        "--no-netns", action="store_true", help="plain loopback, no private network namespace"
    )
    arguments = parser.parse_args()
    network = (
        "loopback (--no-netns)"
        if arguments.no_netns and not os.environ.get(NETNS_MARK)
        else private_network()
    )
    loopback_up()
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
        "network": network,
        "opa": opa_version(),
        "machine": machine(),
    }
    asyncio.run(run(arguments, results))
    suffix = "-quick" if arguments.quick else ""
    output = arguments.output or ROOT / "bench" / "results" / f"v{version}-{commit}{suffix}.json"
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(results, indent=2) + "\n")
    print_table(results)
    print(f"\nwritten to {output}")


def print_table(results: dict[str, Any]) -> None:
    m = results["machine"]
    print(
        f"rules-sidecar {results['version']} ({results['commit']}), {results['mode']} run, "
        f"{m['cores']} cores {m['cpu']}, Python {m['python']}; {results['network']}; "
        f"OPA {results['opa'] or 'skipped'}"
    )
    settings = results["settings"]
    print(
        f"{settings['rounds']} rounds rotated; medians (min-max); CPU at {settings['concurrency']} "
        f"concurrent callers; latency open loop at {settings['rates'][0]}/s (concurrency 1)"
    )
    rate = f"{settings['rates'][0]}/s"
    header = (
        f"\n{'system':22} {'CPU us/decision':>20} {'x echo floor':>16} {'calls/s':>8} "
        f"{'p50 ms':>7} {'p99 ms':>7} {'added p50':>10} {'added p99':>10}"
    )
    print(header)
    for name, row in results["systems"].items():
        cpu, ratio, latency = row["cpu_us"], row["x_floor"], row[rate]
        print(
            f"{name:22} {cpu['median']:6.0f} ({cpu['min']:5.0f}-{cpu['max']:5.0f}) "
            f"{ratio['median']:5.2f} ({ratio['min']:.2f}-{ratio['max']:.2f}) "
            f"{row['calls_per_second']['median']:8.0f} "
            f"{latency['p50_ms']['median']:7.2f} {latency['p99_ms']['median']:7.2f} "
            f"{latency['added']['p50_ms']['median']:10.2f} {latency['added']['p99_ms']['median']:10.2f}"
        )
    for other in settings["rates"][1:]:
        key = f"{other}/s"
        print(
            f"\nat {key}: "
            + "; ".join(
                f"{name} p50 {row[key]['p50_ms']['median']:.2f} p99 {row[key]['p99_ms']['median']:.2f}"
                for name, row in results["systems"].items()
            )
        )
    for label, key in (
        ("one INFO log line (every evaluation logged - WARNING)", "log_line_us"),
        ("the default's sampled lines (sidecar - WARNING)", "sampled_log_lines_us"),
        ("tracing at 100% (traced - sidecar)", "tracing_100_percent_us"),
    ):
        value = results.get(key)
        if value:
            print(
                f"{label}: {value['median']:+.0f} us per decision "
                f"({value['min']:+.0f} to {value['max']:+.0f})"
            )
    memory = results["memory"]
    print(
        f"RSS idle {memory['rss_idle_mib']:.1f} MiB, after warm-up "
        f"{memory['rss_after_warm_up_mib']:.1f} MiB, after {memory['evaluations_run']} evaluations "
        f"{memory['rss_after_mib']:.1f} MiB (growth {memory['growth_after_warm_up_mib']:+.1f} MiB)"
    )
    if "opa_note" in results:
        print(f"OPA: {results['opa_note']}")


if __name__ == "__main__":
    main()
