"""Nothing lost silently (issue 14, item 4): damaged stores stop the start; files are read whole.

finding                                              before                  now
a 0-byte store file                                  SERVING, 0 connectors   exit 2, a message
a dropped connectors (or tombstones) table           SERVING, 0 connectors   exit 2, a message
a lost write-ahead log (kill -9, then -wal removed)  SERVING, fewer          exit 2, a message
a connectors file truncated in place (the first      0 connectors installed, last good set
step of every in-place rewrite)                      health SERVING          kept, NOT_SERVING
a connectors file that keeps changing while read     a half-written set      refused, retried

The limit, pinned so that the documentation stays true: a lost -wal is seen only against the
marker file; losing both (a copy of the store file alone) leaves an older store that opens.
"""

from __future__ import annotations

import sqlite3
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import closing
from pathlib import Path

import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.model import Connector
from sidecar.core.secrets import SecretBindings
from sidecar.errors import ConfigError
from sidecar.registry.connectors_file import load_connectors_file
from sidecar.registry.store import ConnectorStore
from sidecar.server import CONNECTORS_FILE_HEALTH_SERVICE
from tests.support.calls import RPC_TIMEOUT, evaluate, register, verdict
from tests.support.sidecars import InProcessSidecar, SidecarProcess
from tests.support.upstreams import Upstream

StartProcess = Callable[..., SidecarProcess]
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
WAIT_DEADLINE_SECONDS = 20.0
EXIT_WAIT_SECONDS = 60.0


def store_with_connectors(start: StartProcess, data_dir: Path, ids: tuple[str, ...]) -> Path:
    """Run a sidecar on `data_dir`, register `ids`, and kill it (-9); the store's path."""
    sidecar = start(data_dir)
    for connector_id in ids:
        register(sidecar.stub, connector_id, "http://127.0.0.1:9/orders")
    sidecar.kill()
    return data_dir / "connectors.sqlite3"


def refused_start(start: StartProcess, data_dir: Path) -> tuple[int, str]:
    """Start a sidecar that is expected to stop by itself; its exit code and stderr."""
    sidecar = start(data_dir, wait=False)
    code = sidecar.process.wait(EXIT_WAIT_SECONDS)
    return code, sidecar.stderr_text()


def test_a_zero_byte_store_file_stops_the_start(sidecar_process: StartProcess, tmp_path: Path):
    data_dir = tmp_path / "data"
    path = store_with_connectors(sidecar_process, data_dir, ("one",))
    with closing(sqlite3.connect(path)) as db:  # fold the WAL in, so only the file is at stake
        db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    path.write_bytes(b"")

    code, stderr = refused_start(sidecar_process, data_dir)

    assert code == 2
    assert f"the connector store {path} is damaged" in stderr
    assert "Traceback" not in stderr


@pytest.mark.parametrize("table", ["connectors", "tombstones"])
def test_a_dropped_table_stops_the_start(
    sidecar_process: StartProcess, tmp_path: Path, table: str
) -> None:
    data_dir = tmp_path / "data"
    path = store_with_connectors(sidecar_process, data_dir, ("one", "two"))
    with closing(sqlite3.connect(path)) as db:
        db.execute(f"DROP TABLE {table}")
        db.commit()

    code, stderr = refused_start(sidecar_process, data_dir)

    assert code == 2
    assert f"its table(s) {table} are gone" in stderr


def test_a_lost_write_ahead_log_stops_the_start(sidecar_process: StartProcess, tmp_path: Path):
    data_dir = tmp_path / "data"
    path = store_with_connectors(sidecar_process, data_dir, ("one", "two", "three"))
    wal = path.with_name(path.name + "-wal")
    assert wal.stat().st_size > 0  # the registrations are there, not yet in the main file
    wal.unlink()
    path.with_name(path.name + "-shm").unlink(missing_ok=True)

    code, stderr = refused_start(sidecar_process, data_dir)

    assert code == 2
    assert "holds 0 write(s) but its marker counted 3" in stderr


