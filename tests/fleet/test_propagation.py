"""Three `rules-sidecar serve` processes on one PostgreSQL: a change made through any one of
them is answered by every other (issue 12).

Each replica has its own data_dir; only store_url is shared (the password in
RULES_SIDECAR_STORE_PASSWORD, as a Secret mounted as a variable would give it). Visibility is
polled with GetConnector until it shows; the deadline only guards against a hang.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import grpc
import pytest
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from tests.support.calls import RPC_TIMEOUT, connector_version, register
from tests.support.postgres import Database
from tests.support.sidecars import SidecarProcess

pytestmark = pytest.mark.process
DEADLINE_SECONDS = 20.0
URL = "https://api.store.com/orders/{{order_number}}"


@pytest.fixture
def fleet(
    sidecar_process: Callable[..., SidecarProcess], postgres_database: Database, tmp_path
) -> list[SidecarProcess]:
    environment = {
        "RULES_SIDECAR_STORE_URL": postgres_database.url,
        "RULES_SIDECAR_STORE_PASSWORD": postgres_database.password,
        "RULES_SIDECAR_STORE_RESYNC_SECONDS": "60",  # only notifications can pass these tests
    }
    return [sidecar_process(tmp_path / f"replica-{n}", env=environment) for n in range(3)]


def seen_everywhere(replicas: list[SidecarProcess], connector_id: str, version: int) -> list[int]:
    """Poll every replica until each answers `version`; what each answered last."""
    give_up = time.monotonic() + DEADLINE_SECONDS
    while True:
        answers = [connector_version(replica.stub, connector_id) for replica in replicas]
        if answers == [version] * len(replicas) or time.monotonic() > give_up:
            return answers
        time.sleep(0.02)


def test_register_replace_and_delete_on_one_replica_reach_the_other_two(fleet):
    first, second, third = fleet

    created = register(first.stub, "order-status", URL)
    after_create = seen_everywhere([second, third], "order-status", created.version)

    replaced = register(second.stub, "order-status", URL, display_name="from the second")
    after_replace = seen_everywhere([first, third], "order-status", replaced.version)

    third.stub.DeleteConnector(
        pb.DeleteConnectorRequest(id="order-status", expected_version=replaced.version),
        timeout=RPC_TIMEOUT,
    )
    after_delete = seen_everywhere([first, second], "order-status", 0)

    assert (created.version, replaced.version) == (1, 2)
    assert (after_create, after_replace, after_delete) == ([1, 1], [2, 2], [0, 0])


def test_a_replica_with_a_stale_view_is_refused_by_the_database_not_by_memory(fleet):
    first, second, _ = fleet
    register(first.stub, "crm-lookup", URL)
    seen_everywhere([second], "crm-lookup", 1)
    register(first.stub, "crm-lookup", URL, display_name="v2")

    # Whatever the second replica has heard by now, the database decides: version 1 is stale.
    with pytest.raises(grpc.RpcError) as caught:
        second.stub.RegisterConnector(
            pb.RegisterConnectorRequest(
                connector=pb.Connector(
                    id="crm-lookup", status=pb.CONNECTOR_STATUS_LIVE, url_template=URL
                ),
                expected_version=1,
            ),
            timeout=RPC_TIMEOUT,
        )

    assert caught.value.code() is grpc.StatusCode.ABORTED
    assert "is at version 2, but expected_version was 1" in (caught.value.details() or "")


def test_racing_writers_on_different_replicas_have_exactly_one_winner(fleet):
    register(fleet[0].stub, "racing", URL)
    seen_everywhere(fleet, "racing", 1)
    racers = [fleet[n % len(fleet)] for n in range(6)]
    start = threading.Barrier(len(racers))

    def race(n: int) -> str:
        start.wait()
        try:
            racers[n].stub.RegisterConnector(
                pb.RegisterConnectorRequest(
                    connector=pb.Connector(
                        id="racing",
                        status=pb.CONNECTOR_STATUS_LIVE,
                        url_template=URL,
                        display_name=f"racer {n}",
                    ),
                    expected_version=1,
                ),
                timeout=RPC_TIMEOUT,
            )
        except grpc.RpcError as exc:
            return str(exc.code().name)
        return "OK"

    with ThreadPoolExecutor(max_workers=len(racers)) as pool:
        outcomes = sorted(pool.map(race, range(len(racers))))

    assert outcomes == ["ABORTED"] * 5 + ["OK"]
    assert seen_everywhere(fleet, "racing", 2) == [2, 2, 2]
