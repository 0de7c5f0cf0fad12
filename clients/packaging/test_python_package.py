"""The Python client as a user gets it: the wheel `make -C clients/python wheel` builds, installed
into a fresh virtual environment, and the READMEs' Python examples run in that environment."""

from __future__ import annotations

import re
import zipfile
from pathlib import Path

import pytest
from conftest import (
    REPO,
    UV,
    Harness,
    code_blocks,
    expect_lines,
    run,
    substitute,
    substitutions,
)

# Builds, installs and compiles: minutes on a busy machine, not the suite's 120 s per test.
pytestmark = pytest.mark.timeout(900)

README = REPO / "clients" / "python" / "README.md"
VERSION = run([REPO / "scripts" / "version"], REPO).strip()
# Every Python block of the client's README, in order: what runs after it, what it must print.
NOT_FOUND_CHECK = """
from rulesidecar.client import SidecarError as _SidecarError
try:
    sidecar.get_connector("doc-test-missing")
except _SidecarError as _error:
    print("reached", _error.code().name)
"""
README_BLOCKS = [
    ("evaluate a node", "", "show-status shipped"),
    ("tokens and TLS", NOT_FOUND_CHECK, "reached NOT_FOUND"),
]
PRELUDE = "import json, os\nnode = json.loads(os.environ['NODE_JSON'])\n"


@pytest.fixture(scope="module")
def wheel() -> Path:
    run(["make", "-C", "clients/python", "wheel"], REPO)
    (built,) = (REPO / "clients" / "python" / "dist").glob("*.whl")
    return built


@pytest.fixture(scope="module")
def venv_python(wheel: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh virtual environment with the wheel (and its dependencies) installed."""
    venv = tmp_path_factory.mktemp("scratch") / "venv"
    env = {"UV_PYTHON_DOWNLOADS": "never"}
    run([UV, "venv", "--quiet", "--python", "python3", venv], REPO, env=env)
    python = venv / "bin" / "python"
    run([UV, "pip", "install", "--quiet", "--python", python, wheel], REPO, env=env)
    return python


def test_the_wheel_holds_the_client_the_stubs_and_their_types(wheel: Path) -> None:
    assert wheel.name == f"rules_sidecar_client-{VERSION}-py3-none-any.whl"
    with zipfile.ZipFile(wheel) as archive:
        names = set(archive.namelist())
        metadata = archive.read(f"rules_sidecar_client-{VERSION}.dist-info/METADATA").decode()
    assert {
        "rulesidecar/client.py",
        "rulesidecar/py.typed",
        "rulesidecar/v1/rules_sidecar_pb2.py",
        "rulesidecar/v1/rules_sidecar_pb2.pyi",
        "rulesidecar/v1/rules_sidecar_pb2_grpc.pyi",
    } <= names
    assert re.search(r"^Requires-Dist: grpcio", metadata, re.MULTILINE)
    assert "License-Expression: Apache-2.0" in metadata
    assert "## Install" in metadata  # the README is the long description


def test_the_installed_wheel_calls_a_real_sidecar(
    venv_python: Path, harness: Harness, tmp_path: Path
) -> None:
    script = f"""
import rulesidecar.client
from rulesidecar.client import Client
print(rulesidecar.client.__file__)
with Client({harness.sidecar!r}) as sidecar:
    extracted = sidecar.extract_variables(
        [{{"variable": "status", "path": "order.status", "cast": "STRING"}}],
        {{"order": {{"status": "shipped"}}}},
    )
print(extracted.variables["status"])
"""
    output = run([venv_python, "-c", script], tmp_path)
    installed_from, status = output.split()
    assert Path(installed_from).is_relative_to(venv_python.parent.parent)  # not the repository
    assert status == "shipped"


def test_the_readme_has_the_python_blocks_this_test_runs() -> None:
    assert len(code_blocks(README, "python")) == len(README_BLOCKS), (
        "clients/python/README.md gained or lost a Python block: add it to README_BLOCKS"
    )


@pytest.mark.parametrize(
    ("index", "epilogue", "expected"),
    [pytest.param(i, after, out, id=name) for i, (name, after, out) in enumerate(README_BLOCKS)],
)
def test_a_readme_example_runs_against_the_sidecar(
    index: int,
    epilogue: str,
    expected: str,
    venv_python: Path,
    harness: Harness,
    token_file: Path,
    node_json: str,
    tmp_path: Path,
) -> None:
    block = code_blocks(README, "python")[index]
    program = PRELUDE + substitute(block, substitutions(harness, token_file)) + epilogue
    output = run([venv_python, "-c", program], tmp_path, env={"NODE_JSON": node_json})
    expect_lines(output, expected)


def test_the_top_readme_python_cells_run(
    venv_python: Path, harness: Harness, token_file: Path, node_json: str, tmp_path: Path
) -> None:
    """The Python rows of README.md's Clients tables: the first call and the credentials."""
    rows = [
        line
        for line in (REPO / "README.md").read_text().splitlines()
        if line.startswith("| Python |")
    ]
    cells = [cell for row in rows for cell in re.findall(r"`(Client\([^`]*)`", row)]
    assert len(cells) == 2, f"README.md's Python cells changed: {cells}"
    first_call, credentials = (substitute(c, substitutions(harness, token_file)) for c in cells)
    program = f"""{PRELUDE}
from rulesidecar.client import TLS, Client, SidecarError, TokenFile
evaluation = {first_call}
print(evaluation.target, evaluation.variables["order_status"])
address, path = {harness.secure_sidecar!r}, {str(token_file)!r}
ca, crt, key = {harness.ca_file!r}, {harness.client_cert_file!r}, {harness.client_key_file!r}
sidecar = {credentials}
try:
    sidecar.get_connector("doc-test-missing")
except SidecarError as error:
    print("reached", error.code().name)
"""
    output = run([venv_python, "-c", program], tmp_path, env={"NODE_JSON": node_json})
    expect_lines(output, "show-status shipped", "reached NOT_FOUND")
