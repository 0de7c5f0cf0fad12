"""The PostgreSQL store beyond the shared contract: schema migrations, announcements, failures
that name the database and never the password, and the `store_url` setting that chooses it.

Every test here runs against a real throwaway cluster (tests/support/postgres.py) and is marked
`fleet` through its fixtures; the settings table at the end needs no database.
"""

from __future__ import annotations

import asyncio
import json
import threading
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.model import Connector, ConnectorSource
from sidecar.core.secrets import SecretBindings
from sidecar.errors import ConfigError, StoreError, VersionConflictError
from sidecar.registry import Registry
from sidecar.registry.backend import StoreUnreachableError
from sidecar.registry.postgres import (
    NOTIFY_CHANNEL,
    SCHEMA_VERSION,
    PostgresStore,
    is_unreachable,
)
from sidecar.settings import Settings
from tests.support.calls import register
from tests.support.postgres import Database, PostgresCluster
from tests.support.upstreams import closed_port

NO_BINDINGS = SecretBindings({})


def definition(connector_id: str = "order-status", **fields: Any) -> Connector:
    return Connector.model_validate(
        {
            "id": connector_id,
            "status": "LIVE",
            "url_template": "https://api.store.com/orders/{{order_number}}",
            "update_time": datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC),
            "source": ConnectorSource.API,
            **fields,
        }
    )


def open_store(database: Database, **options: Any) -> PostgresStore:
    return PostgresStore(database.url, password=database.password, **options)


def sql(database: Database, statement: str, *params: Any) -> list[tuple[Any, ...]]:
    """Run one statement behind the store's back; its rows (if any)."""
    with psycopg.connect(database.url, password=database.password, autocommit=True) as conn:
        cursor = conn.execute(statement.encode(), params)
        return cursor.fetchall() if cursor.description else []


# ---------------------------------------------------------------------------------------------
# Schema: migrations under an advisory lock, a newer schema refused
# ---------------------------------------------------------------------------------------------


def test_ten_replicas_opening_a_new_database_at_once_migrate_it_exactly_once(postgres_database):
    start = threading.Barrier(10)

    def open_together(_: int) -> PostgresStore:
        start.wait()
        return open_store(postgres_database)

    with ThreadPoolExecutor(max_workers=10) as pool:
        stores = list(pool.map(open_together, range(10)))
    try:
        stored, _ = stores[3].save(definition(), expected_version=0)
        assert [store.get("order-status") for store in stores] == [stored] * 10
    finally:
        for store in stores:
            store.close()

    assert sql(postgres_database, "SELECT version FROM rules_sidecar_schema") == [(SCHEMA_VERSION,)]


def test_a_schema_newer_than_this_binary_is_refused(postgres_database):
    open_store(postgres_database).close()
    sql(postgres_database, "UPDATE rules_sidecar_schema SET version = 99")

    with pytest.raises(StoreError) as caught:
        open_store(postgres_database)

    message = caught.value.message
    assert "has schema 99, written by a newer rules-sidecar" in message
    assert f"this one knows up to {SCHEMA_VERSION}" in message
    assert "upgrade this sidecar" in message


@pytest.mark.parametrize("table", ["rules_sidecar_connectors", "rules_sidecar_versions"])
def test_a_dropped_table_is_damage_not_a_fresh_database(postgres_database, table):
    store = open_store(postgres_database)
    store.save(definition(), expected_version=None)
    store.close()
    sql(postgres_database, f"DROP TABLE {table}")

    with pytest.raises(StoreError) as caught:
        open_store(postgres_database)

    assert f"is damaged: its table(s) {table} are gone" in caught.value.message
    assert "restore the database from a backup" in caught.value.message


def test_a_row_that_cannot_be_read_is_a_store_error_naming_the_connector(postgres_database):
    open_store(postgres_database).close()
    sql(
        postgres_database,
        "INSERT INTO rules_sidecar_connectors VALUES (%s, 1, %s)",
        "bad-one",
        '{"id": "bad-one"}',
    )
    store = open_store(postgres_database)
    try:
        with pytest.raises(StoreError, match="connector 'bad-one' in store PostgreSQL "):
            store.load_all()
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Announcements: id and version, once committed
# ---------------------------------------------------------------------------------------------


def test_every_committed_change_is_announced_with_its_id_and_version(postgres_database):
    store = open_store(postgres_database)
    with psycopg.connect(
        postgres_database.url, password=postgres_database.password, autocommit=True
    ) as listener:
        listener.execute(f"LISTEN {NOTIFY_CHANNEL}".encode())
        store.save(definition(), expected_version=0)
        store.save(definition(), expected_version=None)
        with pytest.raises(VersionConflictError):  # a refused write announces nothing
            store.save(definition(), expected_version=7)
        store.remove("order-status", expected_version=2)
        heard = [json.loads(note.payload) for note in listener.notifies(timeout=5.0, stop_after=3)]
    store.close()

    assert heard == [
        {"id": "order-status", "version": 1},
        {"id": "order-status", "version": 2},
        {"id": "order-status", "version": 2},
    ]


