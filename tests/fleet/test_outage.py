"""A database outage seen from replicas: memory keeps answering, writes answer UNAVAILABLE,
the store's health name and gauge say so, and once the database is back the first write
succeeds and missed changes arrive; a replica started during the outage waits NOT_SERVING and
serves once it has loaded (issue 12).

The cluster here is the test's own (stopping the session's would break its neighbours). Every
wait is a poll with a deadline that only guards against a hang; the assertions are on what was
answered and counted, never on how long it took.
"""

from __future__ import annotations

import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from opentelemetry.sdk.metrics import MeterProvider
from opentelemetry.sdk.metrics.export import InMemoryMetricReader, NumberDataPoint

from sidecar.api.servicer import SERVICE_NAME
from sidecar.core.model import Connector, ConnectorSource
from sidecar.registry.backend import StoreUnreachableError
from sidecar.registry.postgres import PostgresStore
from sidecar.server import NOT_SERVING, SERVING, STORE_HEALTH_SERVICE
from sidecar.telemetry.instruments import Telemetry
from tests.support.calls import RPC_TIMEOUT, connector_version, evaluate, register
from tests.support.loopback import LOOPBACK_ENVIRONMENT
from tests.support.postgres import Database, PostgresCluster, server_bindir
from tests.support.sidecars import STARTUP_DEADLINE_SECONDS, SidecarProcess
from tests.support.upstreams import closed_port

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


def poll(condition: Callable[[], bool]) -> bool:
    give_up = time.monotonic() + DEADLINE_SECONDS
    while not condition():
        if time.monotonic() > give_up:
            return False
        time.sleep(0.02)
    return True


def definition(connector_id: str) -> Connector:
    return Connector.model_validate(
        {
            "id": connector_id,
            "status": "LIVE",
            "url_template": URL,
            "update_time": datetime(2026, 1, 1, tzinfo=UTC),
            "source": ConnectorSource.API,
        }
    )


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
    during = connector_version(sidecar.stub, "before")
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
    heard = poll(lambda: connector_version(sidecar.stub, "elsewhere") == 1)

    assert during == 1
    assert refused.value.code() is grpc.StatusCode.UNAVAILABLE
    details = refused.value.details() or ""
    assert "cannot write connector 'during' in PostgreSQL 127.0.0.1:" in details
    assert database.password not in details
    assert after.version == 1
    assert heard


def test_a_database_that_stops_answering_fails_a_write_instead_of_hanging_it(own_cluster):
    database = own_cluster.create_database()
    store = PostgresStore(
        database.url,
        password=database.password,
        connect_timeout_seconds=1,
        statement_timeout_seconds=0.5,
    )
    first = definition("held")
    store.save(first, expected_version=0)
    outcome: list[Exception | Connector] = []

    def write() -> None:
        try:
            outcome.append(store.save(first, expected_version=1)[0])
        except Exception as exc:  # the outcome is what the test asserts
            outcome.append(exc)

    own_cluster.pause_server()
    try:
        writer = threading.Thread(target=write, daemon=True)
        writer.start()
        writer.join(DEADLINE_SECONDS)  # a guard against the hang this test is about
        hung = writer.is_alive()
    finally:
        own_cluster.resume_server()
    writer.join(DEADLINE_SECONDS)
    try:
        after, _ = store.save(first, expected_version=1)
    finally:
        store.close()

    assert not hung
    (failure,) = outcome
    assert isinstance(failure, StoreUnreachableError)
    assert "cannot write connector 'held' in PostgreSQL" in failure.message
    assert "did not answer within" in failure.message
    assert after.version == 2  # the refused write left nothing behind


# ---------------------------------------------------------------------------------------------
# The store's own health name and gauge (in process: the test reads the sidecar's metrics)
# ---------------------------------------------------------------------------------------------


def store_gauge(reader: InMemoryMetricReader) -> int | None:
    """The last `rules_sidecar.store.connected` value collected, None if not reported."""
    data = reader.get_metrics_data()
    for resource in data.resource_metrics if data else ():
        for scope in resource.scope_metrics:
            for metric in scope.metrics:
                if metric.name == "rules_sidecar.store.connected":
                    (point,) = metric.data.data_points
                    assert isinstance(point, NumberDataPoint)
                    return int(point.value)
    return None


