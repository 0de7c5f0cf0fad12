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
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import grpc
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

ROOT = Path(__file__).resolve().parent.parent
UPSTREAM = """
import json, sys
from aiohttp import web
order = {"order_number": "A-10023", "status": "shipped", "total": 123.45,
         "carrier": {"name": "UPS", "tracking": "1Z999AA10123456784"},
         "items": [{"sku": f"SKU-{i}", "name": f"Item {i}", "qty": 1, "price": 19.99}
                   for i in range(8)],
         "customer": {"email": "visitor@example.com", "tier": "gold"}}
body = json.dumps(order).encode()
async def handle(request):
    if request.headers.get("X-API-Key") != "bench-key":
        return web.json_response({"error": "auth"}, status=401)
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/orders/{number}", handle)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
NODE = {
    "id": "where-is-my-order",
    "connector_id": "orders",
    "branches": [
        {
            "target": "show-status",
            "conditions": [
                {
                    "subject": {"kind": "SUBJECT_KIND_STATUS"},
                    "operator": "OPERATOR_STATUS_CLASS",
                    "operand": "2xx",
                },
                {
                    "subject": {"kind": "SUBJECT_KIND_BODY", "path": "status"},
                    "operator": "OPERATOR_EQUALS",
                    "operand": "shipped",
                },
            ],
        },
        {
            "target": "processing",
            "conditions": [
                {
                    "subject": {"kind": "SUBJECT_KIND_BODY", "path": "status"},
                    "operator": "OPERATOR_IN",
                    "operand": ["processing", "packed"],
                }
            ],
        },
    ],
    "else_target": "not-found",
    "error_target": "handoff",
    "extractions": [
        {"variable": "order_status", "path": "status", "required": True},
        {"variable": "carrier", "path": "carrier.name"},
    ],
}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on {port}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def drive(address: str, calls: int, concurrency: int, pid: int) -> dict[str, float]:
    async with grpc.aio.insecure_channel(address) as channel:
        stub = pb_grpc.RulesSidecarServiceStub(channel)
        request = pb.EvaluateNodeRequest(node=json_format.ParseDict(NODE, pb.Node()))
        request.variables.update({"order_number": "A-10023"})
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
        help="the sidecar's log level; INFO adds its one log line per evaluation (sent to "
        "/dev/null, so the cost of formatting and writing it is counted, not a terminal's)",
    )
    arguments = parser.parse_args()
    upstream_port, sidecar_port = free_port(), free_port()
    with tempfile.TemporaryDirectory() as scratch:
        connectors = Path(scratch) / "connectors.yaml"
        connectors.write_text(
            json.dumps(
                {
                    "connectors": [
                        {
                            "id": "orders",
                            "status": "LIVE",
                            "url_template": f"http://127.0.0.1:{upstream_port}/orders/{{{{order_number}}}}",
                            "auth": {"api_key": {"name": "X-API-Key", "value_secret": "bench_key"}},
                        }
                    ]
                }
            )
        )
        environment = {
            **os.environ,
            "RULES_SECRET_bench_key": "bench-key",
            # The egress guard refuses loopback and plain http unless told.
            "RULES_SIDECAR_EGRESS_ALLOW_CIDRS": '["127.0.0.1/32"]',
            "RULES_SIDECAR_EGRESS_ALLOW_HTTP_HOSTS": '["127.0.0.1"]',
        }
        environment.update(json.loads(os.environ.get("BENCH_SIDECAR_ENV", "{}")))
        upstream = subprocess.Popen([sys.executable, "-c", UPSTREAM, str(upstream_port)])
        sidecar = subprocess.Popen(
            [
                str(ROOT / ".venv/bin/rules-sidecar"),
                "serve",
                "--listen",
                f"127.0.0.1:{sidecar_port}",
                "--data-dir",
                str(Path(scratch) / "data"),
                "--connectors-file",
                str(connectors),
                "--log-level",
                arguments.sidecar_log_level,
            ],
            env=environment,
            stderr=subprocess.DEVNULL if arguments.sidecar_log_level != "WARNING" else None,
        )
        try:
            wait_for_port(upstream_port)
            wait_for_port(sidecar_port)
            time.sleep(0.5)
            idle_rss = rss_mib(sidecar.pid)
            result = asyncio.run(
                drive(
                    f"127.0.0.1:{sidecar_port}", arguments.calls, arguments.concurrency, sidecar.pid
                )
            )
            result["rss_idle_mib"] = idle_rss
            result["rss_after_mib"] = rss_mib(sidecar.pid)
        finally:
            sidecar.terminate()
            upstream.terminate()
            sidecar.wait(10)
            upstream.wait(10)
    print(
        f"EvaluateNode, {arguments.concurrency} concurrent callers, loopback upstream, "
        f"{os.cpu_count()} cores"
    )
    for name, value in result.items():
        print(f"  {name:32} {value:10.1f}")


if __name__ == "__main__":
    main()
