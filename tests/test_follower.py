"""A replica follows the shared store: the change feed, refresh and resync, on a real PostgreSQL.

Two registries over one database play two replicas in one process; only the follower moves
changes between them. Each scenario polls memory until the change shows (a deadline guards
against a hang; it never decides a pass).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import psycopg

from sidecar.core.model import Connector, ConnectorSource
from sidecar.core.secrets import SecretBindings
from sidecar.registry import Registry
from sidecar.registry.follower import Follower
from sidecar.registry.postgres import PostgresStore
from tests.support.postgres import Database

DEADLINE_SECONDS = 20.0
NO_BINDINGS = SecretBindings({})


def definition(connector_id: str = "order-status", **fields: Any) -> Connector:
    return Connector.model_validate(
        {
            "id": connector_id,
            "status": "LIVE",
            "url_template": "https://api.store.com/orders/{{order_number}}",
            **fields,
        }
    )


async def eventually(condition: Callable[[], bool]) -> None:
    """Poll until `condition()` holds; AssertionError if it never does before the deadline."""
    loop = asyncio.get_running_loop()
    give_up = loop.time() + DEADLINE_SECONDS
    while not condition():
        if loop.time() > give_up:
            raise AssertionError(f"not seen within {DEADLINE_SECONDS}s")
        await asyncio.sleep(0.01)


def replica(database: Database) -> Registry:
    store = PostgresStore(database.url, password=database.password)
    return Registry(store, bindings=NO_BINDINGS, file_connectors=())


def version_in(registry: Registry, connector_id: str = "order-status") -> int:
    found = registry.get(connector_id)
    return found.version if found else 0


def test_the_feed_starts_with_a_resync_then_names_each_changed_id(postgres_database):
    async def scenario() -> list[str | None]:
        store = PostgresStore(postgres_database.url, password=postgres_database.password)
        feed = store.changes(resync_seconds=60.0)
        try:
            heard = [await anext(feed)]
            await asyncio.to_thread(store.save, definition("alpha"), expected_version=0)
            await asyncio.to_thread(store.save, definition("beta"), expected_version=0)
            heard += [await anext(feed), await anext(feed)]
            return heard
        finally:
            await feed.aclose()
            store.close()

    assert asyncio.run(scenario()) == [None, "alpha", "beta"]


def test_register_replace_and_delete_on_one_replica_reach_the_other(postgres_database):
    async def scenario() -> list[int]:
        writer, follower_side = replica(postgres_database), replica(postgres_database)
        store = follower_side._store
        assert isinstance(store, PostgresStore)
        follower = Follower(follower_side, store.changes(resync_seconds=60.0))
        follower.start()
        seen = []
        try:
            for write, expected in (
                (writer.register(definition(), expected_version=0), 1),
                (writer.register(definition(display_name="v2"), expected_version=1), 2),
                (writer.delete("order-status", expected_version=2), 0),
            ):
                await write
                await eventually(lambda e=expected: version_in(follower_side) == e)
                seen.append(version_in(follower_side))
        finally:
            await follower.stop()
            writer.close()
            follower_side.close()
        return seen

    assert asyncio.run(scenario()) == [1, 2, 0]


def test_the_periodic_resync_heals_a_change_that_was_never_announced(postgres_database):
    async def scenario() -> Connector | None:
        follower_side = replica(postgres_database)
        store = follower_side._store
        assert isinstance(store, PostgresStore)
        follower = Follower(follower_side, store.changes(resync_seconds=0.2))
        follower.start()
        try:
            silent = definition("written-behind").model_copy(
                update={"version": 4, "update_time": datetime(2026, 1, 1, tzinfo=UTC),
                        "source": ConnectorSource.API}
            )  # fmt: skip
            with psycopg.connect(
                postgres_database.url, password=postgres_database.password, autocommit=True
            ) as conn:  # a write with no notification, as if it had been missed
                conn.execute(
                    b"INSERT INTO rules_sidecar_connectors VALUES (%s, %s, %s)",
                    (silent.id, silent.version, silent.model_dump_json(exclude_none=True)),
                )
            await eventually(lambda: follower_side.get("written-behind") is not None)
            return follower_side.get("written-behind")
        finally:
            await follower.stop()
            follower_side.close()

    found = asyncio.run(scenario())

    assert found is not None
    assert found.version == 4


def test_a_file_connector_stays_in_front_of_a_refreshed_api_one(postgres_database):
    async def scenario() -> Connector | None:
        writer = replica(postgres_database)
        store = PostgresStore(postgres_database.url, password=postgres_database.password)
        from_file = definition("order-status", url_template="https://file.example/x").model_copy(
            update={"version": 1, "source": ConnectorSource.FILE}
        )
        follower_side = Registry(store, bindings=NO_BINDINGS, file_connectors=[from_file])
        follower = Follower(follower_side, store.changes(resync_seconds=60.0))
        follower.start()
        try:
            await writer.register(definition("other"), expected_version=0)
            await writer.register(definition("order-status"), expected_version=0)
            await eventually(lambda: follower_side.get("other") is not None)
            await eventually(lambda: "order-status" in follower_side._api)
            return follower_side.get("order-status")
        finally:
            await follower.stop()
            writer.close()
            follower_side.close()

    found = asyncio.run(scenario())

    assert found is not None
    assert found.source is ConnectorSource.FILE
