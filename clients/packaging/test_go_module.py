"""The Go client as a user gets it today: a scratch module that follows the README's `replace`
recipe to a fresh copy of the module (no public repository serves its path yet), and the
README's examples built there and run against the sidecar."""

from __future__ import annotations

import re
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

README = REPO / "clients" / "go" / "README.md"
MODULE = "github.com/rules-sidecar/rules-sidecar/clients/go"
PROGRAM = """package main

import (
	"context"
	"errors"
	"fmt"
	"log"
	"os"
	"time"

	"google.golang.org/grpc/codes"
	"google.golang.org/grpc/status"
	"google.golang.org/protobuf/encoding/protojson"

	rulesidecar "github.com/rules-sidecar/rules-sidecar/clients/go"
	"github.com/rules-sidecar/rules-sidecar/clients/go/rulesidecarv1"
)

// The imports a README block may use; a block that uses fewer still compiles.
var (
	_ = errors.As
	_ = fmt.Println
	_ = time.Second
	_ = codes.OK
	_ = status.Code
	_ = rulesidecar.New
)

func main() {
	node := &rulesidecarv1.Node{}
	if err := protojson.Unmarshal([]byte(os.Getenv("NODE_JSON")), node); err != nil {
		log.Fatal(err)
	}
	if err := readme(context.Background(), node); err != nil {
		log.Fatal(err)
	}
}

func readme(ctx context.Context, node *rulesidecarv1.Node) error {
	_ = node
BLOCK
EPILOGUE
	return nil
}
"""
NOT_FOUND_CHECK = """
	if err != nil {
		return err
	}
	defer sidecar.Close()
	_, err = sidecar.GetConnector(ctx, "doc-test-missing")
	fmt.Println("reached", status.Code(err))
"""
# Every Go block of the README, in order: what runs after it, what it must print.
README_BLOCKS = [
    ("evaluate a node", "", "OUTCOME_MATCHED 0 show-status shipped"),
    ("tokens and TLS", NOT_FOUND_CHECK, "reached NotFound"),
]


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """../rules-sidecar (the module's tracked files, as a clone has them) and ./app, a new module
    whose go.mod the README's recipe edits, with one program per README block."""
    root = tmp_path_factory.mktemp("go")
    tracked_copy(REPO / "clients" / "go", root / "rules-sidecar" / "clients" / "go")
    app = root / "app"
    app.mkdir()
    run(["go", "mod", "init", "example.com/scratch"], app)
    for index, (_, epilogue, _) in enumerate(README_BLOCKS):
        program = app / "cmd" / f"readme{index}" / "main.go"
        program.parent.mkdir(parents=True)
        block = code_blocks(README, "go")[index]
        program.write_text(PROGRAM.replace("BLOCK", block).replace("EPILOGUE", epilogue))
    recipe = recipe_commands()
    run(["bash", "-euo", "pipefail", "-c", recipe], app)
    return app


def recipe_commands() -> str:
    """The README's install block without its `git clone` line (the copy stands in for it)."""
    (install,) = [b for b in code_blocks(README, "bash") if "go mod edit" in b]
    lines = [line for line in install.splitlines() if not line.startswith("git clone")]
    return "\n".join(lines)


def test_the_readme_recipe_makes_the_module_resolve_to_the_clone(scratch: Path) -> None:
    go_mod = (scratch / "go.mod").read_text()
    assert f"replace {MODULE} => ../rules-sidecar/clients/go" in go_mod
    assert re.search(rf"^\s*(require )?{re.escape(MODULE)} v0\.0\.0$", go_mod, re.MULTILINE)
    listed = run(["go", "list", "-m", "-f", "{{.Replace.Dir}}", MODULE], scratch).strip()
    assert Path(listed) == scratch.parent / "rules-sidecar" / "clients" / "go"


def test_the_readme_has_the_go_blocks_this_test_runs() -> None:
    assert len(code_blocks(README, "go")) == len(README_BLOCKS), (
        "clients/go/README.md gained or lost a go block: add it to README_BLOCKS"
    )


def test_the_readme_examples_build_in_the_scratch_module_and_run(
    scratch: Path, harness: Harness, token_file: Path, node_json: str
) -> None:
    replacements = substitutions(harness, token_file)
    for index in range(len(README_BLOCKS)):
        program = scratch / "cmd" / f"readme{index}" / "main.go"
        program.write_text(substitute(program.read_text(), replacements))
    run(["go", "vet", "./..."], scratch)
    for index, (_, _, expected) in enumerate(README_BLOCKS):
        output = run(["go", "run", f"./cmd/readme{index}"], scratch, env={"NODE_JSON": node_json})
        expect_lines(output, expected)
