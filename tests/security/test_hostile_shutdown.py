"""Shutdown within the grace period whatever is running (issue 14, item 6).

Real `rules-sidecar serve` processes get SIGTERM while something cannot stop in time; each case
asserts how the process ended (its exit code) and what its log says it abandoned, never how long
it took (a process that waits for the stuck work instead would exit with 0, and say nothing).

    finding                                              before            now
    SIGTERM under the heavy set, grace 10 s              13.2 s, exit 0    within the grace
    a last telemetry flush to a collector that never     waited for        abandoned at the
    answers                                                                deadline, exit 3
    a worker thread stuck in a C call (a store write     waited for it     left behind at the
    waiting on SQLite's lock)                            (up to 60 s)      deadline, exit 3
"""

from __future__ import annotations

import json
import signal
import sqlite3
import time
from collections.abc import Callable, Iterator
from contextlib import closing, contextmanager
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.registry.store import ConnectorStore
from sidecar.server import EXIT_ABANDONED
from tests.support.calls import RPC_TIMEOUT, connector_message, register, verdict
from tests.support.loopback import LOOPBACK_ENVIRONMENT
from tests.support.raw_servers import RawServers, silent
from tests.support.sidecars import SidecarProcess
from tests.support.upstreams import Upstream

StartProcess = Callable[..., SidecarProcess]
EXIT_WAIT_SECONDS = 120.0
WAIT_DEADLINE_SECONDS = 30.0
GRACE = {"RULES_SIDECAR_SHUTDOWN_GRACE_SECONDS": "3"}


def judging_for_minutes(connector_id: str) -> pb.EvaluateNodeRequest:
    """64 ALL-quantified conditions over a 200,000-element variable: minutes of judging with no
    deadline (the caller gives none), in a worker thread."""
    condition = {
        "subject": {"kind": "SUBJECT_KIND_VARIABLE", "path": "xs"},
        "operator": "OPERATOR_EQUALS",
        "operand": 1,
        "quantifier": "QUANTIFIER_ALL",
    }
    data = {
        "node": {
            "connector_id": connector_id,
            "branches": [{"target": "all-ones", "conditions": [condition] * 64}],
            "else_target": "else",
            "error_target": "error",
        },
        "variables": {"xs": [1] * 200_000},
    }
    return json_format.ParseDict(data, pb.EvaluateNodeRequest())


def wait_for(what: str, holds: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_DEADLINE_SECONDS
    while not holds():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen in time")
        time.sleep(0.02)


def test_sigterm_under_a_judging_load_abandons_a_flush_that_cannot_finish(
    sidecar_process: StartProcess, upstream: Upstream, raw_servers: RawServers
) -> None:
    collector = raw_servers.serve(silent)  # accepts every export, never answers
    upstream.respond("/orders", json={"status": "shipped"})
    sidecar = sidecar_process(
        env={
            **GRACE,
            **LOOPBACK_ENVIRONMENT,
            "OTEL_EXPORTER_OTLP_ENDPOINT": collector.url(),
            "OTEL_EXPORTER_OTLP_TIMEOUT": "60000",
        }
    )
    register(sidecar.stub, "orders", upstream.url("/orders"))
    calls = [
        sidecar.stub.EvaluateNode.future(judging_for_minutes("orders"), timeout=EXIT_WAIT_SECONDS)
        for _ in range(2)
    ]
    wait_for("the calls' exchanges", lambda: upstream.hits("/orders") == 2)

    sidecar.process.send_signal(signal.SIGTERM)
    code = sidecar.process.wait(EXIT_WAIT_SECONDS)

    stderr = sidecar.stderr_text()
    assert code == EXIT_ABANDONED, f"exit code {code}:\n{stderr}"
    assert "the last telemetry flush did not finish within the grace (3.0s); abandoned" in stderr
    assert "judging still running" not in stderr  # the judging itself stopped when told
    # Every caller has its answer: at the drain's end the judging stopped (ERROR/BUDGET_EXHAUSTED
    # reached the caller) or the call was cancelled before it could be answered.
    assert {ended(call) for call in calls} <= {
        ("OUTCOME_ERROR", "REASON_BUDGET_EXHAUSTED"),
        ("CANCELLED", ""),
        ("UNAVAILABLE", ""),
    }


def ended(call: grpc.Future) -> tuple[str, str]:
    """How an EvaluateNode call ended: its outcome and reason, or its status code."""
    try:
        return verdict(call.result(timeout=WAIT_DEADLINE_SECONDS))
    except grpc.RpcError as error:
        return error.code().name, ""


@contextmanager
def store_write_lock(data_dir: Path) -> Iterator[None]:
    """SQLite's write lock on the sidecar's store, held as another process would hold it."""
    with closing(sqlite3.connect(data_dir / "connectors.sqlite3", isolation_level=None)) as db:
        db.execute("BEGIN IMMEDIATE")
        yield
        db.execute("ROLLBACK")


def store_writer_busy(sidecar: SidecarProcess) -> bool:
    """Whether a write holds the registry's write lock: DeleteConnector of an absent id takes
    it too, so it cannot answer NOT_FOUND within a short deadline while a write is stuck."""
    with pytest.raises(grpc.RpcError) as probe:
        sidecar.stub.DeleteConnector(pb.DeleteConnectorRequest(id="probe"), timeout=0.5)
    code = probe.value.code()
    assert code in {grpc.StatusCode.DEADLINE_EXCEEDED, grpc.StatusCode.NOT_FOUND}, code
    return bool(code == grpc.StatusCode.DEADLINE_EXCEEDED)


def test_a_worker_thread_stuck_in_a_c_call_does_not_hold_the_exit(
    sidecar_process: StartProcess, tmp_path: Path
) -> None:
    """A registration waits in SQLite's busy handler (a C call, for up to 60 s) for a lock
    another process holds: Python cannot stop that thread, and asyncio and the interpreter
    would wait for it at exit. The process exits at its deadline anyway, naming what it left."""
    config = tmp_path / "sidecar.yaml"
    config.write_text(json.dumps({"store_busy_timeout_seconds": 60}))
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    ConnectorStore(data_dir / "connectors.sqlite3").close()
    sidecar = sidecar_process(data_dir, args=["--config", str(config)], env=GRACE)

    with store_write_lock(data_dir):
        stuck = sidecar.stub.RegisterConnector.future(
            pb.RegisterConnectorRequest(connector=connector_message("stuck", "http://x.test/")),
            timeout=EXIT_WAIT_SECONDS,
        )
        wait_for("the registration waiting on the store", lambda: store_writer_busy(sidecar))
        sidecar.process.send_signal(signal.SIGTERM)
        code = sidecar.process.wait(EXIT_WAIT_SECONDS)

    stderr = sidecar.stderr_text()
    assert code == EXIT_ABANDONED, f"exit code {code}:\n{stderr}"
    assert "shutdown: the process did not exit within its grace; exiting with code 3" in stderr
    with pytest.raises(grpc.RpcError):
        stuck.result(timeout=RPC_TIMEOUT)
