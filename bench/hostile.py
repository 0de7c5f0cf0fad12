"""The hostile set (issue 14): worst event-loop stall, peak RSS and SIGTERM exit time.

Runs the real `rules-sidecar serve` (a subprocess, loopback only) against a loopback upstream
serving hostile bodies, and sends it the issue's hostile requests one after another:

    regexes       64 MATCHES `.{100,1000}c` over a 250 KB string (RE2's slow engine)
    doubling      a 344-character JMESPath that doubles a string at each of its 23 levels
    to-string     64 x 64 `to_string(@)` conditions (ANY, none holds) over a 227 KB body
    explain       64 x 64 conditions on `@` over a 227 KB body, with explain
    quantifier    64 ALL-quantified conditions over a 200,000-element variable, 5 s deadline
    nodes         40 distinct 3.5 MiB nodes (the compiled-node cache)
    folded        64 CONTAINS ignoring case over a 250 KB string (each casefolds it)
    extract       ExtractVariables with the doubling expression
    copies        ExtractVariables: 64 extractions of `@` from a 1 MB raw_json document
    copies-node   EvaluateNode: 64 extractions of `@` from a 227 KB body
    dense         a 3.9 MB body of 1.3 million empty lists (one parser call holds the GIL)
    dense-raw     ExtractVariables with the same document as raw_json

Meanwhile a probe process calls the sidecar's health Check every 10 ms; a call that takes long is
a call the event loop could not answer, so the slowest probe is the worst stall seen from
outside (it includes one loopback gRPC round trip, ~1 ms). Peak RSS is the kernel's high-water
mark (VmHWM in /proc). Then the heavy set (the slow cases, 8 at once, no deadline) is started
again and the sidecar gets SIGTERM: the time until it exits is the shutdown figure (the grace
is `shutdown_grace_seconds`, 10 s by default).

Figures are printed, never judged. `--tree DIR` runs the sidecar from another source tree (e.g.
a worktree of main, for the "before" figures).

    make bench-hostile                         # this tree
    make bench-hostile ARGS="--tree /tmp/main" # another tree
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import grpc
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, free_port, wait_for_port

DOUBLING = "|".join(["join('',[@,@])"] * 23)
PROBE_INTERVAL = 0.01
CALL_TIMEOUT = 120.0
SIGTERM_WAIT = 300.0
UPSTREAM_SOURCE = """
import json, random, sys
from aiohttp import web
text = "".join(random.Random(14).choice("ab") for _ in range(250_000))
bodies = {
    "/string": json.dumps({"v": text}).encode(),
    "/items": json.dumps({"items": ["x" * 100] * 2200}).encode(),
    "/seed": json.dumps({"v": "0123456789abcdef"}).encode(),
    "/small": b'{"ok": true}',
    "/dense": ("[" + ",".join(["[]"] * 1_300_000) + "]").encode(),
}
async def answer(request):
    return web.Response(body=bodies[request.path], content_type="application/json")
app = web.Application()
for path in bodies:
    app.router.add_get(path, answer)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def condition(path: str, operator: str = "EXISTS", operand: Any = None, **fields: Any) -> Any:
    data = {
        "subject": {"kind": "SUBJECT_KIND_BODY", "path": path},
        "operator": f"OPERATOR_{operator}",
    }
    if operand is not None:
        data["operand"] = operand
    return {**data, **fields}


def node(
    connector: str, conditions: list[Any], branches: int = 1, combinator: str = "ALL", **fields: Any
) -> pb.Node:
    data = {
        "connector_id": connector,
        "branches": [
            {"target": f"b{i}", "conditions": conditions, "combinator": f"COMBINATOR_{combinator}"}
            for i in range(branches)
        ],
        "else_target": "else",
        "error_target": "error",
        **fields,
    }
    return json_format.ParseDict(data, pb.Node())


def evaluate_request(hostile: pb.Node, variables: Any = None, explain: bool = False) -> Any:
    request = pb.EvaluateNodeRequest(node=hostile, explain=explain)
    if variables:
        json_format.ParseDict(variables, request.variables)
    return request


