"""The security suite's safety net: loopback only, and every attempt counted.

The autouse `network` fixture records every connection and lookup of the test; `sidecar_seams`
hands its recording connector and fake resolver (tests/support/network.py) to every in-process
sidecar the test starts, through the composition root's parameters, and `guard_process` refuses
any other non-loopback connect or real DNS lookup in the test process. At teardown `network`
fails the test if any violation was recorded. `raw_servers` gives raw loopback servers
(tests/support/raw_servers.py).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from tests.support.network import Network, guard_process, is_loopback_v4, recording_seams
from tests.support.raw_servers import RawServers
from tests.support.sidecars import Seams

# Totals over the session, reported at the end of the run (pytest_terminal_summary).
SESSION_TOTALS = {
    "tests": 0,
    "loopback connections": 0,
    "non-loopback attempts": 0,
    "refused as strict-xfail evidence": 0,
    "lookups": 0,
}


@pytest.fixture(autouse=True)
def network() -> Iterator[Network]:
    """Loopback only for every egress of the test; fails the test on any violation."""
    recorded = Network()
    with guard_process(recorded):
        yield recorded
    violations = recorded.non_loopback_attempts()
    SESSION_TOTALS["tests"] += 1
    loopback = sum(is_loopback_v4(host) for host, _ in recorded.connections)
    SESSION_TOTALS["loopback connections"] += loopback
    SESSION_TOTALS["non-loopback attempts"] += len(violations)
    SESSION_TOTALS["refused as strict-xfail evidence"] += len(recorded.excused)
    SESSION_TOTALS["lookups"] += len(recorded.lookups)
    assert violations == [], "a connection outside loopback was attempted"


@pytest.fixture
def sidecar_seams(network: Network) -> Seams:
    """Every in-process sidecar of the suite connects through the recording network."""
    return recording_seams(network)


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