def health_of(channel: grpc.Channel, service: str) -> str:
    stub: Any = health_pb2_grpc.HealthStub(channel)
    response = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT)
    return health_pb2.HealthCheckResponse.ServingStatus.Name(response.status)


def test_the_store_health_name_and_gauge_follow_the_change_feed_through_an_outage(
    sidecar_factory, own_cluster, tmp_path
):
    database = own_cluster.create_database()
    password_file = tmp_path / "store-password"
    password_file.write_text(database.password)
    reader = InMemoryMetricReader()
    sidecar = sidecar_factory(
        store_url=database.url,
        store_password_file=password_file,
        telemetry=Telemetry(meter_provider=MeterProvider([reader])),
    )

    def state() -> tuple[str, str, int | None]:
        return (
            health_of(sidecar.channel, STORE_HEALTH_SERVICE),
            health_of(sidecar.channel, ""),
            store_gauge(reader),
        )

    connected = poll(lambda: state() == ("SERVING", "SERVING", 1))
    own_cluster.stop_server()
    in_outage = poll(lambda: state()[0] == "NOT_SERVING")
    during = state()
    own_cluster.start_server()
    back = poll(lambda: state() == ("SERVING", "SERVING", 1))

    assert connected
    assert in_outage
    assert during == ("NOT_SERVING", "SERVING", 0)  # readiness stays: memory still serves
    assert back


# ---------------------------------------------------------------------------------------------
# Three `rules-sidecar serve` processes through an outage
# ---------------------------------------------------------------------------------------------

EVALUATIONS_PER_REPLICA = 20
WRITES_PER_REPLICA = 3


def store_environment(database: Database) -> dict[str, str]:
    return {
        **LOOPBACK_ENVIRONMENT,
        "RULES_SIDECAR_STORE_URL": database.url,
        "RULES_SIDECAR_STORE_PASSWORD": database.password,
        "RULES_SIDECAR_STORE_RESYNC_SECONDS": "60",  # the reconnect's resync, not the timer
    }


def refusal(call: Callable[..., object], *args: object) -> tuple[str, str]:
    """(status code name, details) of `call(*args)`, expected to fail; ("OK", "") if not."""
    try:
        call(*args)
    except grpc.RpcError as exc:
        return exc.code().name, exc.details() or ""
    return "OK", ""


@pytest.mark.process
def test_three_replicas_through_a_database_restart_evaluate_from_memory_and_catch_up(
    sidecar_process: Callable[..., SidecarProcess], own_cluster, upstream, tmp_path
):
    database = own_cluster.create_database()
    fleet = [
        sidecar_process(tmp_path / f"replica-{n}", env=store_environment(database))
        for n in range(3)
    ]
    upstream.respond("/orders/A-1", json={"status": "shipped"})
    register(fleet[0].stub, "orders", upstream.url("/orders/{{order_number}}"))
    loaded = poll(lambda: [connector_version(r.stub, "orders") for r in fleet] == [1, 1, 1])
    store_up = poll(lambda: all(r.health_status(STORE_HEALTH_SERVICE) == SERVING for r in fleet))

    own_cluster.stop_server()
    store_down = poll(
        lambda: all(r.health_status(STORE_HEALTH_SERVICE) == NOT_SERVING for r in fleet)
    )
    targets: Counter[str] = Counter()
    reads: Counter[int] = Counter()
    writes: Counter[str] = Counter()
    details: list[str] = []
    for n, replica in enumerate(fleet):
        for _ in range(EVALUATIONS_PER_REPLICA):
            targets[evaluate(replica.stub, "orders", {"order_number": "A-1"}).target] += 1
        reads[connector_version(replica.stub, "orders")] += 1
        for w in range(WRITES_PER_REPLICA):
            code, text = refusal(register, replica.stub, f"during-{n}-{w}", upstream.url("/x"))
            writes[code] += 1
            details.append(text)
    readiness = [r.health_status() for r in fleet]

    own_cluster.start_server()
    after = register(fleet[1].stub, "after", upstream.url("/orders/{{order_number}}"))
    reached = poll(lambda: [connector_version(r.stub, "after") for r in fleet] == [1, 1, 1])
    store_back = poll(lambda: all(r.health_status(STORE_HEALTH_SERVICE) == SERVING for r in fleet))

    assert (loaded, store_up, store_down) == (True, True, True)
    assert targets == {"ok": 3 * EVALUATIONS_PER_REPLICA}
    assert reads == {1: 3}
    assert writes == {"UNAVAILABLE": 3 * WRITES_PER_REPLICA}
    where = f" in PostgreSQL 127.0.0.1:{own_cluster.port}/{database.url.rsplit('/', 1)[-1]}: "
    assert [d.startswith("cannot write connector 'during-") and where in d for d in details] == [
        True
    ] * len(details)
    assert not [d for d in details if database.password in d]
    assert readiness == [SERVING] * 3
    assert (after.version, reached, store_back) == (1, True, True)
    never_written = [connector_version(r.stub, "during-0-0") for r in fleet]
    assert never_written == [0, 0, 0]  # refused: never written


