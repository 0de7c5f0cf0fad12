"""Each client installed from its packed artifact into a scratch project, and the READMEs'
examples run there against the real sidecars of clients/testdata/harness.py.

The artifacts are built the way each README says (a wheel by `make -C clients/python wheel`, a
tarball by `npm pack`, the Go module through a `replace` recipe, the jars by `mvn deploy` to a
scratch repository) and used from outside the repository, so a package that ships no JavaScript,
a POM without its jars or a README example that calls a method that does not exist fails here.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTDATA = REPO / "clients" / "testdata"
UV = REPO / ".tools" / "uv" / "bin" / "uv"
# The evaluation the README examples make: a vector whose upstream answers a shipped order.
VECTOR = "shipped-order-matches"


@dataclass(frozen=True)
class Harness:
    """The harness's JSON line: the sidecars (plain and secured), their CA, certificate, tokens."""

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
        (str(REPO / ".venv" / "bin" / "python"), str(TESTDATA / "harness.py")),
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdin is not None
    assert process.stdout is not None
    line = process.stdout.readline()
    if not line:
        process.wait()
        pytest.fail(f"the harness exited with code {process.returncode} before it was ready")
    yield Harness(**json.loads(line))
    process.stdin.close()
    process.wait(timeout=30)
    process.stdout.close()


@pytest.fixture(scope="session")
def token_file(harness: Harness, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A file holding the secured sidecars' admin token, where the READMEs mount theirs."""
    path = tmp_path_factory.mktemp("token") / "token"
    path.write_text(harness.admin_token + "\n")
    return path


@pytest.fixture(scope="session")
def node_json(harness: Harness) -> str:
    """The `node` the README examples evaluate, in proto3 JSON, with its connector registered."""
    sys.path.insert(0, str(REPO / "clients" / "python" / "src"))
    from rulesidecar.client import Client  # the repository's client, only to set the stage

    cases = json.loads((TESTDATA / "vectors.json").read_text(encoding="utf-8"))["cases"]
    case = next(c for c in cases if c["name"] == VECTOR)
    connector = json.loads(json.dumps(case["connector"]).replace("${UPSTREAM}", harness.upstream))
    with Client(harness.sidecar) as sidecar:
        sidecar.register_connector(connector)
    return json.dumps(case["node"])


def substitutions(harness: Harness, token: Path) -> dict[str, str]:
    """The READMEs' placeholder addresses and paths, and what the harness has in their place."""
    return {
        "127.0.0.1:50051": harness.sidecar,
        "rules-sidecar.rules.svc:50051": harness.secure_sidecar,
        "/etc/rules-sidecar/ca.pem": harness.ca_file,
        "/etc/rules-sidecar/tls.crt": harness.client_cert_file,
        "/etc/rules-sidecar/tls.key": harness.client_key_file,
        "/var/run/secrets/rules-sidecar/token": str(token),
        # The examples' deadlines, made generous: a cold JVM's first TLS handshake on a busy
        # machine can outlast 2 s, and timing is not what these tests check.
        "timeout=2.0": "timeout=30.0",
        "timeout=5.0": "timeout=30.0",
        "2*time.Second": "30*time.Second",
        "timeoutMs: 2000": "timeoutMs: 30000",
        "Duration.ofSeconds(2)": "Duration.ofSeconds(30)",
    }


def substitute(code: str, replacements: Mapping[str, str]) -> str:
    for placeholder, actual in replacements.items():
        code = code.replace(placeholder, actual)
    return code


def code_blocks(readme: Path, language: str) -> list[str]:
    """The fenced code blocks of one language in a Markdown file, in order."""
    text = readme.read_text(encoding="utf-8")
    return re.findall(rf"^```{language}\n(.*?)^```$", text, flags=re.MULTILINE | re.DOTALL)


def run(
    command: Sequence[str | os.PathLike[str]],
    cwd: Path,
    *,
    env: Mapping[str, str] | None = None,
    timeout: float = 600,
) -> str:
    """Run a command; its stdout, or a failure that shows the command and the end of its output."""
    result = subprocess.run(
        [os.fspath(part) for part in command],
        cwd=cwd,
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    if result.returncode != 0:
        output = (result.stdout + result.stderr)[-4000:]
        pytest.fail(
            f"`{' '.join(map(str, command))}` in {cwd} exited {result.returncode}:\n{output}"
        )
    return result.stdout


def tracked_copy(source: Path, target: Path) -> Path:
    """The files git tracks under `source`, copied to `target`: what a fresh clone would have."""
    listed = subprocess.run(
        ["git", "ls-files", "-z", "."], cwd=source, capture_output=True, check=True
    ).stdout.decode()
    for relative in filter(None, listed.split("\0")):
        destination = target / relative
        destination.parent.mkdir(parents=True, exist_ok=True)
        destination.write_bytes((source / relative).read_bytes())
    return target


def expect_lines(output: str, *expected: str) -> None:
    for line in expected:
        assert line in output, f"{line!r} not in the output:\n{output}"