def big_node(index: int) -> pb.Node:
    """A distinct node of about 3.5 MiB (an IN operand of 99,000 strings: under the 100,000
    values of `max_operand_values`)."""
    hostile = node("small", [condition("ok", "IN", ["seed"])])
    operand = hostile.branches[0].conditions[0].operand.list_value
    operand.values.pop()
    for n in range(99_000):
        operand.values.add().string_value = f"{index}-{n:08d}-" + "p" * 22
    return hostile


def hostile_set() -> list[tuple[str, str, Any, float | None]]:
    """(name, RPC, request, deadline): the issue's findings."""
    extract = pb.ExtractVariablesRequest(raw_json=b'{"v": "0123456789abcdef"}')
    extract.extractions.add(variable="grown", path=f"v | {DOUBLING}")
    dense = pb.ExtractVariablesRequest(raw_json=b"[" + b",".join([b"[]"] * 1_300_000) + b"]")
    dense.extractions.add(variable="first", path="[0]")
    document = json.dumps({"items": ["x" * 100] * 10_000}).encode()
    copies = pb.ExtractVariablesRequest(raw_json=document)
    for index in range(64):
        copies.extractions.add(variable=f"copy{index}", path="@")
    copied = [{"variable": f"copy{index}", "path": "@"} for index in range(64)]
    quantified = {
        "subject": {"kind": "SUBJECT_KIND_VARIABLE", "path": "xs"},
        "operator": "OPERATOR_EQUALS",
        "operand": 1,
        "quantifier": "QUANTIFIER_ALL",
    }
    return [
        (
            "regexes",
            "EvaluateNode",
            evaluate_request(
                node("string", [condition("v", "MATCHES", f".{{100,1000}}c{i}") for i in range(64)])
            ),
            None,
        ),
        (
            "doubling",
            "EvaluateNode",
            evaluate_request(node("seed", [condition(f"v | {DOUBLING}")])),
            None,
        ),
        (
            "to-string",
            "EvaluateNode",
            evaluate_request(
                node(
                    "items",
                    [condition("to_string(@)", "EQUALS", "never")] * 64,
                    branches=64,
                    combinator="ANY",
                )
            ),
            None,
        ),
        (
            "explain",
            "EvaluateNode",
            evaluate_request(node("items", [condition("@")] * 64, branches=64), explain=True),
            None,
        ),
        (
            "quantifier",
            "EvaluateNode",
            evaluate_request(node("small", [quantified] * 64), {"xs": [1] * 200_000}),
            5.0,
        ),
        (
            "folded",
            "EvaluateNode",
            evaluate_request(
                node(
                    "string",
                    [condition("v", "CONTAINS", "zzz", ignore_case=True)] * 64,
                    combinator="ANY",
                )
            ),
            None,
        ),
        ("extract", "ExtractVariables", extract, None),
        ("copies", "ExtractVariables", copies, None),
        (
            "copies-node",
            "EvaluateNode",
            evaluate_request(node("items", [condition("@")], extractions=copied)),
            None,
        ),
        ("dense", "EvaluateNode", evaluate_request(node("dense", [condition("@")])), None),
        ("dense-raw", "ExtractVariables", dense, None),
    ]


HEAVY = ("regexes", "to-string", "explain", "quantifier")


PROBE_SOURCE = """
import sys, time, grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
stub = health_pb2_grpc.HealthStub(grpc.insecure_channel(sys.argv[1]))
interval = float(sys.argv[2])
while True:
    started = time.perf_counter()
    try:
        stub.Check(health_pb2.HealthCheckRequest(), timeout=600)
    except grpc.RpcError:
        pass
    print(time.perf_counter() - started, flush=True)
    time.sleep(interval)
"""


