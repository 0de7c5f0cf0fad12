"""scripts/version: one version (pyproject.toml) stamped everywhere, and a check that sees drift.

The check runs on a copy of the files it reads, so a test can change a copy without touching the
repository; the control proves the check notices a changed chart appVersion.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "version"
PLACES = re.findall(
    r'^\s+(?:Place\()?"([\w./-]+\.(?:toml|json|xml|md|yaml))"', SCRIPT.read_text(), re.M
)


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """The script and every file it reads, in the same layout under tmp_path."""
    for relative in {"scripts/version", "pyproject.toml", *PLACES}:
        target = tmp_path / relative
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ROOT / relative, target)
    return tmp_path


def run(root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(root / "scripts" / "version"), *args],
        capture_output=True,
        text=True,
        check=False,
    )


def test_every_copy_of_the_version_equals_pyproject() -> None:
    version = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]
    result = run(ROOT, "check")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"version {version} everywhere ({len(PLACES)} places)"


def test_a_drifted_chart_version_fails_the_check_naming_the_line(copy: Path) -> None:
    chart = copy / "deploy/helm/rules-sidecar/Chart.yaml"
    chart.write_text(re.sub(r'(?m)^appVersion: ".*"$', 'appVersion: "9.9.9"', chart.read_text()))
    result = run(copy, "check")
    assert result.returncode == 1
    assert re.search(r"deploy/helm/rules-sidecar/Chart.yaml:\d+: 9.9.9 \(want ", result.stderr)


def test_set_stamps_every_place_and_the_check_passes_again(copy: Path) -> None:
    assert run(copy, "set", "1.2.3").returncode == 0
    assert run(copy, "check").returncode == 0
    assert run(copy).stdout.strip() == "1.2.3"
    for relative in PLACES:
        assert "1.2.3" in (copy / relative).read_text(), relative


def test_a_place_that_no_longer_matches_is_reported_not_skipped(copy: Path) -> None:
    pom = copy / "clients/java/pom.xml"
    pom.write_text(pom.read_text().replace("<artifactId>rules-sidecar-client</artifactId>", "", 1))
    result = run(copy, "check")
    assert result.returncode == 1
    assert "clients/java/pom.xml: expected 1 match(es)" in result.stderr
