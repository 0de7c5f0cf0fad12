"""Shared fixtures: the real sidecar (in-process or as a subprocess) and loopback upstreams.

The machinery lives in tests/support (sidecars.py, upstreams.py); these fixtures start it and
stop what they started at teardown.

A test that uses an in-process sidecar is marked `e2e`, one that starts a subprocess `process`
(pytest_collection_modifyitems below), so the marks follow the fixtures and cannot drift; a
module that runs `rules-sidecar` itself says `pytestmark = pytest.mark.process`.
`make test-fast` deselects both marks.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from sidecar.telemetry.instruments import Telemetry
from tests.support.loopback import LOOPBACK_ALLOW
from tests.support.postgres import Database, PostgresCluster, server_bindir
from tests.support.sidecars import (
    InProcessSidecar,
    InProcessSidecars,
    Seams,
    SidecarProcess,
    SidecarProcesses,
    hide_sidecar_environment,
)
from tests.support.upstreams import Upstream, closed_port

IN_PROCESS_FIXTURES = frozenset({"sidecar_factory", "running_sidecar", "module_sidecar_factory"})
PROCESS_FIXTURES = frozenset({"sidecar_process"})
FLEET_FIXTURES = frozenset({"postgres_cluster"})


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    """Mark each test by the sidecar fixtures it uses (directly or through other fixtures)."""
    for item in items:
        used = set(getattr(item, "fixturenames", ()))
        if used & IN_PROCESS_FIXTURES:
            item.add_marker(pytest.mark.e2e)
        if used & PROCESS_FIXTURES:
            item.add_marker(pytest.mark.process)
        if used & FLEET_FIXTURES:
            item.add_marker(pytest.mark.fleet)


@pytest.fixture
def sidecar_seams() -> Seams:
    """The seams every in-process sidecar of a test gets: none here; the security suite's
    conftest overrides this with its recording network."""
    return Seams()


@pytest.fixture
def sidecar_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sidecar_seams: Seams
) -> Iterator[Callable[..., InProcessSidecar]]:
    """Start in-process sidecars: `sidecar_factory(connectors_file=None, *, telemetry=None,
    **setting_overrides)`.

    Each gets its own data_dir under tmp_path unless `data_dir` is given, and the egress opens
    exactly 127.0.0.1 over http (LOOPBACK_ALLOW) unless overridden. `telemetry` replaces the one
    built from the settings (a test's in-memory exporters). RULES_SIDECAR_* variables of the
    developer's environment are hidden so they cannot change the settings.
    """
    hide_sidecar_environment(monkeypatch)
    sidecars = InProcessSidecars(tmp_path)

    def start(
        connectors_file: Path | None = None,
        *,
        telemetry: Telemetry | None = None,
        **overrides: Any,
    ) -> InProcessSidecar:
        for name, value in LOOPBACK_ALLOW.items():
            overrides.setdefault(name, value)
        if connectors_file is not None:
            overrides["connectors_file"] = connectors_file
        seams = replace(sidecar_seams, telemetry=telemetry) if telemetry else sidecar_seams
        return sidecars.start(sidecars.settings(**overrides), seams)

    yield start
    sidecars.close()


@pytest.fixture
def running_sidecar(sidecar_factory: Callable[..., InProcessSidecar]) -> InProcessSidecar:
    """One loaded in-process sidecar with an empty store and no connectors file."""
    return sidecar_factory()


@pytest.fixture(scope="module")
def module_sidecar_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., InProcessSidecar]]:
    """Like `sidecar_factory`, but each sidecar lives for the whole test module.

    For tables of read-only calls (evaluations, extractions) that need not pay a start-up per
    row. Tests sharing one sidecar must not depend on each other's registrations or counters.
    """
    sidecars = InProcessSidecars(tmp_path_factory.mktemp("module-sidecars"))

    def start(**overrides: Any) -> InProcessSidecar:
        with pytest.MonkeyPatch.context() as patch:
            hide_sidecar_environment(patch)
            settings = sidecars.settings(**overrides)
        return sidecars.start(settings)

    yield start
    sidecars.close()


@pytest.fixture
def sidecar_process(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start `rules-sidecar serve` subprocesses; every one is killed at teardown.

    `sidecar_process(data_dir=None, args=(), env=None, settings_via_env=False, wait=True)`, as
    `SidecarProcesses.start`.
    """
    processes = SidecarProcesses(tmp_path)
    yield processes.start
    processes.close()


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Real HTTP upstreams on 127.0.0.1 (see tests/support/upstreams.py), stopped at teardown."""
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def refused_url() -> str:
    """An http:// URL on a loopback port nothing listens on: connecting is refused."""
    return f"http://127.0.0.1:{closed_port()}/orders/A-10023"


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[Upstream]:
    """One set of upstreams for a whole test module; `reset()` it between tests."""
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="session")
def postgres_cluster() -> Iterator[PostgresCluster]:
    """One throwaway PostgreSQL cluster for the session (tests/support/postgres.py).

    Skipped when the server is not installed (scripts/postgres install puts it there), except in
    CI, where `make test` installs it and its absence is a failure.
    """
    bindir = server_bindir()
    if bindir is None:
        reason = (
            "PostgreSQL server not installed (/usr/lib/postgresql/*/bin): scripts/postgres install"
        )
        if os.environ.get("CI"):
            pytest.fail(reason)
        pytest.skip(reason)
    cluster = PostgresCluster.start(bindir)
    yield cluster
    cluster.stop()


@pytest.fixture
def postgres_database(postgres_cluster: PostgresCluster) -> Database:
    """An empty database of its own for one test (marked `fleet`)."""
    return postgres_cluster.create_database()