class Probe(threading.Thread):
    """Health checks every PROBE_INTERVAL; the slowest is the worst stall seen from outside.

    The checks are made by a process of their own: this one builds and sends 3.5 MiB requests,
    and a probe thread here would wait for this interpreter's GIL too (serialising one holds it
    in a single C call), charging the bench's own work to the sidecar. This thread only reads
    the durations the probe process measured.
    """

    def __init__(self, address: str) -> None:
        super().__init__(daemon=True)
        self._process = subprocess.Popen(
            [sys.executable, "-c", PROBE_SOURCE, address, str(PROBE_INTERVAL)],
            stdout=subprocess.PIPE,
            text=True,
        )
        self.worst = 0.0
        self.count = 0
        self.slow = 0
        self.window = 0.0  # the worst since the last `take_window`

    def run(self) -> None:
        assert self._process.stdout is not None
        for line in self._process.stdout:
            took = float(line)
            self.worst = max(self.worst, took)
            self.window = max(self.window, took)
            self.count += 1
            self.slow += took > 0.05

    def take_window(self) -> float:
        """The worst probe since the last call, in ms."""
        worst, self.window = self.window, 0.0
        return worst * 1000

    def stop(self) -> None:
        self._process.terminate()
        self._process.wait(10)
        self.join(10)


def peak_rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return 0.0


