"""The shared harness (clients/testdata/harness.py): a real sidecar and a loopback upstream."""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

REPO_ROOT = Path(__file__).resolve().parents[3]
TESTDATA = REPO_ROOT / "clients" / "testdata"
HARNESS_COMMAND = (str(REPO_ROOT / ".venv" / "bin" / "python"), str(TESTDATA / "harness.py"))


@dataclass(frozen=True)
class Harness:
    """What the harness prints: the sidecar (TCP and unix), the upstream, a silent port, and the
    secured sidecars (tokens and TLS; mTLS) with their CA, client certificate and tokens."""

    sidecar: str
    sidecar_unix: str
    upstream: str
    silent: str
    secure_sidecar: str
    mtls_sidecar: str
    ca_file: str
    client_cert_file: str
    client_key_file: str
    admin_token: str
    evaluation_token: str


@pytest.fixture(scope="session")
def harness() -> Iterator[Harness]:
    process = subprocess.Popen(
        HARNESS_COMMAND, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert process.stdin is not None
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        process.stdout.close()
        pytest.fail(f"the harness exited with code {process.returncode} before it was ready")
    yield Harness(**json.loads(line))
    process.stdin.close()  # the harness stops the sidecar and cleans up
    process.wait(timeout=30)
    process.stdout.close()


def load_vectors() -> list[dict[str, Any]]:
    document = json.loads((TESTDATA / "vectors.json").read_text(encoding="utf-8"))
    return list(document["cases"])