# ---------------------------------------------------------------------------------------------
# Failures: the database named, the password never
# ---------------------------------------------------------------------------------------------


def test_a_wrong_password_is_a_store_error_that_does_not_repeat_it(postgres_database):
    with pytest.raises(StoreError) as caught:
        PostgresStore(postgres_database.url, password="not-the-password-4711")

    message = caught.value.message
    assert message.startswith("cannot connect to PostgreSQL 127.0.0.1:")
    assert "password authentication failed" in message
    assert "not-the-password-4711" not in message
    assert postgres_database.password not in message
    assert not isinstance(caught.value, StoreUnreachableError)  # a configuration: no retry


def test_an_unreachable_database_is_a_store_error_naming_host_and_port():
    port = closed_port()

    with pytest.raises(StoreError) as caught:
        PostgresStore(f"postgresql://someone@127.0.0.1:{port}/rules", password="pw-1234567")

    message = caught.value.message
    assert message.startswith(f"cannot connect to PostgreSQL 127.0.0.1:{port}/rules")
    assert "pw-1234567" not in message
    assert isinstance(caught.value, StoreUnreachableError)  # an outage: the sidecar retries


def test_a_missing_database_is_a_configuration_error_not_an_outage(postgres_cluster):
    with pytest.raises(StoreError) as caught:
        PostgresStore(postgres_cluster.url("no_such_database"), password=postgres_cluster.password)

    assert 'database "no_such_database" does not exist' in caught.value.message
    assert not isinstance(caught.value, StoreUnreachableError)


@pytest.mark.parametrize(
    ("error", "unreachable"),
    [
        (psycopg.OperationalError("connection failed: ... failed: Connection refused"), True),
        (psycopg.OperationalError("connection failed: timeout expired"), True),
        (psycopg.OperationalError("server closed the connection unexpectedly"), True),
        (psycopg.OperationalError('failed: FATAL:  password authentication failed for "u"'), False),
        (psycopg.OperationalError('failed: FATAL:  database "x" does not exist'), False),
        (psycopg.OperationalError("failed: FATAL:  the database system is starting up"), True),
        (psycopg.OperationalError("failed: FATAL:  sorry, too many clients already"), True),
        (psycopg.errors.AdminShutdown("terminating connection"), True),
        (psycopg.errors.InsufficientPrivilege("permission denied for schema public"), False),
        (psycopg.errors.UniqueViolation("duplicate key"), False),
    ],
)
def test_an_outage_is_told_apart_from_a_refusal(error, unreachable):
    assert is_unreachable(error) is unreachable


def test_a_statement_slower_than_the_statement_timeout_is_cancelled_as_unavailable(
    postgres_database,
):
    store = open_store(postgres_database, statement_timeout_seconds=0.3)
    sql(
        postgres_database,
        "CREATE FUNCTION stall() RETURNS trigger LANGUAGE plpgsql AS "
        "$$ BEGIN PERFORM pg_sleep(60); RETURN NEW; END $$",
    )
    sql(
        postgres_database,
        "CREATE TRIGGER stall BEFORE INSERT ON rules_sidecar_connectors "
        "FOR EACH ROW EXECUTE FUNCTION stall()",
    )
    try:
        with pytest.raises(StoreUnreachableError) as caught:
            store.save(definition(), expected_version=0)
        sql(postgres_database, "DROP TRIGGER stall ON rules_sidecar_connectors")
        stored, _ = store.save(definition(), expected_version=0)  # nothing of it was kept
    finally:
        store.close()

    assert "did not answer within 300 ms (store_statement_timeout_seconds)" in (
        caught.value.message
    )
    assert stored.version == 1


def test_a_url_with_a_password_is_refused_without_repeating_it():
    with pytest.raises(StoreError) as caught:
        PostgresStore("postgresql://someone:hunter2-secret@127.0.0.1:1/rules", password=None)

    assert "carries a password" in caught.value.message
    assert "hunter2-secret" not in caught.value.message


def test_the_store_shows_where_it_is_and_not_the_password(postgres_database):
    store = open_store(postgres_database)
    try:
        shown = repr(store)
    finally:
        store.close()

    assert shown.startswith("PostgresStore(PostgreSQL 127.0.0.1:")
    assert postgres_database.password not in shown


