"""The TypeScript client as a user gets it: `npm pack` from a fresh checkout (its `prepack`
compiles the sources), the tarball installed into a scratch project, and the README's examples
compiled there with `tsc --strict` against the shipped types and run against the sidecar."""

from __future__ import annotations

import json
import os
import tarfile
from pathlib import Path

import pytest
from conftest import (
    REPO,
    Harness,
    code_blocks,
    expect_lines,
    run,
    substitute,
    substitutions,
    tracked_copy,
)

# Builds, installs and compiles: minutes on a busy machine, not the suite's 120 s per test.
pytestmark = pytest.mark.timeout(900)

CLIENT = REPO / "clients" / "typescript"
README = CLIENT / "README.md"
PRELUDE = """import * as __client from "@rules-sidecar/client";
import { fromJson as __fromJson } from "@bufbuild/protobuf";
const node = __fromJson(__client.NodeSchema, JSON.parse(process.env.NODE_JSON!));
"""
NOT_FOUND_CHECK = """
try {
  await sidecar.getConnector("doc-test-missing");
} catch (__error) {
  const code = __error instanceof __client.SidecarError ? __client.Code[__error.code] : __error;
  console.log("reached", code);
} finally {
  sidecar.close();
}
"""
# Every TypeScript block of the README, in order: what runs after it, what it must print.
README_BLOCKS = [
    ("evaluate a node", "", "1 0 show-status shipped"),
    ("tokens and TLS", NOT_FOUND_CHECK, "reached NotFound"),
]
DEV_TOOLS = ("typescript", "@types/node")  # the versions the client itself pins


@pytest.fixture(scope="module")
def tarball(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """`npm pack` in a copy of the tracked files: no dist/, as in a fresh clone."""
    checkout = tracked_copy(CLIENT, tmp_path_factory.mktemp("checkout"))
    assert not (checkout / "dist").exists()
    # The dependencies `npm install` would put there (scripts/bootstrap --clients installed them).
    os.symlink(CLIENT / "node_modules", checkout / "node_modules")
    out = tmp_path_factory.mktemp("packed")
    run(["npm", "pack", "--silent", "--pack-destination", out], checkout)
    (packed,) = out.glob("*.tgz")
    return packed


@pytest.fixture(scope="module")
def scratch(tarball: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A scratch project with the tarball installed, and tsc to check the examples."""
    project = tmp_path_factory.mktemp("scratch-ts")
    (project / "package.json").write_text(
        json.dumps({"name": "scratch", "private": True, "type": "module"})
    )
    pins = json.loads((CLIENT / "package.json").read_text())["devDependencies"]
    tools = [f"{name}@{pins[name]}" for name in DEV_TOOLS]
    npm_install = ["npm", "install", "--no-audit", "--no-fund", "--prefer-offline"]
    run([*npm_install, tarball, *tools], project)
    (project / "tsconfig.json").write_text(
        json.dumps(
            {
                "compilerOptions": {
                    "target": "ES2022",
                    "module": "NodeNext",
                    "moduleResolution": "NodeNext",
                    "strict": True,
                    "skipLibCheck": False,
                    "outDir": "out",
                    "types": ["node"],
                },
                "include": ["*.ts"],
            }
        )
    )
    return project


def test_the_tarball_ships_javascript_and_types(tarball: Path) -> None:
    with tarfile.open(tarball) as archive:
        names = set(archive.getnames())
        manifest = json.load(archive.extractfile("package/package.json"))  # type: ignore[arg-type]
    assert {
        "package/dist/src/index.js",
        "package/dist/src/index.d.ts",
        "package/dist/src/gen/rulesidecar/v1/rules_sidecar_pb.js",
        "package/dist/src/gen/rulesidecar/v1/rules_sidecar_pb.d.ts",
    } <= names
    assert not any(name.startswith("package/dist/test/") for name in names)
    assert manifest["exports"]["."] == {
        "types": "./dist/src/index.d.ts",
        "default": "./dist/src/index.js",
    }


def test_the_readme_has_the_typescript_blocks_this_test_runs() -> None:
    assert len(code_blocks(README, "ts")) == len(README_BLOCKS), (
        "clients/typescript/README.md gained or lost a ts block: add it to README_BLOCKS"
    )


def test_the_readme_examples_compile_against_the_shipped_types_and_run(
    scratch: Path, harness: Harness, token_file: Path, node_json: str
) -> None:
    blocks = code_blocks(README, "ts")
    replacements = substitutions(harness, token_file)
    for index, (_, epilogue, _) in enumerate(README_BLOCKS):
        program = PRELUDE + substitute(blocks[index], replacements) + epilogue
        (scratch / f"readme{index}.ts").write_text(program)
    (scratch / "smoke.ts").write_text(
        'import { RulesSidecarClient } from "@rules-sidecar/client";\n'
        "console.log(typeof RulesSidecarClient);\n"
    )
    run([scratch / "node_modules" / ".bin" / "tsc", "-p", "."], scratch)
    installed = scratch / "node_modules" / "@rules-sidecar" / "client"
    assert installed.is_dir()
    assert not installed.is_symlink()  # unpacked from the tarball, not linked to the repository
    assert run(["node", "out/smoke.js"], scratch).strip() == "function"
    for index, (_, _, expected) in enumerate(README_BLOCKS):
        output = run(["node", f"out/readme{index}.js"], scratch, env={"NODE_JSON": node_json})
        expect_lines(output, expected)
