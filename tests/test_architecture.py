"""Architecture rules the code must keep, checked on the source and on what gets imported.

1. The egress is the one way out: no module under sidecar/ but sidecar/egress/ constructs an
   HTTP client (or opens a raw TCP connection). Every .py is parsed with `ast`; calls and
   references (a factory passed along constructs too) are resolved through the module's imports,
   aliases included. Annotations are not constructions and are ignored.
2. The layers and the transport-free core are import-linter contracts ([tool.importlinter] in
   pyproject.toml, run by `make lint`); here they run on the package, and on a copy with two
   planted violations as the control. A fresh interpreter that imports every module of the core
   checks sys.modules for what static analysis cannot see (imports made at run time).
"""

from __future__ import annotations

import ast
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent
PACKAGE = REPO_ROOT / "sidecar"
EGRESS = PACKAGE / "egress"

# Qualified names whose use constructs an HTTP client or opens a connection; a name ending in
# ".*" covers everything in that module.
CLIENT_CONSTRUCTORS = frozenset(
    {
        "httpx.Client",
        "httpx.AsyncClient",
        "httpx.HTTPTransport",
        "httpx.AsyncHTTPTransport",
        *(f"httpx.{verb}" for verb in ("get", "post", "put", "patch", "delete", "head")),
        "httpx.options",
        "httpx.request",
        "httpx.stream",
        "httpcore.*",
        "httpx_aiohttp.*",
        "aiohttp.ClientSession",
        "aiohttp.TCPConnector",
        "aiohttp.UnixConnector",
        "aiohttp.request",
        "aiohttp.client.ClientSession",
        "aiohttp.connector.TCPConnector",
        "urllib.request.urlopen",
        "urllib.request.build_opener",
        "urllib.request.OpenerDirector",
        "http.client.HTTPConnection",
        "http.client.HTTPSConnection",
        "requests.*",
        "urllib3.*",
        "socket.create_connection",
        "asyncio.open_connection",
        "httptools.*",
        "sidecar.egress.pool.Pool",
        "sidecar.egress.pool.open_socket",
        "sidecar.egress.http1.Connection",
    }
)


def constructor_name(qualified: str) -> str | None:
    """The forbidden name `qualified` falls under, or None."""
    if qualified in CLIENT_CONSTRUCTORS:
        return qualified
    parts = qualified.split(".")
    for length in range(1, len(parts) + 1):
        wildcard = ".".join(parts[:length]) + ".*"
        if wildcard in CLIENT_CONSTRUCTORS and length < len(parts):
            return wildcard
    return None