def test_a_connection_cut_between_calls_is_replaced_before_the_next_call(postgres_database):
    store = open_store(postgres_database)
    try:
        store.save(definition(), expected_version=0)
        (cut,) = sql(
            postgres_database,
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
            "WHERE application_name = 'rules-sidecar' AND datname = current_database()",
        )

        again, _ = store.save(definition(display_name="after"), expected_version=1)
    finally:
        store.close()

    assert cut == (1,)
    assert (again.version, again.display_name) == (2, "after")


def test_a_connector_held_by_another_writer_past_the_lock_timeout_is_a_store_error(
    postgres_database,
):
    store = open_store(postgres_database, lock_timeout_seconds=0.2)
    store.save(definition(), expected_version=0)
    try:
        with psycopg.connect(postgres_database.url, password=postgres_database.password) as holder:
            holder.execute(
                b"SELECT 1 FROM rules_sidecar_versions WHERE id = 'order-status' FOR UPDATE"
            )
            with pytest.raises(StoreError, match="another writer held it for longer than 200 ms"):
                store.save(definition(), expected_version=1)
    finally:
        store.close()


# ---------------------------------------------------------------------------------------------
# Two replicas: the database decides, not a replica's memory
# ---------------------------------------------------------------------------------------------


def test_a_replica_that_has_not_heard_of_a_write_still_writes_against_the_database(
    postgres_database,
):
    replica_a = Registry(open_store(postgres_database), bindings=NO_BINDINGS, file_connectors=())
    replica_b = Registry(open_store(postgres_database), bindings=NO_BINDINGS, file_connectors=())
    try:
        first, _ = asyncio.run(replica_a.register(definition(), expected_version=0))
        second, created = asyncio.run(
            replica_b.register(definition(display_name="from b"), expected_version=1)
        )
        deleted = asyncio.run(replica_a.delete("order-status", expected_version=2))
    finally:
        replica_a.close()
        replica_b.close()

    assert (first.version, second.version, created, deleted) == (1, 2, False, 2)


# ---------------------------------------------------------------------------------------------
# The setting: store_url chooses PostgreSQL; its password travels apart
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "postgresql://sidecar:hunter2-secret@db:5432/rules",
        "postgresql://sidecar@db:5432/rules?password=hunter2-secret",
    ],
    ids=["in-userinfo", "in-query"],
)
def test_a_store_url_with_a_password_is_invalid_and_the_error_does_not_repeat_it(monkeypatch, url):
    monkeypatch.setenv("RULES_SIDECAR_STORE_URL", url)

    with pytest.raises(ConfigError) as caught:
        Settings.load()

    shown = str(caught.value) + " ".join(caught.value.problems)
    assert "store_url" in shown
    assert "must not carry a password" in shown
    assert "hunter2-secret" not in shown


def test_a_store_url_that_is_not_postgresql_is_invalid(monkeypatch):
    monkeypatch.setenv("RULES_SIDECAR_STORE_URL", "mysql://sidecar@db/rules")

    with pytest.raises(ConfigError) as caught:
        Settings.load()

    assert "must be postgresql://user@host:port/dbname" in " ".join(caught.value.problems)


def test_the_password_comes_from_the_file_before_the_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("RULES_SIDECAR_STORE_PASSWORD", "from-the-environment")
    password_file = tmp_path / "password"
    password_file.write_text("from-the-file\n")

    with_file = Settings.load(overrides={"store_password_file": password_file})
    without = Settings.load()

    assert (with_file.store_password(), without.store_password()) == (
        "from-the-file",
        "from-the-environment",
    )
    assert "from-the-file" not in repr(with_file)


def test_an_unreadable_password_file_is_a_config_error_naming_it(tmp_path):
    missing = tmp_path / "no-such-file"

    with pytest.raises(ConfigError, match=f"store_password_file {missing} cannot be read"):
        Settings.load(overrides={"store_password_file": missing}).store_password()


def test_sidecars_with_one_store_url_share_their_registrations(
    sidecar_factory, postgres_database, tmp_path: Path
):
    password_file = tmp_path / "store-password"
    password_file.write_text(postgres_database.password + "\n")
    settings = {"store_url": postgres_database.url, "store_password_file": password_file}
    first = sidecar_factory(**settings)
    stored = register(first.stub, "order-status", "https://api.store.com/orders/{{n}}")

    second = sidecar_factory(**settings)  # its own data_dir: only the database is shared
    seen = second.stub.GetConnector(pb.GetConnectorRequest(id="order-status"), timeout=5)
    replaced = register(second.stub, "order-status", "https://api.store.com/v2/{{n}}")

    assert seen.connector == stored
    assert (stored.version, replaced.version) == (1, 2)


def test_cluster_fixture_is_a_real_postgresql(postgres_cluster: PostgresCluster):
    with psycopg.connect(postgres_cluster.url(), password=postgres_cluster.password) as conn:
        (version,) = conn.execute(b"SHOW server_version_num").fetchone() or (0,)

    assert int(version) >= 120000
