"""Hot reload of the connectors file: change detection, versions, and keeping the last good set.

The file lives in a kubelet-style volume (tests/configmap_volume.py) and is updated by swapping
`..data`, as Kubernetes does. The watcher feeds a real Registry over a real store; each test
drives one `check()` at a time, so nothing depends on timing.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from sidecar.core.model import Connector, ConnectorSource
from sidecar.core.secrets import SecretBindings
from sidecar.registry import ConnectorStore, Registry, load_connectors_file
from sidecar.registry.watcher import (
    Changes,
    ConnectorsFileWatcher,
    ReloadState,
    file_stamp,
    reconcile,
)
from tests.support.configmap_volume import ConfigMapVolume

FILE_NAME = "connectors.yaml"
NO_BINDINGS = SecretBindings({})


def connector_definition(connector_id: str, path: str = "orders") -> dict[str, Any]:
    return {
        "id": connector_id,
        "status": "LIVE",
        "url_template": f"https://api.store.com/{path}/{{{{order_number}}}}",
    }


def connectors_yaml(*definitions: dict[str, Any]) -> str:
    return yaml.safe_dump({"connectors": list(definitions)})


def file_connector(connector_id: str, version: int = 1, path: str = "orders") -> Connector:
    return Connector.model_validate(connector_definition(connector_id, path)).model_copy(
        update={"version": version, "source": ConnectorSource.FILE}
    )


@pytest.fixture
def volume(tmp_path: Path) -> ConfigMapVolume:
    return ConfigMapVolume(tmp_path / "connectors")


@pytest.fixture
def registry(tmp_path: Path) -> Iterator[Registry]:
    store = ConnectorStore(tmp_path / "store.sqlite3", busy_timeout_seconds=1.0)
    registry = Registry(store, bindings=NO_BINDINGS, file_connectors=())
    yield registry
    registry.close()


class Harness:
    """A registry loaded from the volume's first version, and a watcher over the visible path."""

    def __init__(
        self,
        volume: ConfigMapVolume,
        registry: Registry,
        text: str,
        bindings: SecretBindings = NO_BINDINGS,
    ) -> None:
        self.volume = volume
        self.registry = registry
        self.path = volume.write({FILE_NAME: text})[FILE_NAME]
        initial = load_connectors_file(self.path, bindings=bindings)
        registry.replace_file_connectors(initial)
        self.states: list[ReloadState] = []
        self.watcher = ConnectorsFileWatcher(
            self.path,
            registry,
            initial,
            bindings=bindings,
            interval_seconds=0.01,
            on_state=self._record,
        )

    async def _record(self, state: ReloadState) -> None:
        self.states.append(state)

    def publish(self, text: str) -> None:
        self.volume.write({FILE_NAME: text})

    def check(self) -> ReloadState:
        return asyncio.run(self.watcher.check())

    def versions(self) -> dict[str, int]:
        page, _ = self.registry.list_page(page_size=500, page_token="", status=None)
        return {connector.id: connector.version for connector in page}


@pytest.fixture
def harness(volume: ConfigMapVolume, registry: Registry) -> Harness:
    text = connectors_yaml(connector_definition("order-status"), connector_definition("refunds"))
    return Harness(volume, registry, text)


# ---------------------------------------------------------------------------------------------
# Change detection
# ---------------------------------------------------------------------------------------------


def test_stamp_changes_when_the_data_link_is_swapped_even_with_identical_content(volume):
    path = volume.write({FILE_NAME: "connectors: []\n"})[FILE_NAME]
    before = file_stamp(path)
    volume.write({FILE_NAME: "connectors: []\n"})
    after = file_stamp(path)
    assert before is not None
    assert after is not None
    assert before != after
    assert before.target != after.target


def test_stamp_is_stable_while_nothing_changes(volume):
    path = volume.write({FILE_NAME: "connectors: []\n"})[FILE_NAME]
    assert file_stamp(path) == file_stamp(path)


def test_stamp_of_a_missing_file_is_none(tmp_path):
    assert file_stamp(tmp_path / "nowhere.yaml") is None


