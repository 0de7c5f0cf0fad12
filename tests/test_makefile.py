"""Every make target sets up what it needs, so a fresh clone can run any single one.

A target needs setup when its recipe, or a script it runs, uses something scripts/bootstrap makes
(.venv, proto/node_modules, .tools); it must then run scripts/bootstrap itself, in the recipe or
in that script. A planted target that skips its setup is the control.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
MAKEFILE = REPO / "Makefile"
MADE_BY_SETUP = ("$(VENV)", ".venv/", "$(BUF)", "node_modules/", ".tools/")
# A command line that runs it (not a message that mentions it).
RUNS_SETUP = re.compile(r"^\s*@?scripts/bootstrap\b", re.MULTILINE)


def recipes(makefile: str) -> dict[str, str]:
    """Target name -> its recipe lines, with the text of every scripts/* it runs appended."""
    found: dict[str, list[str]] = {}
    current: list[str] | None = None
    for line in makefile.splitlines():
        rule = re.match(r"^([a-z][a-z-]*):", line)
        if rule:
            current = found.setdefault(rule.group(1), [])
        elif line.startswith("\t") and current is not None:
            current.append(line.strip())
        elif line.strip() and not line.startswith("#"):
            current = None
    expanded: dict[str, str] = {}
    for target, lines in found.items():
        text = list(lines)
        for line in lines:
            for script in re.findall(r"\bscripts/[a-z-]+", line):
                path = REPO / script
                if path.is_file() and script != "scripts/bootstrap":
                    text.append(path.read_text())
        expanded[target] = "\n".join(text)
    return expanded


def without_setup(makefile: str) -> list[str]:
    """Targets that use what setup makes but never run scripts/bootstrap."""
    return sorted(
        target
        for target, text in recipes(makefile).items()
        if any(made in text for made in MADE_BY_SETUP) and not RUNS_SETUP.search(text)
    )


def test_every_target_runs_the_setup_it_needs() -> None:
    makefile = MAKEFILE.read_text()

    assert {"proto-lint", "lint", "typecheck", "pytest", "check-generated"} <= set(
        recipes(makefile)
    )
    assert without_setup(makefile) == []


@pytest.mark.parametrize(
    "planted",
    [
        "planted-proto-lint: ## lint\n\tcd proto && node_modules/.bin/buf lint\n",
        "planted-lint: ## lint\n\t$(VENV)/ruff check .\n",
        "planted-generate: ## generate\n\tscripts/generate\n",
    ],
)
def test_the_check_sees_a_target_that_skips_its_setup(planted: str) -> None:
    makefile = MAKEFILE.read_text() + "\n" + planted

    assert without_setup(makefile) == [planted.split(":")[0]]