class _ClientFinder(ast.NodeVisitor):
    """Resolves names through imports and collects uses of CLIENT_CONSTRUCTORS."""

    def __init__(self) -> None:
        self.aliases: dict[str, str] = {}
        self.found: list[tuple[int, str]] = []
        self._annotations: set[int] = set()

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            if alias.asname:
                self.aliases[alias.asname] = alias.name
            else:  # `import urllib.request` binds `urllib`
                top = alias.name.split(".")[0]
                self.aliases[top] = top
            self._check(node.lineno, alias.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module is None or node.level:
            return
        for alias in node.names:
            qualified = f"{node.module}.{alias.name}"
            self.aliases[alias.asname or alias.name] = qualified

    def visit_FunctionDef(self, node: ast.FunctionDef | ast.AsyncFunctionDef) -> None:
        arguments = [*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs]
        arguments += [a for a in (node.args.vararg, node.args.kwarg) if a is not None]
        for annotation in [a.annotation for a in arguments] + [node.returns]:
            self._skip_annotation(annotation)
        self.generic_visit(node)

    def visit_AsyncFunctionDef(self, node: ast.AsyncFunctionDef) -> None:
        self.visit_FunctionDef(node)

    def visit_AnnAssign(self, node: ast.AnnAssign) -> None:
        self._skip_annotation(node.annotation)
        self.generic_visit(node)

    def visit_Name(self, node: ast.Name) -> None:
        if id(node) not in self._annotations and node.id in self.aliases:
            self._check(node.lineno, self.aliases[node.id])

    def visit_Attribute(self, node: ast.Attribute) -> None:
        if id(node) in self._annotations:
            return
        qualified = self._qualified(node)
        if qualified is not None and self._check(node.lineno, qualified):
            return  # reported once, for the longest name
        self.generic_visit(node)

    def _qualified(self, node: ast.expr) -> str | None:
        if isinstance(node, ast.Name):
            return self.aliases.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self._qualified(node.value)
            return f"{base}.{node.attr}" if base is not None else None
        return None

    def _check(self, line: int, qualified: str) -> bool:
        name = constructor_name(qualified)
        if name is not None:
            self.found.append((line, qualified))
        return name is not None

    def _skip_annotation(self, annotation: ast.expr | None) -> None:
        if annotation is not None:
            self._annotations.update(id(child) for child in ast.walk(annotation))


def client_constructions(source: str) -> list[tuple[int, str]]:
    """(line, qualified name) of every use of a client constructor in `source`."""
    finder = _ClientFinder()
    finder.visit(ast.parse(source))
    return sorted(set(finder.found))


def modules_outside_the_egress() -> list[Path]:
    return sorted(
        path for path in PACKAGE.rglob("*.py") if EGRESS not in path.parents and path != EGRESS
    )


def test_no_module_outside_the_egress_constructs_an_http_client() -> None:
    offenders = {
        str(path.relative_to(REPO_ROOT)): found
        for path in modules_outside_the_egress()
        if (found := client_constructions(path.read_text(encoding="utf-8")))
    }
    print(f"checked {len(modules_outside_the_egress())} modules outside sidecar/egress/")

    assert offenders == {}


def test_the_egress_is_where_the_client_is_built() -> None:
    # The control: the checker does see the one place that builds a client.
    found = client_constructions((EGRESS / "transport.py").read_text(encoding="utf-8"))

    # The keep-alive pool of our HTTP/1.1 client (sidecar/egress/pool.py) and its socket opener.
    assert {name for _, name in found} >= {
        "sidecar.egress.pool.Pool",
        "sidecar.egress.pool.open_socket",
    }


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import httpx\nhttpx.AsyncClient()", "httpx.AsyncClient"),
        ("import httpx as h\nclient = h.Client(timeout=1)", "httpx.Client"),
        ("from httpx import AsyncClient as C\nC()", "httpx.AsyncClient"),
        ("import httpx\nhttpx.get('https://x')", "httpx.get"),
        ("import aiohttp\nasync def f():\n    aiohttp.ClientSession()", "aiohttp.ClientSession"),
        ("from aiohttp import TCPConnector\nTCPConnector(limit=1)", "aiohttp.TCPConnector"),
        ("import httptools\nhttptools.HttpResponseParser(p)", "httptools.HttpResponseParser"),
        ("from sidecar.egress.pool import Pool\nPool(r, o, t)", "sidecar.egress.pool.Pool"),
        ("import urllib.request\nurllib.request.urlopen('x')", "urllib.request.urlopen"),
        ("from urllib.request import urlopen\nurlopen('x')", "urllib.request.urlopen"),
        ("import http.client\nhttp.client.HTTPSConnection('x')", "http.client.HTTPSConnection"),
        ("import requests\nrequests.post('x')", "requests.post"),
        ("from requests import Session\nSession()", "requests.Session"),
        ("import socket\nsocket.create_connection(('x', 1))", "socket.create_connection"),
        ("import functools, httpx\nfunctools.partial(httpx.Client)", "httpx.Client"),
    ],
)
def test_the_checker_finds_every_spelling(source: str, expected: str) -> None:
    assert expected in {name for _, name in client_constructions(source)}


@pytest.mark.parametrize(
    "source",
    [
        "import aiohttp\ndef f(c: aiohttp.TCPConnector) -> aiohttp.ClientSession: ...",
        "import httpx\nerror = httpx.HTTPError",
        "import socket\nsocket.AF_INET",
        "client = object()\nclient.get('x')",
    ],
    ids=["annotations", "exception-class", "constant", "unrelated-get"],
)
def test_the_checker_ignores_what_builds_no_client(source: str) -> None:
    assert client_constructions(source) == []


# ---------------------------------------------------------------------------------------------
# The layers and the transport-free core: import-linter contracts in pyproject.toml
# ---------------------------------------------------------------------------------------------

CONTRACTS = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text(encoding="utf-8"))["tool"][
    "importlinter"
]["contracts"]
LINT_IMPORTS = Path(sys.executable).parent / "lint-imports"


def lint_imports(search_root: Path) -> subprocess.CompletedProcess[str]:
    """lint-imports with the repository's contracts on the `sidecar` package under `search_root`.

    lint-imports puts its working directory first on sys.path, so a copy of the package there is
    the one it reads. COLUMNS keeps each contract's line whole.
    """
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache", str(REPO_ROOT / "pyproject.toml")],
        cwd=search_root,
        env={**os.environ, "COLUMNS": "400", "NO_COLOR": "1"},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@pytest.fixture(scope="module")
