"""A database outage seen from a replica: memory keeps answering, writes answer UNAVAILABLE,
and once the database is back the first write succeeds and missed changes arrive (issue 12).

The cluster here is the test's own (stopping the session's would break its neighbours).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime

import grpc
import pytest
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.model import Connector, ConnectorSource
from sidecar.registry.postgres import PostgresStore
from tests.support.calls import RPC_TIMEOUT, register
from tests.support.postgres import PostgresCluster, server_bindir
from tests.support.sidecars import InProcessSidecar

DEADLINE_SECONDS = 20.0
URL = "https://api.store.com/orders/{{order_number}}"


@pytest.fixture
def own_cluster(postgres_cluster: PostgresCluster) -> Iterator[PostgresCluster]:
    """A cluster for this test alone (the session's proves the server is installed)."""
    bindir = server_bindir()
    assert bindir is not None
    cluster = PostgresCluster.start(bindir)
    yield cluster
    cluster.stop()


def version_on(sidecar: InProcessSidecar, connector_id: str) -> int:
    try:
        response = sidecar.stub.GetConnector(
            pb.GetConnectorRequest(id=connector_id), timeout=RPC_TIMEOUT
        )
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return 0
        raise
    return int(response.connector.version)


def poll(condition: Callable[[], bool]) -> bool:
    give_up = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.02)
    return True


def test_through_an_outage_reads_go_on_writes_are_unavailable_and_the_replica_catches_up(
    sidecar_factory, own_cluster, tmp_path
):
    database = own_cluster.create_database()
    password_file = tmp_path / "store-password"
    password_file.write_text(database.password)
    sidecar = sidecar_factory(
        store_url=database.url, store_password_file=password_file, store_resync_seconds=60
    )
    register(sidecar.stub, "before", URL)

    own_cluster.stop_server()
    during = version_on(sidecar, "before")
    with pytest.raises(grpc.RpcError) as refused:
        register(sidecar.stub, "during", URL)

    own_cluster.start_server()
    after = register(sidecar.stub, "during", URL)  # the first write after the outage
    elsewhere = Connector.model_validate(
        {
            "id": "elsewhere",
            "status": "LIVE",
            "url_template": URL,
            "update_time": datetime(2026, 1, 1, tzinfo=UTC),
            "source": ConnectorSource.API,
        }
    )
    other_replica = PostgresStore(database.url, password=database.password)
    try:
        other_replica.save(elsewhere, expected_version=0)
    finally:
        other_replica.close()
    heard = poll(lambda: version_on(sidecar, "elsewhere") == 1)

    assert during == 1
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    details = refused.value.details() or ""
    assert "cannot write connector 'during' in PostgreSQL 127.0.0.1:" in details
    assert database.password not in details
    assert after.version == 1
    assert heard
