"""The security suite's last lock holds: an egress built without the recording seams is still
unable to connect off loopback or to ask real DNS (tests/support/network.py `guard_process`).

Each control builds a plain `Egress` (the system resolver, aiohttp's own connector) whose policy
re-opens the destination, so only the process guard stands in the way: it must refuse and record.
The control runs in a child process inside a fresh network namespace (`unshare -rn`, loopback
only), so that even with the guard broken no packet can leave the machine: the test then fails
because nothing was recorded, not because something was sent.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
import sys

import pytest

from sidecar.core.model.exchange import OutboundRequest, SendOptions
from sidecar.core.model.failures import SendError
from sidecar.egress import Egress, EgressLimits, EgressPolicy
from tests.support.network import Network, guard_process
from tests.support.sidecars import REPO_ROOT

PROBES = {
    "private": (
        EgressPolicy(allow_cidrs=("10.255.255.1/32",), allow_http_hosts=("10.255.255.1",)),
        "http://10.255.255.1:9/",
        "10.255.255.1",
    ),
    "dns": (
        EgressPolicy(allow_hosts=("guard-check.invalid",)),
        "https://guard-check.invalid/",
        "guard-check.invalid",
    ),
}


def probe(name: str) -> None:
    """In the child: one GET through an unseamed egress under the guard; print what it saw."""
    policy, url, host = PROBES[name]
    network = Network()

    async def send() -> str:
        egress = Egress(policy, EgressLimits(retries=0))
        try:
            await egress.send(
                OutboundRequest("GET", url, (), None),
                SendOptions(timeout_seconds=2.0, max_response_bytes=1024, allowed_hosts=(host,)),
            )
        except SendError as failure:
            return str(failure.reason)
        finally:
            await egress.aclose()
        return "answered"

    with guard_process(network):
        outcome = asyncio.run(send())
    print(
        json.dumps(
            {"outcome": outcome, "violations": network.violations, "lookups": network.lookups}
        )
    )


def run_isolated(name: str) -> dict[str, object]:
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed: no network namespace to test in")
    command = [sys.executable, "-c", f"from {__name__} import probe; probe({name!r})"]
    result = subprocess.run(
        ["unshare", "-rn", *command],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    answer: dict[str, object] = json.loads(result.stdout.strip().splitlines()[-1])
    return answer


def test_a_private_address_the_policy_reopened_is_refused_before_connect() -> None:
    seen = run_isolated("private")

    assert seen["violations"] == [["10.255.255.1", 9]]
    assert seen["outcome"] != "answered"


def test_a_name_is_never_given_to_real_dns() -> None:
    seen = run_isolated("dns")

    assert seen["lookups"] == ["guard-check.invalid"]
    assert seen["violations"] == [["guard-check.invalid", 443]]