def lint_of_the_package() -> subprocess.CompletedProcess[str]:
    return lint_imports(REPO_ROOT)


def test_the_package_keeps_its_import_contracts(
    lint_of_the_package: subprocess.CompletedProcess[str],
) -> None:
    print(lint_of_the_package.stdout)

    assert lint_of_the_package.returncode == 0, lint_of_the_package.stdout
    assert f"Contracts: {len(CONTRACTS)} kept, 0 broken." in lint_of_the_package.stdout


@pytest.mark.parametrize("name", [contract["name"] for contract in CONTRACTS])
def test_each_contract_is_checked_and_kept(
    lint_of_the_package: subprocess.CompletedProcess[str], name: str
) -> None:
    assert f"{name} KEPT" in lint_of_the_package.stdout.splitlines()


def test_the_contracts_see_a_real_violation(tmp_path: Path) -> None:
    # The control: a copy of the package with a transport in the core, an upward import, and
    # Settings read below the composition root.
    copy = tmp_path / "sidecar"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__"))
    values = copy / "core" / "values.py"
    values.write_text("import grpc\n" + values.read_text(encoding="utf-8"), encoding="utf-8")
    engine = copy / "core" / "engine.py"
    engine.write_text(
        "from sidecar import server\n" + engine.read_text(encoding="utf-8"), encoding="utf-8"
    )
    logs = copy / "telemetry" / "logs.py"
    logs.write_text(
        "import sidecar.settings\n" + logs.read_text(encoding="utf-8"), encoding="utf-8"
    )

    result = lint_imports(tmp_path)

    assert result.returncode == 1, result.stdout + result.stderr
    broken = [line for line in result.stdout.splitlines() if line.endswith(" BROKEN")]
    assert [line for line in broken if line.startswith("Layers:")] != []
    assert [line for line in broken if line.startswith("The core is transport-free:")] != []
    assert "- sidecar.core.values -> grpc (l.1)" in result.stdout
    assert "- sidecar.core.engine -> sidecar.server (l.1)" in result.stdout
    assert [line for line in broken if line.startswith("Settings are read in one place")] != []


# What import-linter cannot see: a transport pulled in at run time (importlib, or through a
# third-party package the core imports). One probe for the whole core, every module of it.
TRANSPORTS = (
    "grpc",
    "rulesidecar",
    "google.protobuf",
    "httpx",
    "httpcore",
    "aiohttp",
    "httptools",
    "stamina",
    "opentelemetry",
)


def loaded_transports(package: str) -> list[str]:
    """Transport packages in sys.modules after importing `package` and every module under it, in
    a fresh interpreter."""
    probe = (
        "import importlib, json, pkgutil, sys\n"
        f"root = importlib.import_module({package!r})\n"
        "path = getattr(root, '__path__', [])  # a plain module has nothing under it\n"
        "for found in pkgutil.walk_packages(path, root.__name__ + '.'):\n"
        "    importlib.import_module(found.name)\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    loaded = json.loads(result.stdout)
    return sorted(
        name
        for name in loaded
        if any(name == banned or name.startswith(banned + ".") for banned in TRANSPORTS)
    )


def test_importing_the_whole_core_loads_no_transport() -> None:
    assert loaded_transports("sidecar.core") == []


def test_the_import_probe_sees_transports_where_they_are() -> None:
    # The control: the server module does load grpc and the generated code.
    loaded = loaded_transports("sidecar.server")

    assert "grpc" in loaded
    assert "rulesidecar.v1.rules_sidecar_pb2" in loaded


@pytest.mark.parametrize(
    ("modules", "psycopg_loaded"),
    [("sidecar.cli, sidecar.server", False), ("sidecar.registry.postgres", True)],
    ids=["serve-on-the-embedded-store", "control-the-postgres-store"],
)
def test_psycopg_is_loaded_only_for_the_postgres_store(modules: str, psycopg_loaded: bool) -> None:
    """psycopg holds ~9 MiB of resident memory: a sidecar on its embedded store (the default)
    never imports it; the server imports the PostgreSQL store when store_url asks for it."""
    result = subprocess.run(
        [sys.executable, "-c", f"import sys, {modules}; print('psycopg' in sys.modules)"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )

    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(psycopg_loaded)