@contextmanager
def upstream() -> Iterator[int]:
    port = free_port()
    process = subprocess.Popen([sys.executable, "-c", UPSTREAM_SOURCE, str(port)])
    try:
        wait_for_port(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(10)


@contextmanager
def sidecar(upstream_port: int, tree: Path) -> Iterator[tuple[subprocess.Popen[bytes], int]]:
    port = free_port()
    with tempfile.TemporaryDirectory() as scratch:
        connectors = Path(scratch) / "connectors.json"
        connectors.write_text(
            json.dumps(
                {
                    "connectors": [
                        {
                            "id": name,
                            "status": "LIVE",
                            "url_template": f"http://127.0.0.1:{upstream_port}/{name}",
                            "timeout": "30s",
                            "max_response_bytes": 4 * 1024 * 1024,
                        }
                        for name in ("string", "items", "seed", "small", "dense")
                    ]
                }
            )
        )
        environment = {
            **{k: v for k, v in os.environ.items() if not k.startswith("RULES_SIDECAR_")},
            "PYTHONPATH": str(tree),
            "RULES_SIDECAR_EGRESS_ALLOW_CIDRS": '["127.0.0.1/32"]',
            "RULES_SIDECAR_EGRESS_ALLOW_HTTP_HOSTS": '["127.0.0.1"]',
        }
        command = [
            str(ROOT / ".venv/bin/rules-sidecar"),
            "serve",
            "--listen",
            f"127.0.0.1:{port}",
            "--data-dir",
            str(Path(scratch) / "data"),
            "--connectors-file",
            str(connectors),
            "--log-level",
            "WARNING",
        ]
        log_path = Path(scratch) / "sidecar.log"
        log = log_path.open("wb")
        process = subprocess.Popen(command, env=environment, stdout=subprocess.DEVNULL, stderr=log)
        try:
            wait_for_port(port, process)
            time.sleep(1.0)
            yield process, port
            log.close()
            for line in log_path.read_text(errors="replace").splitlines():
                if "shut" in line or "abandon" in line or "stopped" in line:
                    print(f"  sidecar log: {line[:300]}")
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(10)


def call(stub: Any, rpc: str, request: Any, deadline: float | None) -> tuple[str, float]:
    """What the sidecar answered (outcome/reason or status code) and how long it took."""
    started = time.perf_counter()
    try:
        response = getattr(stub, rpc)(request, timeout=deadline or CALL_TIMEOUT)
        if rpc == "EvaluateNode":
            answer = f"{pb.Outcome.Name(response.outcome)}/{pb.Reason.Name(response.reason)}"
        else:
            answer = "OK"
    except grpc.RpcError as exc:
        answer = exc.code().name
    return answer, time.perf_counter() - started


def run(tree: Path, repeat: int, sigterm_only: bool = False, only: set[str] | None = None) -> None:
    options = [
        ("grpc.max_send_message_length", 64 << 20),
        ("grpc.max_receive_message_length", 64 << 20),
    ]
    with upstream() as upstream_port, sidecar(upstream_port, tree) as (process, port):
        address = f"127.0.0.1:{port}"
        stub = pb_grpc.RulesSidecarServiceStub(grpc.insecure_channel(address, options=options))
        print(
            f"sidecar from {tree} (pid {process.pid}), RSS at start {peak_rss_mib(process.pid):.0f} MiB"
        )
        print(f"machine load average: {os.getloadavg()[0]:.1f} on {os.cpu_count()} CPUs")
        cases = hostile_set()
        if not sigterm_only:
            hostile_figures(stub, process, address, cases, repeat, only)
        if only is None:
            sigterm_under_heavy_set(stub, process, cases)


def hostile_figures(
    stub: Any,
    process: subprocess.Popen[bytes],
    address: str,
    cases: list[Any],
    repeat: int,
    only: set[str] | None = None,
) -> None:
    """Each hostile request in turn (those named in `only`), under the probe: worst stall and
    peak RSS."""
    probe = Probe(address)
    probe.start()
    time.sleep(5.0)
    idle = probe.take_window()
    print(
        f"  {'idle':<11} {'no calls (the machine alone)':<36} {5.0:8.3f}s  worst probe {idle:6.0f} ms"
    )
    for name, rpc, request, deadline in cases:
        for _ in range(repeat if only is None or name in only else 0):
            answer, took = call(stub, rpc, request, deadline)
            print(
                f"  {name:<11} {answer:<36} {took:8.3f}s  worst probe "
                f"{probe.take_window():6.0f} ms  peak RSS {peak_rss_mib(process.pid):6.0f} MiB"
            )
    started = time.perf_counter()
    for index in range(40 if only is None or "nodes" in only else 0):
        call(stub, "EvaluateNode", evaluate_request(big_node(index)), None)
    print(
        f"  {'nodes':<11} {'40 distinct 3.5 MiB nodes':<36} {time.perf_counter() - started:8.3f}s"
        f"  worst probe {probe.take_window():6.0f} ms  peak RSS {peak_rss_mib(process.pid):6.0f} MiB"
    )
    probe.stop()
    print(
        f"worst stall (slowest of {probe.count} health probes): {probe.worst * 1000:.0f} ms; "
        f"probes over 50 ms: {probe.slow}"
    )
    print(f"peak RSS over the hostile set: {peak_rss_mib(process.pid):.0f} MiB")


def sigterm_under_heavy_set(stub: Any, process: subprocess.Popen[bytes], cases: list[Any]) -> None:
    """The heavy cases, 8 at once, then SIGTERM: the time until the process exits."""
    heavy = [case for case in cases if case[0] in HEAVY]
    pool = ThreadPoolExecutor(8)
    for index in range(8):
        _, rpc, request, _ = heavy[index % len(heavy)]
        pool.submit(call, stub, rpc, request, CALL_TIMEOUT)
    time.sleep(2.0)
    process.send_signal(signal.SIGTERM)
    signalled = time.perf_counter()
    try:
        process.wait(SIGTERM_WAIT)
        print(
            f"SIGTERM under the heavy set (8 calls): exited {process.returncode} after "
            f"{time.perf_counter() - signalled:.1f} s (grace 10 s)"
        )
    except subprocess.TimeoutExpired:
        print(f"SIGTERM under the heavy set: still running after {SIGTERM_WAIT:.0f} s, killed")
    pool.shutdown(wait=False, cancel_futures=True)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--tree", type=Path, default=ROOT, help="source tree to run the sidecar from"
    )
    parser.add_argument("--repeat", type=int, default=2, help="times each hostile request is sent")
    parser.add_argument(
        "--sigterm-only", action="store_true", help="only the SIGTERM exit time under the heavy set"
    )
    parser.add_argument(
        "--only",
        help="comma-separated case names (e.g. nodes,dense): only those, and no SIGTERM part",
    )
    arguments = parser.parse_args(argv)
    only = set(arguments.only.split(",")) if arguments.only else None
    run(arguments.tree.resolve(), arguments.repeat, arguments.sigterm_only, only)


if __name__ == "__main__":
    main()
