"""The store contract (sidecar/registry/backend.py), run on both back ends: SQLite and PostgreSQL.

Each test gets a `Backend`: `open()` gives a store on the same data (on PostgreSQL a new
connection each time, as another replica would have; SQLite has one owner, so the one store),
`reopen()` closes everything and opens again. The PostgreSQL rows are marked `fleet`.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.model import Connector, ConnectorSource
from sidecar.core.secrets import SecretBindings
from sidecar.errors import NotFoundError, VersionConflictError
from sidecar.registry import ConnectorStore, Registry, Store
from sidecar.registry.postgres import PostgresStore

RACERS = 8


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


@dataclass
class Backend:
    """Opens stores over one set of data and closes every one at teardown."""

    name: str
    make: Callable[[], Store]
    shared: bool  # every open() is its own connection (PostgreSQL) rather than the one store
    opened: list[Store] = field(default_factory=list)

    def open(self) -> Store:
        if self.opened and not self.shared:
            return self.opened[0]
        store = self.make()
        self.opened.append(store)
        return store

    def reopen(self) -> Store:
        self.close()
        return self.open()

    def close(self) -> None:
        for store in self.opened:
            store.close()
        self.opened.clear()


@pytest.fixture(
    params=["sqlite", pytest.param("postgres", marks=pytest.mark.fleet)],
)
def backend(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Backend]:
    if request.param == "sqlite":
        path = tmp_path / "data" / "connectors.sqlite3"
        made = Backend("sqlite", lambda: ConnectorStore(path), shared=False)
    else:
        database = request.getfixturevalue("postgres_database")
        made = Backend(
            "postgres",
            lambda: PostgresStore(database.url, password=database.password),
            shared=True,
        )
    yield made
    made.close()


# ---------------------------------------------------------------------------------------------
# Versions: assigned by the store, per id, never repeated
# ---------------------------------------------------------------------------------------------


def test_a_new_id_is_created_at_version_one_and_reads_back_equal(backend):
    store = backend.open()

    stored, created = store.save(definition(display_name="first"), expected_version=None)

    assert (stored.version, created) == (1, True)
    assert store.get("order-status") == stored
    assert store.load_all() == [stored]


def test_saving_again_replaces_the_definition_at_the_next_version(backend):
    store = backend.open()
    store.save(definition(display_name="first"), expected_version=None)

    stored, created = store.save(definition(display_name="second"), expected_version=None)

    assert (stored.version, created, stored.display_name) == (2, False, "second")
    assert store.load_all() == [stored]


def test_versions_count_per_id(backend):
    store = backend.open()
    store.save(definition("alpha"), expected_version=None)
    store.save(definition("alpha"), expected_version=None)

    beta, _ = store.save(definition("beta"), expected_version=None)

    assert beta.version == 1
    assert [(c.id, c.version) for c in store.load_all()] == [("alpha", 2), ("beta", 1)]


def test_an_id_recreated_after_a_delete_continues_after_its_last_version(backend):
    store = backend.open()
    store.save(definition(), expected_version=None)
    store.save(definition(), expected_version=None)
    store.remove("order-status", expected_version=None)

    again, created = store.save(definition(), expected_version=0)

    assert (again.version, created) == (3, True)


def test_the_last_version_of_a_deleted_id_survives_a_reopen(backend):
    store = backend.open()
    store.save(definition(), expected_version=None)
    store.remove("order-status", expected_version=1)

    again, _ = backend.reopen().save(definition(), expected_version=None)

    assert again.version == 2


def test_connectors_survive_a_reopen(backend):
    store = backend.open()
    saved = [store.save(definition(name), expected_version=None)[0] for name in ("b", "a", "c")]

    assert backend.reopen().load_all() == sorted(saved, key=lambda c: c.id)


def test_get_of_an_unknown_id_is_none(backend):
    assert backend.open().get("never-seen") is None


# ---------------------------------------------------------------------------------------------
# expected_version, checked by the store
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("existing", "expected", "version"),
    [(0, 0, 1), (1, 1, 2), (3, 3, 4), (2, None, 3)],
    ids=["create-expecting-0", "replace-expecting-1", "replace-expecting-3", "unconditional"],
)
def test_a_matching_expected_version_writes(backend, existing, expected, version):
    store = backend.open()
    for _ in range(existing):
        store.save(definition(), expected_version=None)

    stored, _ = store.save(definition(display_name="new"), expected_version=expected)

    assert stored.version == version
    assert store.get("order-status") == stored


@pytest.mark.parametrize(
    ("existing", "expected", "message"),
    [
        (0, 1, "connector 'order-status' does not exist, but expected_version was 1"),
        (1, 0, "connector 'order-status' is at version 1, but expected_version was 0"),
        (2, 1, "connector 'order-status' is at version 2, but expected_version was 1"),
    ],
    ids=["absent-expecting-1", "present-expecting-0", "stale"],
)
def test_a_mismatching_expected_version_conflicts_and_changes_nothing(
    backend, existing, expected, message
):
    store = backend.open()
    for _ in range(existing):
        store.save(definition(display_name="kept"), expected_version=None)
    before = store.load_all()

    with pytest.raises(VersionConflictError) as caught:
        store.save(definition(display_name="refused"), expected_version=expected)

    assert caught.value.message.startswith(message)
    assert store.load_all() == before


def test_remove_returns_the_version_deleted_and_forgets_the_id(backend):
    store = backend.open()
    store.save(definition(), expected_version=None)
    store.save(definition(), expected_version=None)

    assert store.remove("order-status", expected_version=2) == 2
    assert store.get("order-status") is None
    assert store.load_all() == []


@pytest.mark.parametrize("deleted_before", [False, True], ids=["never-stored", "deleted"])
def test_remove_of_an_absent_id_is_not_found(backend, deleted_before):
    store = backend.open()
    if deleted_before:
        store.save(definition(), expected_version=None)
        store.remove("order-status", expected_version=None)

    with pytest.raises(NotFoundError, match="no connector with id 'order-status'"):
        store.remove("order-status", expected_version=None)


def test_remove_with_a_stale_expected_version_conflicts_and_keeps_the_connector(backend):
    store = backend.open()
    store.save(definition(), expected_version=None)
    current, _ = store.save(definition(), expected_version=None)

    with pytest.raises(VersionConflictError, match="is at version 2, but expected_version was 1"):
        store.remove("order-status", expected_version=1)

    assert store.get("order-status") == current


# ---------------------------------------------------------------------------------------------
# Racing writers: one winner
# ---------------------------------------------------------------------------------------------


def race(backend: Backend, write: Callable[[Store, int], object]) -> list[object]:
    """RACERS writers, each on its own store (connection) where the back end has them, released
    together; each one's result or exception."""
    stores = [backend.open() for _ in range(RACERS)]
    start = threading.Barrier(RACERS)

    def run(number: int) -> object:
        start.wait()
        try:
            return write(stores[number], number)
        except (VersionConflictError, NotFoundError) as exc:
            return exc

    with ThreadPoolExecutor(max_workers=RACERS) as pool:
        return list(pool.map(run, range(RACERS)))


