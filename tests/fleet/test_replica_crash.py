"""kill -9 of a replica in the middle of writes: no acknowledged write is lost (issue 12).

A writer registers connectors one after another through the first replica and records each
acknowledged version; the replica is killed with SIGKILL while the writer is still going. Every
acknowledged registration must then be answered by the surviving replica, at its version or a
later one (a write in flight at the kill may or may not have landed: either is fine).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import grpc
import pytest

from tests.support.calls import connector_version, register
from tests.support.postgres import Database
from tests.support.sidecars import SidecarProcess

pytestmark = pytest.mark.process
DEADLINE_SECONDS = 20.0
URL = "https://api.store.com/orders/{{order_number}}"
KILL_AFTER_ACKS = 20


def test_acknowledged_writes_survive_a_kill_9_of_the_replica_that_took_them(
    sidecar_process: Callable[..., SidecarProcess], postgres_database: Database, tmp_path
):
    environment = {
        "RULES_SIDECAR_STORE_URL": postgres_database.url,
        "RULES_SIDECAR_STORE_PASSWORD": postgres_database.password,
    }
    doomed, survivor = (
        sidecar_process(tmp_path / f"replica-{n}", env=environment) for n in range(2)
    )
    acknowledged: dict[str, int] = {}
    enough = threading.Event()

    def write_until_it_dies() -> None:
        number = 0
        while True:
            connector_id = f"c-{number % 7}"
            try:
                stored = register(doomed.stub, connector_id, URL, display_name=f"write {number}")
            except grpc.RpcError:
                return  # the replica is gone
            acknowledged[connector_id] = int(stored.version)
            number += 1
            if number == KILL_AFTER_ACKS:
                enough.set()

    writer = threading.Thread(target=write_until_it_dies)
    writer.start()
    assert enough.wait(DEADLINE_SECONDS), doomed.stderr_text()
    doomed.kill()
    writer.join(timeout=DEADLINE_SECONDS)

    give_up = time.monotonic() + DEADLINE_SECONDS
    while True:
        behind = {i: v for i, v in acknowledged.items() if connector_version(survivor.stub, i) < v}
        if not behind or time.monotonic() > give_up:
            break
        time.sleep(0.02)

    assert not writer.is_alive()
    assert len(acknowledged) == 7
    assert behind == {}
