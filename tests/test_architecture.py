"""Architecture rules the code must keep, checked on the source and on what gets imported.

1. The egress is the one way out: no module under sidecar/ but sidecar/egress/ constructs an
   HTTP client (or opens a raw TCP connection). Every .py is parsed with `ast`; calls and
   references (a factory passed along constructs too) are resolved through the module's imports,
   aliases included. Annotations are not constructions and are ignored.
2. The engine core is transport-free: importing it loads nothing from grpc, the generated
   protobuf code, httpx, aiohttp or stamina (checked in a fresh interpreter via sys.modules).
"""

from __future__ import annotations

import ast
import json
import subprocess
import sys
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

    # The pooled aiohttp session and its connector; httpx contributes only its Request type.
    assert {name for _, name in found} >= {"aiohttp.ClientSession", "aiohttp.TCPConnector"}


@pytest.mark.parametrize(
    ("source", "expected"),
    [
        ("import httpx\nhttpx.AsyncClient()", "httpx.AsyncClient"),
        ("import httpx as h\nclient = h.Client(timeout=1)", "httpx.Client"),
        ("from httpx import AsyncClient as C\nC()", "httpx.AsyncClient"),
        ("import httpx\nhttpx.get('https://x')", "httpx.get"),
        ("import aiohttp\nasync def f():\n    aiohttp.ClientSession()", "aiohttp.ClientSession"),
        ("from aiohttp import TCPConnector\nTCPConnector(limit=1)", "aiohttp.TCPConnector"),
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
# The transport-free engine core
# ---------------------------------------------------------------------------------------------

CORE = (
    "sidecar.core.engine",
    "sidecar.core.templating",
    "sidecar.core.conditions",
    "sidecar.core.extraction",
    "sidecar.core.query",
    "sidecar.core.model",
    "sidecar.core.values",
    "sidecar.core.placeholders",
    "sidecar.core.secrets",
    "sidecar.core.hosts",
)
TRANSPORTS = ("grpc", "rulesidecar", "google.protobuf", "httpx", "httpcore", "aiohttp", "stamina")


def loaded_transports(module: str) -> list[str]:
    """Transport packages in sys.modules after importing `module` in a fresh interpreter."""
    probe = (
        "import importlib, json, sys\n"
        f"importlib.import_module({module!r})\n"
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


@pytest.mark.parametrize("module", CORE)
def test_engine_core_imports_no_transport(module: str) -> None:
    assert loaded_transports(module) == []


def test_the_import_probe_sees_transports_where_they_are() -> None:
    # The control: the server module does load grpc and the generated code.
    loaded = loaded_transports("sidecar.server")

    assert "grpc" in loaded
    assert "rulesidecar.v1.rules_sidecar_pb2" in loaded