@pytest.mark.process
def test_a_replica_started_while_the_database_is_down_is_not_serving_until_it_has_loaded(
    sidecar_process: Callable[..., SidecarProcess], own_cluster, tmp_path
):
    database = own_cluster.create_database()
    peer = sidecar_process(tmp_path / "peer", env=store_environment(database))
    register(peer.stub, "known", URL)
    own_cluster.stop_server()

    late = sidecar_process(tmp_path / "late", env=store_environment(database), wait=False)
    late.wait_until_listening()
    explained = poll(lambda: "PostgreSQL" in refusal(connector_version, late.stub, "known")[1])
    code, text = refusal(connector_version, late.stub, "known")
    statuses = {
        service: late.health_status(service) for service in ("", SERVICE_NAME, STORE_HEALTH_SERVICE)
    }
    retried = poll(lambda: late.stderr_text().count("retrying in") >= 2)
    still_running = late.process.poll() is None

    own_cluster.start_server()
    late.wait_until_serving()
    store_serving = poll(lambda: late.health_status(STORE_HEALTH_SERVICE) == SERVING)

    assert explained
    assert code == "UNAVAILABLE"
    assert text.startswith("the sidecar has not loaded its connectors yet: cannot connect to ")
    assert f"PostgreSQL 127.0.0.1:{own_cluster.port}/" in text
    assert database.password not in text
    assert statuses == dict.fromkeys(statuses, NOT_SERVING)
    assert (retried, still_running) == (True, True)
    assert connector_version(late.stub, "known") == 1
    assert store_serving


@pytest.mark.process
def test_a_wrong_password_still_stops_the_start_instead_of_retrying(
    sidecar_process: Callable[..., SidecarProcess], postgres_database: Database, tmp_path
):
    environment = {
        **store_environment(postgres_database),
        "RULES_SIDECAR_STORE_PASSWORD": "not-the-password-4711",
    }
    replica = sidecar_process(tmp_path / "replica", env=environment, wait=False)

    exit_code = replica.process.wait(STARTUP_DEADLINE_SECONDS)

    assert exit_code == 2
    assert "password authentication failed" in replica.stderr_text()
    assert "retrying in" not in replica.stderr_text()


@pytest.mark.process
def test_sigterm_stops_a_replica_still_waiting_for_its_database(
    sidecar_process: Callable[..., SidecarProcess], tmp_path
):
    environment = {
        "RULES_SIDECAR_STORE_URL": f"postgresql://someone@127.0.0.1:{closed_port()}/rules",
        "RULES_SIDECAR_STORE_PASSWORD": "pw-1234567",
    }
    replica = sidecar_process(tmp_path / "replica", env=environment, wait=False)
    replica.wait_until_listening()
    waiting = poll(lambda: "retrying in" in replica.stderr_text())

    exit_code = replica.terminate()

    assert waiting
    assert exit_code == 0
    assert "stopped before it had loaded its connectors" in replica.stderr_text()