def test_stamp_changes_when_a_plain_file_is_rewritten_in_place(tmp_path):
    path = tmp_path / FILE_NAME
    path.write_text("connectors: []\n")
    before = file_stamp(path)
    path.write_text("connectors: []\n# edited\n")
    assert file_stamp(path) != before


# ---------------------------------------------------------------------------------------------
# Versions: reconcile
# ---------------------------------------------------------------------------------------------


def test_unchanged_connector_keeps_its_version_and_its_object():
    current = {"a": file_connector("a", version=3)}
    installed, changes = reconcile(current, [file_connector("a", version=1)], {})
    assert installed == (current["a"],)
    assert installed[0] is current["a"]
    assert not changes


def test_changed_connector_gets_the_next_version():
    current = {"a": file_connector("a", version=3)}
    installed, changes = reconcile(current, [file_connector("a", path="returns")], {})
    assert [(c.id, c.version) for c in installed] == [("a", 4)]
    assert installed[0].url_template.startswith("https://api.store.com/returns/")
    assert changes == Changes(changed=("a",))


def test_new_connector_starts_at_version_one_and_a_removed_one_disappears():
    current = {"a": file_connector("a", version=2)}
    installed, changes = reconcile(current, [file_connector("b")], {})
    assert [(c.id, c.version) for c in installed] == [("b", 1)]
    assert changes == Changes(added=("b",), removed=("a",))


def test_a_connector_that_comes_back_continues_its_versions():
    installed, changes = reconcile({}, [file_connector("a")], {"a": 5})
    assert [(c.id, c.version) for c in installed] == [("a", 6)]
    assert changes.added == ("a",)


def test_changes_describe_themselves_for_the_log():
    changes = Changes(added=("b",), changed=("a", "c"), removed=("d",))
    assert changes.describe() == "added b; changed a, c; removed d"
    assert Changes().describe() == "no connector changed"


# ---------------------------------------------------------------------------------------------
# The watcher over a real registry
# ---------------------------------------------------------------------------------------------


def test_first_check_of_the_startup_file_changes_nothing(harness):
    state = harness.check()
    assert state.valid
    assert state.reloads == 0
    assert state.failures == 0
    assert harness.versions() == {"order-status": 1, "refunds": 1}


def test_swapped_file_is_applied_with_versions_per_connector(harness):
    harness.check()
    harness.publish(
        connectors_yaml(
            connector_definition("order-status"),  # unchanged
            connector_definition("refunds", path="refunds-v2"),  # changed
            connector_definition("loyalty-points"),  # added
        )
    )
    state = harness.check()
    assert harness.versions() == {"order-status": 1, "refunds": 2, "loyalty-points": 1}
    assert state.valid
    assert state.reloads == 1
    assert state.connectors == 3
    refunds = harness.registry.require("refunds")
    assert "/refunds-v2/" in refunds.url_template
    assert refunds.source is ConnectorSource.FILE


def test_connector_removed_from_the_file_disappears_from_the_registry(harness):
    harness.check()
    harness.publish(connectors_yaml(connector_definition("order-status")))
    harness.check()
    assert harness.versions() == {"order-status": 1}
    assert harness.registry.get("refunds") is None


def test_identical_content_republished_keeps_every_version(harness):
    harness.check()
    harness.publish(
        connectors_yaml(connector_definition("order-status"), connector_definition("refunds"))
    )
    state = harness.check()
    assert harness.versions() == {"order-status": 1, "refunds": 1}
    assert state.reloads == 1


def test_invalid_file_keeps_the_last_good_set_and_says_why(harness, caplog):
    harness.check()
    broken = connector_definition("order-status")
    broken["url_template"] = "https://{{host}}/orders"
    harness.publish(connectors_yaml(broken, connector_definition("brand-new")))
    with caplog.at_level(logging.ERROR, logger="sidecar.registry.watcher"):
        state = harness.check()
    assert harness.versions() == {"order-status": 1, "refunds": 1}
    assert harness.registry.get("brand-new") is None
    assert not state.valid
    assert state.failures == 1
    assert state.last_error is not None
    assert "connectors[0].url_template" in state.last_error
    assert state.last_error_time is not None
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert len(errors) == 1
    message = errors[0].getMessage()
    assert "keeping the last good set (2 connector(s)" in message
    assert "connectors[0].url_template" in message
    assert "\n" not in message