def test_a_store_that_was_killed_still_starts_with_all_its_connectors(
    sidecar_process: StartProcess, tmp_path: Path
) -> None:
    # The control: kill -9 alone is no damage (the WAL is recovered).
    data_dir = tmp_path / "data"
    store_with_connectors(sidecar_process, data_dir, ("one", "two", "three"))

    restarted = sidecar_process(data_dir)

    listed = restarted.stub.ListConnectors(pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT)
    assert sorted(connector.id for connector in listed.connectors) == ["one", "three", "two"]


def test_a_store_copied_without_its_write_ahead_log_and_marker_opens_older(
    tmp_path: Path,
) -> None:
    """What the store's docstring says cannot be told: the commits are in the -wal, and with
    the marker gone too nothing is left to count them against."""
    path = tmp_path / "live" / "connectors.sqlite3"
    store = ConnectorStore(path)
    for connector_id in ("one", "two", "three"):
        store.put(store_connector(connector_id))
    copy = tmp_path / "restored" / "connectors.sqlite3"
    copy.parent.mkdir()
    copy.write_bytes(path.read_bytes())  # the main file alone, as a careless backup takes it
    store.close()

    restored = ConnectorStore(copy)
    try:
        assert restored.load_all() == []
        assert restored.marker_path.exists()  # rewritten from the older store
    finally:
        restored.close()


def store_connector(connector_id: str) -> Connector:
    return Connector.model_validate(
        {"id": connector_id, "status": "LIVE", "url_template": "http://127.0.0.1:9/x", "version": 1}
    )


# ---------------------------------------------------------------------------------------------
# The connectors file
# ---------------------------------------------------------------------------------------------


def file_health(sidecar: InProcessSidecar) -> int:
    request = health_pb2.HealthCheckRequest(service=CONNECTORS_FILE_HEALTH_SERVICE)
    return int(health_pb2_grpc.HealthStub(sidecar.channel).Check(request, timeout=5).status)


def wait_for(what: str, condition: Callable[[], bool]) -> None:
    deadline = time.monotonic() + WAIT_DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"{what}: not seen in time")
        time.sleep(0.05)


def test_a_connectors_file_truncated_in_place_keeps_the_last_good_set(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream, tmp_path: Path
) -> None:
    upstream.respond("/orders", json={"status": "shipped"})
    path = tmp_path / "connectors.yaml"
    text = yaml.safe_dump(
        {
            "connectors": [
                {"id": "orders", "status": "LIVE", "url_template": upstream.url("/orders")}
            ]
        }
    )
    path.write_text(text, encoding="utf-8")
    sidecar = sidecar_factory(path, connectors_reload_seconds=0.05)
    wait_for("ConnectorsFile SERVING", lambda: file_health(sidecar) == SERVING)

    with path.open("r+", encoding="utf-8") as rewritten:  # in place: same inode, truncated
        rewritten.truncate(0)
    wait_for("ConnectorsFile NOT_SERVING", lambda: file_health(sidecar) == NOT_SERVING)

    assert verdict(evaluate(sidecar.stub, "orders")) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    with path.open("r+", encoding="utf-8") as rewritten:
        rewritten.write(text)
    wait_for("ConnectorsFile SERVING again", lambda: file_health(sidecar) == SERVING)
    assert verdict(evaluate(sidecar.stub, "orders")) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")


@pytest.fixture
def churning_file(tmp_path: Path) -> Iterator[Path]:
    """A connectors file rewritten in place, one growing valid document after another."""
    path = tmp_path / "connectors.yaml"
    path.write_text("connectors: []\n", encoding="utf-8")
    stop = threading.Event()

    def churn() -> None:
        count = 0
        while not stop.is_set():
            count += 1
            with path.open("a", encoding="utf-8") as appended:
                appended.write(f"# revision {count}\n")
            time.sleep(0.001)

    writer = threading.Thread(target=churn, daemon=True)
    writer.start()
    yield path
    stop.set()
    writer.join()


def test_a_file_that_keeps_changing_while_read_is_refused(churning_file: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_connectors_file(churning_file, bindings=SecretBindings({}))

    assert "kept changing while it was read" in caught.value.message
