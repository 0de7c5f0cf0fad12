"""The embedded connector store: durable round trips, tombstones, one owner, clear failures."""

from __future__ import annotations

import sqlite3
from collections.abc import Callable, Iterator
from contextlib import closing
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.model import Connector
from sidecar.errors import StoreError
from sidecar.registry.store import SCHEMA_VERSION, ConnectorStore

UPDATE_TIME = datetime(2026, 1, 2, 3, 4, 5, 678000, tzinfo=UTC)


def make_connector(
    connector_id: str = "order-status", version: int = 1, **fields: Any
) -> Connector:
    return Connector.model_validate(
        {
            "id": connector_id,
            "status": "LIVE",
            "url_template": "https://api.store.com/orders/{{order_number}}",
            "version": version,
            "update_time": UPDATE_TIME,
            **fields,
        }
    )


FULL = make_connector(
    "crm-lookup",
    version=7,
    display_name="CRM",
    method="POST",
    headers={"Accept": "application/json"},
    query={"q": "{{email}}"},
    body_template={"filter": {"email": "{{email}}", "none": None, "n": [1, 2.5, None]}},
    auth={"basic": {"username_secret": "u", "password_secret": "p"}},
    timeout=timedelta(milliseconds=2500),
    max_response_bytes=4096,
)


@pytest.fixture
def open_store(tmp_path: Path) -> Iterator[Callable[..., ConnectorStore]]:
    """Opens stores under tmp_path (data dir `data` unless told) and closes them all afterwards."""
    opened: list[ConnectorStore] = []

    def open_(path: Path | None = None) -> ConnectorStore:
        store = ConnectorStore(path or tmp_path / "data" / "connectors.sqlite3")
        opened.append(store)
        return store

    yield open_
    for store in opened:
        store.close()


def raw_execute(path: Path, *statements: tuple[str, tuple[Any, ...]] | str) -> None:
    """Write to a store file behind its back, with plain sqlite3 (the store must be closed)."""
    with closing(sqlite3.connect(path)) as db:
        for statement in statements:
            if isinstance(statement, str):
                db.execute(statement)
            else:
                db.execute(*statement)
        db.commit()


# ---------------------------------------------------------------------------------------------
# Round trips and persistence
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("connector", [make_connector(), FULL], ids=["minimal", "full"])
def test_put_connector_comes_back_equal(open_store, connector):
    store = open_store()

    store.put(connector)

    assert store.load_all() == [connector]


def test_load_all_returns_connectors_in_id_order(open_store):
    store = open_store()
    for connector_id in ("zeta", "alpha", "mid"):
        store.put(make_connector(connector_id))

    assert [c.id for c in store.load_all()] == ["alpha", "mid", "zeta"]


def test_put_replaces_the_connector_with_the_same_id(open_store):
    store = open_store()
    store.put(make_connector(version=1, display_name="first"))

    store.put(make_connector(version=2, display_name="second"))

    (stored,) = store.load_all()
    assert (stored.version, stored.display_name) == (2, "second")


