"""What the benchmarks share: the upstream, the scenario, and the sidecar process.

The scenario is the issue's: GET with an API key header from a secret, 3 conditions across 2
branches, 2 extractions, against a loopback upstream answering a ~1 KB order JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
API_KEY = "fake-bench-key-0123456"
ORDER = {
    "order_number": "A-10023",
    "status": "shipped",
    "placed_at": "2026-11-18T10:21:00Z",
    "total": 123.45,
    "currency": "EUR",
    "carrier": {"name": "UPS", "tracking": "1Z999AA10123456784", "eta": "2026-11-23"},
    "items": [
        {"sku": f"SKU-{i:04d}", "name": f"Item number {i}", "qty": 1, "price": 15.43}
        for i in range(8)
    ],
    "customer": {"email": "visitor@example.com", "tier": "gold", "country": "US"},
}
UPSTREAM_SOURCE = """
import sys
from aiohttp import web
body = sys.stdin.buffer.read()
async def order(request):
    if request.headers.get("X-API-Key") != sys.argv[2]:
        return web.json_response({"error": "auth"}, status=401)
    return web.Response(body=body, content_type="application/json")
app = web.Application()
app.router.add_get("/orders/{number}", order)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""
NODE: dict[str, Any] = {
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
VARIABLES = {"order_number": "A-10023"}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def wait_for_port(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise SystemExit(f"process {process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise SystemExit(f"nothing listens on 127.0.0.1:{port}")


def worker_in_tree(tree: Path, script: str, *arguments: str) -> str:
    """The last line `script --worker arguments...` prints when run by `tree`'s own Python (its
    .venv, else this one) with `tree`'s sidecar package first: one checkout measured in a fresh
    process beside another (the benchmarks' --compare/--baseline rounds)."""
    python = tree / ".venv/bin/python"
    out = subprocess.run(
        [str(python if python.exists() else sys.executable), script, "--worker", *arguments],
        check=True,
        capture_output=True,
        text=True,
        cwd=tree,
        env={**os.environ, "PYTHONPATH": str(tree)},  # that tree's sidecar
    ).stdout
    return out.strip().splitlines()[-1]


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process, from its own accounting."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


@dataclass
class Stack:
    """A running upstream and sidecar."""

    upstream_port: int
    sidecar_port: int
    sidecar: subprocess.Popen[bytes]

    @property
    def sidecar_address(self) -> str:
        return f"127.0.0.1:{self.sidecar_port}"

    @property
    def order_url(self) -> str:
        return f"http://127.0.0.1:{self.upstream_port}/orders/A-10023"


@contextlib.contextmanager
def upstream() -> Iterator[int]:
    """The order API on a free loopback port."""
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-c", UPSTREAM_SOURCE, str(port), API_KEY], stdin=subprocess.PIPE
    )
    assert process.stdin is not None
    process.stdin.write(json.dumps(ORDER).encode())
    process.stdin.close()
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def sidecar(
    upstream_port: int,
    extra_env: dict[str, str] | None = None,
    log_level: str = "WARNING",
    checkout: Path = ROOT,
    connectors: list[dict[str, Any]] | None = None,
) -> Iterator[Stack]:
    """The real `rules-sidecar serve`, with the scenario's connector (or `connectors`), on a free
    port (from another `checkout` with its own .venv, to compare versions in one run)."""
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        connectors_file = Path(scratch) / "connectors.json"
        log = Path(scratch) / "sidecar.log"  # kept out of the report; shown if startup fails
        url = f"http://127.0.0.1:{upstream_port}/orders/{{{{order_number}}}}"
        definitions = connectors or [
            {
                "id": "orders",
                "status": "LIVE",
                "url_template": url,
                "auth": {"api_key": {"name": "X-API-Key", "value_secret": "bench_key"}},
            }
        ]
        connectors_file.write_text(json.dumps({"connectors": definitions}))
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RULES_SIDECAR_")},
            "RULES_SECRET_bench_key": API_KEY,
            "RULES_SIDECAR_EGRESS_ALLOW_CIDRS": '["127.0.0.1/32"]',
            "RULES_SIDECAR_EGRESS_ALLOW_HTTP_HOSTS": '["127.0.0.1"]',
            # Secrets are bound to hosts: the bench key may go to the loopback upstream only.
            "RULES_SIDECAR_SECRET_HOSTS": '{"bench_key": ["127.0.0.1"]}',
            **(extra_env or {}),
        }
        process = subprocess.Popen(
            [
                str(checkout / ".venv/bin/rules-sidecar"),
                "serve",
                "--listen",
                f"127.0.0.1:{port}",
                "--data-dir",
                str(Path(scratch) / "data"),
                "--connectors-file",
                str(connectors_file),
                "--log-level",
                log_level,
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        try:
            wait_for_port(port, process)
            time.sleep(0.5)
            yield Stack(upstream_port, port, process)
        finally:
            process.terminate()
            process.wait(15)


@contextlib.contextmanager
def echo_floor() -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """The no-op grpc.aio echo server (bench/echo_server.py): (port, process)."""
    port = free_port()
    process = subprocess.Popen(
        [str(ROOT / ".venv/bin/python"), str(ROOT / "bench" / "echo_server.py"), str(port)]
    )
    try:
        wait_for_port(port, process)
        yield port, process
    finally:
        process.terminate()
        process.wait(10)


@contextlib.contextmanager
def opa_server(opa: Path, upstream_port: int) -> Iterator[tuple[int, subprocess.Popen[bytes]]]:
    """OPA's server with bench/opa/decision.rego (the node as Rego): (port, process)."""
    port = free_port()
    environment = {
        **os.environ,
        "BENCH_API_KEY": API_KEY,
        "BENCH_UPSTREAM": f"http://127.0.0.1:{upstream_port}/orders/",
    }
    with tempfile.TemporaryDirectory() as scratch:
        log = Path(scratch) / "opa.log"
        process = subprocess.Popen(
            [
                str(opa),
                "run",
                "--server",
                "--disable-telemetry",
                "--addr",
                f"127.0.0.1:{port}",
                "--log-level",
                "error",
                str(ROOT / "bench" / "opa" / "decision.rego"),
            ],
            env=environment,
            stdout=subprocess.DEVNULL,
            stderr=log.open("wb"),
        )
        try:
            wait_for_port(port, process)
            yield port, process
        finally:
            process.terminate()
            process.wait(10)
