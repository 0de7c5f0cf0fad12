"""The registry: versions, optimistic concurrency, file vs API connectors, paging, failed writes.

Plain synchronous tests: each drives the async API with `asyncio.run`.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Iterator
from datetime import UTC
from pathlib import Path
from typing import Any

import pytest

from sidecar.core.model import Connector, ConnectorSource, ConnectorStatus
from sidecar.core.secrets import SecretBindings
from sidecar.errors import (
    InvalidArgumentError,
    NotFoundError,
    ReadOnlyConnectorError,
    StoreError,
    VersionConflictError,
)
from sidecar.registry import ConnectorStore, Registry
from sidecar.registry.registry import DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE

MakeRegistry = Callable[..., Registry]
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


def file_connector(connector_id: str, **fields: Any) -> Connector:
    """A connector as load_connectors_file gives it."""
    return definition(connector_id, **fields).model_copy(
        update={"version": 1, "source": ConnectorSource.FILE}
    )


def register(
    registry: Registry, connector: Connector, expected_version: int | None = None
) -> tuple[Connector, bool]:
    return asyncio.run(registry.register(connector, expected_version=expected_version))


def delete(registry: Registry, connector_id: str, expected_version: int | None = None) -> int:
    return asyncio.run(registry.delete(connector_id, expected_version=expected_version))


@pytest.fixture
def make_registry(tmp_path: Path) -> Iterator[MakeRegistry]:
    """Builds registries over a store in tmp_path/data and closes every one afterwards."""
    made: list[Registry] = []

    def make(
        file_connectors: Iterable[Connector] = (), bindings: SecretBindings = NO_BINDINGS
    ) -> Registry:
        store = ConnectorStore(tmp_path / "data" / "connectors.sqlite3")
        registry = Registry(store, bindings=bindings, file_connectors=file_connectors)
        made.append(registry)
        return registry

    yield make
    for registry in made:
        registry.close()


# ---------------------------------------------------------------------------------------------
# Registering and versions
# ---------------------------------------------------------------------------------------------


def test_first_registration_creates_version_one(make_registry):
    registry = make_registry()

    stored, created = register(registry, definition(display_name="Orders"))

    assert created is True
    assert stored.version == 1
    assert stored.source is ConnectorSource.API
    assert stored.update_time is not None
    assert stored.update_time.tzinfo == UTC
    assert stored.display_name == "Orders"
    assert registry.get("order-status") == stored
    assert len(registry) == 1


def test_registering_again_bumps_the_version_and_is_not_a_creation(make_registry):
    registry = make_registry()
    register(registry, definition())

    stored, created = register(registry, definition(status="DISABLED"))

    assert (stored.version, created) == (2, False)
    assert registry.require("order-status").status is ConnectorStatus.DISABLED


def test_registration_ignores_output_only_fields_of_the_definition(make_registry):
    registry = make_registry()
    forged = definition().model_copy(update={"version": 41, "source": ConnectorSource.FILE})

    stored, _ = register(registry, forged)

    assert (stored.version, stored.source) == (1, ConnectorSource.API)


def test_unknown_id_is_none_for_get_and_not_found_for_require(make_registry):
    registry = make_registry()

    assert registry.get("nope") is None
    with pytest.raises(NotFoundError, match="no connector with id 'nope'"):
        registry.require("nope")


@pytest.mark.parametrize(
    ("existing_versions", "expected_version", "new_version"),
    [
        (0, None, 1),  # unconditional create
        (0, 0, 1),  # 0 means "must not exist yet"
        (2, None, 3),  # unconditional replace
        (2, 2, 3),  # replace exactly what was read
    ],
)
def test_matching_expected_version_is_accepted(
    make_registry, existing_versions, expected_version, new_version
):
    registry = make_registry()
    for _ in range(existing_versions):
        register(registry, definition())

    stored, created = register(registry, definition(), expected_version)

    assert stored.version == new_version
    assert created is (existing_versions == 0)


@pytest.mark.parametrize(
    ("existing_versions", "expected_version", "message"),
    [
        (0, 1, "'order-status' does not exist, but expected_version was 1"),
        (2, 0, "'order-status' is at version 2, but expected_version was 0"),
        (2, 1, "'order-status' is at version 2, but expected_version was 1"),
        (2, 3, "'order-status' is at version 2, but expected_version was 3"),
    ],
)
def test_mismatching_expected_version_is_a_conflict_and_changes_nothing(
    make_registry, existing_versions, expected_version, message
):
    registry = make_registry()
    for _ in range(existing_versions):
        register(registry, definition())
    before = registry.get("order-status")

    with pytest.raises(VersionConflictError, match=message):
        register(registry, definition(display_name="changed"), expected_version)

    assert registry.get("order-status") == before


def test_registrations_survive_a_restart(make_registry):
    first = make_registry()
    stored, _ = register(first, definition())
    register(first, definition("crm"))
    first.close()

    second = make_registry()

    assert second.get("order-status") == stored
    assert len(second) == 2
    assert register(second, definition())[0].version == 2


# ---------------------------------------------------------------------------------------------
# Deleting
# ---------------------------------------------------------------------------------------------


def test_delete_returns_the_deleted_version_and_forgets_the_connector(make_registry):
    registry = make_registry()
    register(registry, definition())
    register(registry, definition())

    assert delete(registry, "order-status") == 2
    assert registry.get("order-status") is None
    assert len(registry) == 0


def test_deleting_an_unknown_id_is_not_found(make_registry):
    with pytest.raises(NotFoundError):
        delete(make_registry(), "nope")


@pytest.mark.parametrize("expected_version", [0, 1, 3])
def test_delete_with_a_mismatching_expected_version_is_a_conflict(make_registry, expected_version):
    registry = make_registry()
    register(registry, definition())
    register(registry, definition())

    with pytest.raises(VersionConflictError):
        delete(registry, "order-status", expected_version)

    assert registry.require("order-status").version == 2


def test_delete_with_the_current_expected_version_succeeds(make_registry):
    registry = make_registry()
    register(registry, definition())

    assert delete(registry, "order-status", 1) == 1


def test_recreating_a_deleted_connector_continues_its_versions(make_registry):
    registry = make_registry()
    register(registry, definition())
    register(registry, definition())
    delete(registry, "order-status")

    stored, created = register(registry, definition(), 0)

    assert (stored.version, created) == (3, True)


def test_versions_continue_after_delete_across_a_restart(make_registry):
    first = make_registry()
    register(first, definition())
    delete(first, "order-status")
    first.close()

    second = make_registry()

    assert register(second, definition())[0].version == 2


# ---------------------------------------------------------------------------------------------
# Secrets bound to hosts (secret_hosts)
# ---------------------------------------------------------------------------------------------

BEARER = {"bearer": {"token_secret": "store_token"}}


def test_a_secret_bound_to_another_host_is_refused_on_auth_and_nothing_is_stored(make_registry):
    registry = make_registry(bindings=SecretBindings({"store_token": ["api.crm.example"]}))

    with pytest.raises(InvalidArgumentError) as refused:
        register(registry, definition(auth=BEARER))

    assert [(v.field, v.description) for v in refused.value.violations] == [
        (
            "connector.auth",
            "secret 'store_token' may only be sent to api.crm.example, not to 'api.store.com'",
        )
    ]
    assert registry.get("order-status") is None
    registry.close()
    assert make_registry().get("order-status") is None  # nor in the store


def test_a_secret_bound_to_no_host_is_refused_on_auth_naming_secret_hosts(make_registry):
    registry = make_registry(bindings=SecretBindings({"other_token": ["api.store.com"]}))

    with pytest.raises(InvalidArgumentError) as refused:
        register(registry, definition(auth=BEARER))

    assert [(v.field, v.description) for v in refused.value.violations] == [
        (
            "connector.auth",
            "secret 'store_token' is bound to no host: add it to the secret_hosts setting, "
            "e.g. secret_hosts: {store_token: [api.store.com]}",
        )
    ]
    assert registry.get("order-status") is None


def test_a_secret_bound_to_no_host_is_registered_with_the_development_opt_out(make_registry):
    registry = make_registry(bindings=SecretBindings({}, allow_unbound=True))

    stored, created = register(registry, definition(auth=BEARER))

    assert (stored.version, created) == (1, True)


def test_a_secret_bound_to_the_connectors_host_is_registered(make_registry):
    registry = make_registry(bindings=SecretBindings({"store_token": ["*.store.com"]}))

    stored, created = register(registry, definition(auth=BEARER))

    assert (stored.version, created) == (1, True)


# ---------------------------------------------------------------------------------------------
# File connectors
# ---------------------------------------------------------------------------------------------


def test_file_connectors_are_served_as_they_are(make_registry):
    registry = make_registry(file_connectors=[file_connector("from-file")])

    served = registry.require("from-file")

    assert (served.source, served.version) == (ConnectorSource.FILE, 1)


@pytest.mark.parametrize("expected_version", [None, 0, 1])
def test_file_connector_cannot_be_registered_through_the_api(make_registry, expected_version):
    registry = make_registry(file_connectors=[file_connector("from-file")])

    with pytest.raises(ReadOnlyConnectorError, match="read-only"):
        register(registry, definition("from-file"), expected_version)

    assert registry.require("from-file").source is ConnectorSource.FILE


def test_file_connector_cannot_be_deleted_through_the_api(make_registry):
    registry = make_registry(file_connectors=[file_connector("from-file")])

    with pytest.raises(ReadOnlyConnectorError, match="change the file instead"):
        delete(registry, "from-file")

    assert registry.get("from-file") is not None


def test_file_connectors_are_never_written_to_the_store(make_registry):
    make_registry(file_connectors=[file_connector("from-file")]).close()

    assert make_registry().get("from-file") is None


def test_file_connector_shadows_an_api_connector_with_the_same_id(make_registry, caplog):
    api = make_registry()
    register(api, definition("shared", display_name="from the API"))
    api.close()

    with caplog.at_level(logging.WARNING, logger="sidecar.registry.registry"):
        registry = make_registry(file_connectors=[file_connector("shared", display_name="file")])

    assert registry.require("shared").display_name == "file"
    assert len(registry) == 1
    assert "'shared' is declared in the connectors file" in caplog.text


def test_shadowed_api_connector_returns_when_the_file_drops_it(make_registry):
    api = make_registry()
    stored, _ = register(api, definition("shared"))
    api.close()
    registry = make_registry(file_connectors=[file_connector("shared")])

    registry.replace_file_connectors([])

    assert registry.get("shared") == stored


def test_replacing_file_connectors_swaps_the_whole_set(make_registry):
    registry = make_registry(file_connectors=[file_connector("a"), file_connector("b")])

    registry.replace_file_connectors([file_connector("b"), file_connector("c")])

    assert [c.id for c in registry.list_page(page_size=0, page_token="", status=None)[0]] == [
        "b",
        "c",
    ]


# ---------------------------------------------------------------------------------------------
# Listing
# ---------------------------------------------------------------------------------------------


def list_all(registry: Registry, page_size: int, status: ConnectorStatus | None = None):
    """Every page, as lists of ids, following the tokens."""
    pages, token = [], ""
    while True:
        page, token = registry.list_page(page_size=page_size, page_token=token, status=status)
        pages.append([c.id for c in page])
        if not token:
            return pages


@pytest.mark.parametrize(
    ("page_size", "pages"),
    [
        (2, [["a", "b"], ["c", "d"], ["e"]]),
        (5, [["a", "b", "c", "d", "e"]]),
        (1, [["a"], ["b"], ["c"], ["d"], ["e"]]),
        (500, [["a", "b", "c", "d", "e"]]),
    ],
)
def test_pages_follow_id_order_and_end_without_a_token(make_registry, page_size, pages):
    registry = make_registry(file_connectors=[file_connector(i) for i in "ecadb"])

    assert list_all(registry, page_size) == pages


def test_page_that_ends_exactly_at_the_last_connector_has_no_next_token(make_registry):
    registry = make_registry(file_connectors=[file_connector(i) for i in "abcd"])

    assert list_all(registry, 2) == [["a", "b"], ["c", "d"]]


def test_page_size_zero_means_the_default(make_registry):
    ids = [f"c{i:03d}" for i in range(DEFAULT_PAGE_SIZE + 1)]
    registry = make_registry(file_connectors=[file_connector(i) for i in ids])

    page, token = registry.list_page(page_size=0, page_token="", status=None)

    assert [c.id for c in page] == ids[:DEFAULT_PAGE_SIZE]
    assert token


def test_list_mixes_file_and_api_connectors(make_registry):
    registry = make_registry(file_connectors=[file_connector("b-file")])
    register(registry, definition("a-api"))
    register(registry, definition("c-api"))

    assert list_all(registry, 10) == [["a-api", "b-file", "c-api"]]


def test_status_filter_keeps_only_that_status_across_pages(make_registry):
    statuses = {"a": "LIVE", "b": "DRAFT", "c": "LIVE", "d": "DISABLED", "e": "LIVE"}
    registry = make_registry(
        file_connectors=[file_connector(i, status=s) for i, s in statuses.items()]
    )

    assert list_all(registry, 2, ConnectorStatus.LIVE) == [["a", "c"], ["e"]]
    assert list_all(registry, 2, ConnectorStatus.DRAFT) == [["b"]]


def test_empty_registry_lists_one_empty_page(make_registry):
    assert make_registry().list_page(page_size=10, page_token="", status=None) == ([], "")


def test_page_token_is_a_cursor_not_an_offset(make_registry):
    registry = make_registry()
    for connector_id in ("a", "c", "e"):
        register(registry, definition(connector_id))
    first, token = registry.list_page(page_size=2, page_token="", status=None)
    register(registry, definition("b"))  # lands before the cursor: not repeated, not skipped

    rest, _ = registry.list_page(page_size=2, page_token=token, status=None)

    assert [c.id for c in first] == ["a", "c"]
    assert [c.id for c in rest] == ["e"]


@pytest.mark.parametrize("page_size", [-1, MAX_PAGE_SIZE + 1])
def test_page_size_out_of_range_is_a_violation_of_page_size(make_registry, page_size):
    with pytest.raises(InvalidArgumentError) as caught:
        make_registry().list_page(page_size=page_size, page_token="", status=None)

    (violation,) = caught.value.violations
    assert violation.field == "page_size"
    assert "between 0 and 500" in violation.description


@pytest.mark.parametrize("token", ["a", "_w", "////"], ids=["bad-padding", "not-utf-8", "0xff"])
def test_token_not_from_list_connectors_is_a_violation_of_page_token(make_registry, token):
    with pytest.raises(InvalidArgumentError) as caught:
        make_registry().list_page(page_size=10, page_token=token, status=None)

    (violation,) = caught.value.violations
    assert violation.field == "page_token"


# ---------------------------------------------------------------------------------------------
# Failed writes leave memory unchanged
# ---------------------------------------------------------------------------------------------


def break_store(registry: Registry) -> None:
    """Make every store operation fail, as a vanished or broken database file would."""
    registry._store._db.close()


def test_failed_replace_leaves_the_registered_version_in_place(make_registry):
    registry = make_registry()
    before, _ = register(registry, definition())
    break_store(registry)

    with pytest.raises(StoreError, match="cannot write connector 'order-status'"):
        register(registry, definition(display_name="never stored"))

    assert registry.get("order-status") == before
    assert len(registry) == 1


def test_failed_delete_keeps_the_connector(make_registry):
    registry = make_registry()
    before, _ = register(registry, definition())
    break_store(registry)

    with pytest.raises(StoreError, match="cannot delete connector 'order-status'"):
        delete(registry, "order-status")

    assert registry.get("order-status") == before


def test_failed_create_is_not_visible(make_registry, monkeypatch):
    registry = make_registry()

    def failing_put(self: ConnectorStore, connector: Connector) -> None:
        raise StoreError(f"cannot write connector {connector.id!r}: disk I/O error")

    monkeypatch.setattr(ConnectorStore, "put", failing_put)

    with pytest.raises(StoreError, match="disk I/O error"):
        register(registry, definition())

    assert registry.get("order-status") is None
    assert len(registry) == 0
    assert registry.list_page(page_size=10, page_token="", status=None) == ([], "")


def test_registration_after_a_failed_write_uses_the_next_version(make_registry, monkeypatch):
    registry = make_registry()
    register(registry, definition())
    real_put = ConnectorStore.put

    def failing_put(self: ConnectorStore, connector: Connector) -> None:
        raise StoreError("cannot write: disk full")

    monkeypatch.setattr(ConnectorStore, "put", failing_put)
    with pytest.raises(StoreError):
        register(registry, definition())
    monkeypatch.setattr(ConnectorStore, "put", real_put)

    stored, _ = register(registry, definition())

    assert stored.version == 2


def test_failed_create_on_a_broken_store_is_a_store_error(make_registry):
    registry = make_registry()
    break_store(registry)

    with pytest.raises(StoreError):
        register(registry, definition())


def test_a_reload_during_an_api_write_keeps_the_file_definition(tmp_path):
    async def scenario():
        store = ConnectorStore(tmp_path / "store.sqlite3")
        registry = Registry(store, bindings=NO_BINDINGS, file_connectors=())
        original_put = store.put

        def put_while_the_file_arrives(connector):
            original_put(connector)
            # A reload lands between the store write and the in-memory update.
            registry.replace_file_connectors([file_version])

        file_version = Connector.model_validate(
            {"id": "orders", "status": "LIVE", "url_template": "https://file.example/x"}
        ).model_copy(update={"version": 1, "source": ConnectorSource.FILE})
        store.put = put_while_the_file_arrives  # the unit edge case: the interleaving
        api_version = Connector.model_validate(
            {"id": "orders", "status": "LIVE", "url_template": "https://api.example/x"}
        )
        await registry.register(api_version, expected_version=None)
        try:
            return registry.get("orders")
        finally:
            registry.close()

    found = asyncio.run(scenario())

    assert found is not None
    assert found.source is ConnectorSource.FILE
    assert found.url_template == "https://file.example/x"