def test_connectors_survive_close_and_reopen(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    store = open_store(path)
    store.put(FULL)
    store.put(make_connector())
    store.close()

    reopened = open_store(path)

    assert reopened.load_all() == [FULL, make_connector()]


def test_missing_data_directory_is_created(open_store, tmp_path):
    path = tmp_path / "deep" / "nested" / "dir" / "connectors.sqlite3"

    open_store(path).put(make_connector())

    assert path.is_file()
    assert (path.parent / "lock").is_file()


def test_new_store_records_its_schema_version(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    open_store(path).close()

    with closing(sqlite3.connect(path)) as db:
        assert db.execute("PRAGMA user_version").fetchone()[0] == SCHEMA_VERSION


# ---------------------------------------------------------------------------------------------
# Deletes and tombstones
# ---------------------------------------------------------------------------------------------


def test_tombstone_version_is_zero_for_an_id_never_deleted(open_store):
    store = open_store()
    store.put(make_connector(version=3))

    assert store.tombstone_version("order-status") == 0
    assert store.tombstone_version("never-seen") == 0


def test_delete_removes_the_connector_and_remembers_its_last_version(open_store):
    store = open_store()
    store.put(make_connector(version=5))

    store.delete("order-status", 5)

    assert store.load_all() == []
    assert store.tombstone_version("order-status") == 5


def test_tombstone_survives_a_restart(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    store = open_store(path)
    store.put(make_connector(version=2))
    store.delete("order-status", 2)
    store.close()

    assert open_store(path).tombstone_version("order-status") == 2


def test_putting_the_id_again_clears_its_tombstone(open_store):
    store = open_store()
    store.put(make_connector(version=2))
    store.delete("order-status", 2)

    store.put(make_connector(version=3))

    assert store.tombstone_version("order-status") == 0
    assert [c.version for c in store.load_all()] == [3]


# ---------------------------------------------------------------------------------------------
# One owner, clear failures
# ---------------------------------------------------------------------------------------------


def test_second_open_of_the_same_data_dir_is_refused_while_the_first_is_open(open_store):
    first = open_store()
    first.put(make_connector())

    with pytest.raises(StoreError, match="another rules-sidecar process is using the store"):
        open_store()

    assert first.load_all() == [make_connector()]


def test_data_dir_can_be_opened_again_once_closed(open_store):
    open_store().close()

    assert open_store().load_all() == []


def test_garbage_file_is_refused_as_not_a_readable_sqlite_database(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    path.parent.mkdir()
    path.write_bytes(b"this is not a database, it is a shopping list\n" * 100)

    with pytest.raises(StoreError) as caught:
        open_store(path)

    message = caught.value.message
    assert str(path) in message
    assert "not a readable SQLite database" in message
    assert "restore a backup" in message
    assert path.read_bytes().startswith(b"this is not a database")  # left as it was


def test_failed_open_releases_the_data_dir(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    path.parent.mkdir()
    path.write_bytes(b"garbage" * 1000)
    with pytest.raises(StoreError):
        open_store(path)
    path.unlink()

    assert open_store(path).load_all() == []


@pytest.mark.parametrize(
    "definition",
    [
        '{"id": "bad-one"}',
        '{"id": "bad-one", "status": "LIVE", "url_template": "https://{{host}}/x"}',
        "not json at all",
    ],
    ids=["missing-fields", "invalid-url", "not-json"],
)
def test_row_with_an_invalid_definition_is_a_store_error_naming_the_connector(
    open_store, tmp_path, definition
):
    path = tmp_path / "data" / "connectors.sqlite3"
    open_store(path).close()
    raw_execute(path, ("INSERT INTO connectors VALUES (?, ?, ?)", ("bad-one", 1, definition)))
    store = open_store(path)

    with pytest.raises(StoreError) as caught:
        store.load_all()

    assert "'bad-one'" in caught.value.message
    assert str(path) in caught.value.message


def test_store_written_by_a_newer_sidecar_is_refused(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    open_store(path).close()
    raw_execute(path, "PRAGMA user_version = 99")

    with pytest.raises(StoreError) as caught:
        open_store(path)

    assert "newer rules-sidecar (schema 99)" in caught.value.message


def test_data_dir_that_cannot_be_created_is_a_store_error(open_store, tmp_path):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("a file where the data dir should be")

    with pytest.raises(StoreError, match="cannot create the data directory"):
        open_store(blocker / "connectors.sqlite3")


def test_write_to_a_closed_store_is_a_store_error(open_store):
    store = open_store()
    store.close()

    with pytest.raises(StoreError, match="cannot write connector 'order-status'"):
        store.put(make_connector())
    with pytest.raises(StoreError, match="cannot delete connector 'order-status'"):
        store.delete("order-status", 1)
    with pytest.raises(StoreError, match="cannot read the connector store"):
        store.load_all()


def test_tombstone_lookup_on_a_closed_store_is_a_store_error(open_store):
    store = open_store()
    store.close()

    with pytest.raises(StoreError):
        store.tombstone_version("order-status")


# ---------------------------------------------------------------------------------------------
# A new store told from a damaged one (issue 14, item 4)
# ---------------------------------------------------------------------------------------------


def damage_message(open_store: Callable[..., ConnectorStore], path: Path) -> str:
    with pytest.raises(StoreError) as caught:
        open_store(path)
    return caught.value.message


def test_a_new_store_is_created_whole_with_its_marker(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    store = open_store(path)

    store.put(make_connector())

    assert store.marker_path.read_text(encoding="utf-8").strip() == '{"generation": 1}'
    assert not path.with_name(path.name + ".creating").exists()


def test_an_emptied_store_file_is_damage_not_a_new_store(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    store = open_store(path)
    store.put(make_connector())
    store.close()
    path.write_bytes(b"")

    message = damage_message(open_store, path)

    assert f"the connector store {path} is damaged" in message
    assert "no tables" in message
    assert "Restore" in message
    assert "move" in message
    assert path.read_bytes() == b""  # left for the operator to inspect


@pytest.mark.parametrize("table", ["connectors", "tombstones", "store_meta"])
def test_a_dropped_table_is_damage(open_store, tmp_path, table):
    path = tmp_path / "data" / "connectors.sqlite3"
    store = open_store(path)
    store.put(make_connector())
    store.close()
    raw_execute(path, f"DROP TABLE {table}")

    message = damage_message(open_store, path)

    assert f"{path} is damaged" in message
    assert f"{table} " in message


def test_a_store_file_that_lost_its_write_ahead_log_is_damage(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    store = open_store(path)
    for connector_id in ("one", "two", "three"):
        store.put(make_connector(connector_id))
    copy = tmp_path / "copy" / "connectors.sqlite3"
    copy.parent.mkdir()
    # What a backup of the main file alone (or a lost -wal) leaves: the commits are in the WAL.
    copy.write_bytes(path.read_bytes())
    store.marker_path.replace(copy.with_name(copy.name + ".marker"))

    message = damage_message(open_store, copy)

    assert "holds 0 write(s) but its marker counted 3" in message


def test_a_missing_store_file_with_its_marker_left_is_damage(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    store = open_store(path)
    store.put(make_connector())
    store.close()
    path.unlink()

    message = damage_message(open_store, path)

    assert "the store file is missing, but its marker file says it held connectors" in message
    assert not path.exists()  # not silently re-created


def test_a_store_from_before_markers_is_adopted(open_store, tmp_path):
    path = tmp_path / "data" / "connectors.sqlite3"
    path.parent.mkdir()
    raw_execute(
        path,
        "CREATE TABLE connectors (id TEXT PRIMARY KEY, version INTEGER NOT NULL, "
        "definition TEXT NOT NULL)",
        "CREATE TABLE tombstones (id TEXT PRIMARY KEY, version INTEGER NOT NULL)",
        (
            "INSERT INTO connectors VALUES (?, ?, ?)",
            ("order-status", 1, make_connector().model_dump_json(exclude_none=True)),
        ),
        "PRAGMA user_version = 1",
    )

    store = open_store(path)

    assert store.load_all() == [make_connector()]
    assert store.marker_path.exists()