@pytest.mark.parametrize("expected", [0, 1], ids=["racing-creates", "racing-replaces"])
def test_racing_writers_with_one_expected_version_have_exactly_one_winner(backend, expected):
    store = backend.open()
    if expected:
        store.save(definition(), expected_version=None)

    results = race(
        backend,
        lambda racer, n: racer.save(definition(display_name=f"w{n}"), expected_version=expected),
    )

    winners = [result for result in results if isinstance(result, tuple)]
    losers = [result for result in results if isinstance(result, VersionConflictError)]
    assert (len(winners), len(losers)) == (1, RACERS - 1)
    (winner, _), *_ = winners
    assert winner.version == expected + 1
    assert store.get("order-status") == winner


def test_racing_unconditional_writers_all_land_on_distinct_versions(backend):
    results = race(
        backend,
        lambda racer, n: racer.save(definition(display_name=f"w{n}"), expected_version=None),
    )

    versions = sorted(result[0].version for result in results if isinstance(result, tuple))
    assert versions == list(range(1, RACERS + 1))
    assert backend.open().get("order-status").version == RACERS


def test_racing_removes_have_exactly_one_winner(backend):
    backend.open().save(definition(), expected_version=None)

    results = race(backend, lambda racer, n: racer.remove("order-status", expected_version=1))

    assert sorted(type(result).__name__ for result in results) == sorted(
        ["int"] + ["NotFoundError"] * (RACERS - 1)
    )


# ---------------------------------------------------------------------------------------------
# The registry over each back end
# ---------------------------------------------------------------------------------------------


def test_the_registry_pages_through_the_connectors_of_either_back_end(backend):
    store = backend.open()
    for name in ("e", "a", "g", "c", "b", "f", "d"):
        store.save(definition(name), expected_version=None)
    registry = Registry(store, bindings=SecretBindings({}), file_connectors=())

    pages, token = [], ""
    while True:
        page, token = registry.list_page(page_size=3, page_token=token, status=None)
        pages.append([connector.id for connector in page])
        if not token:
            break

    assert pages == [["a", "b", "c"], ["d", "e", "f"], ["g"]]
