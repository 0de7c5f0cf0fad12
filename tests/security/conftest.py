"""The security suite's safety net: loopback only, and every attempt counted.

The autouse `network` fixture installs the recording connector and the fake resolver of
tests/support/network.py into `sidecar.server` (so in-process sidecars use them) and replaces the
system resolver of `sidecar.egress.transport` with one that refuses everything; at teardown it
fails the test if any violation was recorded. `raw_servers` gives raw loopback servers
(tests/support/raw_servers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import sidecar.egress.transport
import sidecar.server
from tests.support.network import Network, RefusingResolver, recording_egress_factory
from tests.support.raw_servers import RawServers

# Totals over the session, reported at the end of the run (pytest_terminal_summary).
SESSION_TOTALS = {
    "tests": 0,
    "loopback connections": 0,
    "non-loopback attempts": 0,
    "refused as strict-xfail evidence": 0,
    "lookups": 0,
}


@pytest.fixture(autouse=True)
def network(monkeypatch: pytest.MonkeyPatch) -> Iterator[Network]:
    """Loopback only for every egress of the test; fails the test on any violation."""
    recorded = Network()
    monkeypatch.setattr(sidecar.server, "Egress", recording_egress_factory(recorded))
    monkeypatch.setattr(
        sidecar.egress.transport, "DefaultResolver", lambda: RefusingResolver(recorded)
    )
    yield recorded
    violations = recorded.non_loopback_attempts()
    SESSION_TOTALS["tests"] += 1
    loopback = len(recorded.connections) - len(violations) - len(recorded.excused)
    SESSION_TOTALS["loopback connections"] += loopback
    SESSION_TOTALS["non-loopback attempts"] += len(violations)
    SESSION_TOTALS["refused as strict-xfail evidence"] += len(recorded.excused)
    SESSION_TOTALS["lookups"] += len(recorded.lookups)
    assert violations == [], "a connection outside loopback was attempted"


def pytest_terminal_summary(terminalreporter: Any) -> None:
    """How many connections the security suite's egresses attempted, and where."""
    if SESSION_TOTALS["tests"]:
        figures = ", ".join(f"{name}: {count}" for name, count in SESSION_TOTALS.items())
        terminalreporter.write_line(f"security suite network record: {figures}")


@pytest.fixture
def raw_servers() -> Iterator[RawServers]:
    """Raw loopback servers, stopped at teardown."""
    servers = RawServers()
    yield servers
    servers.close()
