"""The Python path between the gRPC handler and the socket, in process: CPU per evaluation.

    .venv/bin/python bench/engine_path.py [--rounds 7] [--calls 3000] [--rows stub]
                                          [--compare /work/main ...]

What the servicer does per EvaluateNode once the request is translated: the telemetry scope
(the INFO JSON log line, written to /dev/null), `Engine.evaluate` with the real egress, response
cache, secret bindings and API key, and the answer (`wire.evaluate_answer`: masking, protobuf).
Two rows, the bench scenario's (bench/common.py), 16 calls at a time:

| row | what |
|---|---|
| loopback | the real aiohttp transport against the loopback order API (another process) |
| stub transport | the same, with the transport's `attempt` answering the order at once: the path without aiohttp's cost and noise |

Each round runs in a fresh process; with `--compare`, every round runs once in this checkout and
once in the other (its own .venv if it has one, else this one; its own `sidecar` package), the
order rotated, so both see the same load (a worktree at an earlier commit measures one step). Printed:
CPU us per evaluation (process time / calls), min and median of the rounds, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import API_KEY, NODE, ORDER, ROOT, VARIABLES, upstream, worker_in_tree

CONCURRENCY = 16


async def measure(port: int, calls: int, stub: bool) -> float:
    """CPU seconds per evaluation over `calls`, after a warm-up."""
    from google.protobuf import json_format
    from rulesidecar.v1 import rules_sidecar_pb2 as pb

    from sidecar.api import wire
    from sidecar.core.engine import Engine, compile_node
    from sidecar.core.model import Connector
    from sidecar.core.model.exchange import HttpResponse
    from sidecar.core.secrets import SecretBindings
    from sidecar.egress.cache import ResponseCache
    from sidecar.egress.client import Egress
    from sidecar.egress.policy import EgressPolicy
    from sidecar.telemetry.instruments import Telemetry

    telemetry = Telemetry()
    egress = Egress(
        EgressPolicy(allow_http_hosts=("127.0.0.1",), allow_cidrs=("127.0.0.1/32",)),
        telemetry=telemetry,
    )
    if stub:
        body = json.dumps(ORDER).encode()
        headers = {"content-type": "application/json", "content-length": str(len(body))}

        async def answer(request: Any, cap: int) -> HttpResponse:
            return HttpResponse(200, dict(headers), body)

        egress._transport.attempt = answer  # type: ignore[method-assign]
    cache = ResponseCache(egress.send, max_bytes=64 << 20, telemetry=telemetry)
    connector = Connector.model_validate(
        {
            "id": "orders",
            "version": 1,
            "status": "LIVE",
            "url_template": f"http://127.0.0.1:{port}/orders/{{{{order_number}}}}",
            "auth": {"api_key": {"name": "X-API-Key", "value_secret": "bench_key"}},
        }
    )

    class Lookup:
        def get(self, connector_id: str) -> Connector | None:
            return connector if connector_id == "orders" else None

        def resolve(self, name: str) -> str | None:
            return API_KEY if name == "bench_key" else None

        def searched(self, name: str) -> str:
            return "nowhere"

    lookup = Lookup()
    engine = Engine(
        lookup,
        lookup,
        cache.send,
        bindings=SecretBindings({"bench_key": ["127.0.0.1"]}),
    )
    message = json_format.ParseDict({"node": NODE}, pb.EvaluateNodeRequest())
    compiled = compile_node(wire.node_from_proto(message.node))

    async def one() -> None:
        with telemetry.evaluation(compiled.node) as evaluation:
            outcome = await engine.evaluate(compiled, dict(VARIABLES), time_remaining=5.0)
            outcome, _ = wire.evaluate_answer(
                outcome, error_target=compiled.node.error_target, message_limit=4 << 20
            )
            evaluation.record(outcome)
        if outcome.target != "show-status":
            raise SystemExit(f"wrong answer: {outcome}")

    async def run(count: int) -> None:
        async def lane(share: int) -> None:
            for _ in range(share):
                await one()

        await asyncio.gather(*(lane(count // CONCURRENCY) for _ in range(CONCURRENCY)))

    await run(max(calls // 5, CONCURRENCY))
    started = time.process_time()
    await run(calls)
    spent = time.process_time() - started
    await egress.aclose()
    logging.shutdown()
    return spent / (calls // CONCURRENCY * CONCURRENCY)


def worker(port: int, calls: int, stub: bool) -> None:
    from sidecar.telemetry.logs import configure_logging

    configure_logging("INFO", "json", stream=open(os.devnull, "w"))  # noqa: SIM115
    try:
        import uvloop

        runner: Any = uvloop.run
    except ImportError:
        runner = asyncio.run
    print(json.dumps(runner(measure(port, calls, stub))))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument(
        "--compare", type=Path, action="append", default=[], help="another checkout (repeatable)"
    )
    parser.add_argument("--rows", default="loopback,stub", help="which rows, comma-separated")
    parser.add_argument("--worker", nargs=3, help=argparse.SUPPRESS)
    arguments = parser.parse_args()
    if arguments.worker:
        port, calls, stub = arguments.worker
        worker(int(port), int(calls), stub == "stub")
        return
    trees = [ROOT, *(tree.resolve() for tree in arguments.compare)]
    rows = tuple(arguments.rows.split(","))
    figures: dict[tuple[str, Path], list[float]] = {(r, t): [] for r in rows for t in trees}
    with upstream() as port:
        for number in range(arguments.rounds):
            order = trees[number % len(trees) :] + trees[: number % len(trees)]
            for row in rows:
                for tree in order:
                    out = worker_in_tree(
                        tree, str(Path(__file__).resolve()), str(port), str(arguments.calls), row
                    )
                    figures[row, tree].append(float(out) * 1e6)
            print(
                f"round {number + 1}: "
                + ", ".join(
                    f"{row}@{tree.name} {figures[row, tree][-1]:.0f}"
                    for row in rows
                    for tree in trees
                ),
                file=sys.stderr,
            )
    print(f"load: {os.getloadavg()}")
    for row in rows:
        for tree in trees:
            values = figures[row, tree]
            print(
                f"{row:9} {tree!s:24} us/eval min {min(values):6.1f}  median "
                f"{statistics.median(values):6.1f}  max {max(values):6.1f}"
            )
        for other in trees[1:]:
            ratios = [a / b for a, b in zip(figures[row, ROOT], figures[row, other], strict=True)]
            print(
                f"{row:9} ratio this/{other.name} per round: median "
                f"{statistics.median(ratios):.3f} (min {min(ratios):.3f}, max {max(ratios):.3f})"
            )


if __name__ == "__main__":
    main()