def test_a_reload_carrying_a_secret_to_an_unbound_host_keeps_the_last_good_set(volume, registry):
    bound = connector_definition("order-status")
    bound["auth"] = {"bearer": {"token_secret": "store_token"}}
    bindings = SecretBindings({"store_token": ["api.store.com"]})
    harness = Harness(volume, registry, connectors_yaml(bound), bindings)
    harness.check()
    moved = {**bound, "url_template": "https://api.elsewhere.example/orders/{{order_number}}"}
    harness.publish(connectors_yaml(moved))

    state = harness.check()

    assert not state.valid
    assert state.last_error is not None
    assert (
        "connectors[0].auth: connector 'order-status': secret 'store_token' may only be sent to "
        "api.store.com, not to 'api.elsewhere.example' (the secret_hosts setting)"
    ) in state.last_error
    assert harness.registry.require("order-status").url_template == bound["url_template"]


def test_a_reload_carrying_a_secret_bound_to_no_host_keeps_the_last_good_set(volume, registry):
    harness = Harness(volume, registry, connectors_yaml(connector_definition("order-status")))
    harness.check()
    with_secret = connector_definition("order-status")
    with_secret["auth"] = {"bearer": {"token_secret": "store_token"}}
    harness.publish(connectors_yaml(with_secret))

    state = harness.check()

    assert not state.valid
    assert state.last_error is not None
    assert "secret 'store_token' is bound to no host: add it to the secret_hosts setting" in (
        state.last_error
    )
    assert harness.registry.require("order-status").auth is None


def test_invalid_file_is_reported_once_not_at_every_poll(harness, caplog):
    harness.check()
    harness.publish("connectors: [\n")
    with caplog.at_level(logging.ERROR, logger="sidecar.registry.watcher"):
        for _ in range(3):
            state = harness.check()
    assert state.failures == 1
    assert len([r for r in caplog.records if r.levelno == logging.ERROR]) == 1


def test_valid_file_after_an_invalid_one_clears_the_failure(harness):
    harness.check()
    harness.publish("not: [a, connectors, file]\n")
    assert not harness.check().valid
    harness.publish(connectors_yaml(connector_definition("order-status")))
    state = harness.check()
    assert state.valid
    assert state.failures == 1
    assert state.reloads == 1
    assert state.last_error is not None  # the last error stays visible, with its time
    assert harness.versions() == {"order-status": 1}


def test_missing_file_keeps_the_last_good_set(harness):
    harness.check()
    harness.path.unlink()
    state = harness.check()
    assert not state.valid
    assert state.last_error is not None
    assert "missing" in state.last_error
    assert harness.versions() == {"order-status": 1, "refunds": 1}


def test_every_check_that_read_the_file_is_reported_to_the_listener(harness):
    harness.check()
    harness.check()  # unchanged: nothing read, nothing reported
    harness.publish("connectors: [\n")
    harness.check()
    assert [state.valid for state in harness.states] == [True, False]


def test_background_watcher_applies_a_swap_and_stops_cleanly(harness):
    async def scenario() -> dict[str, int]:
        harness.watcher.start()
        harness.publish(connectors_yaml(connector_definition("loyalty-points")))
        for _ in range(1000):
            if harness.registry.get("loyalty-points") is not None:
                break
            await asyncio.sleep(0.01)
        await harness.watcher.stop()
        return harness.versions()

    assert asyncio.run(scenario()) == {"loyalty-points": 1}
    assert harness.states[-1].valid


def test_api_connectors_are_untouched_by_a_reload(harness):
    api_connector = Connector.model_validate(connector_definition("api-made"))
    asyncio.run(harness.registry.register(api_connector, expected_version=0))
    harness.check()
    harness.publish(connectors_yaml(connector_definition("order-status")))
    harness.check()
    assert harness.versions() == {"api-made": 1, "order-status": 1}
