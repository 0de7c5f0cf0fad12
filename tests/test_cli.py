"""The `rules-sidecar` command, run as a real subprocess: help, validate, and serve's failures.

Whatever goes wrong, the user gets a message and an exit code, never a Python traceback.
"""

from __future__ import annotations

import asyncio
import importlib.metadata
import logging
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from sidecar import cli
from sidecar.settings import Settings

pytestmark = pytest.mark.process  # every test runs `rules-sidecar` as a subprocess

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = Path("examples") / "connectors.yaml"
EXAMPLE_SETTINGS = Path("examples") / "sidecar.yaml"
DEADLINE_SECONDS = 60  # a hang is a failure, not a wait


def run_cli(
    *arguments: str | Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    environment = {
        name: value
        for name, value in os.environ.items()
        if not name.upper().startswith("RULES_SIDECAR_")
    }
    environment.update(env or {})
    result = subprocess.run(
        [sys.executable, "-m", "sidecar.cli", *map(str, arguments)],
        cwd=REPO_ROOT,
        env=environment,
        capture_output=True,
        text=True,
        timeout=DEADLINE_SECONDS,
        check=False,
    )
    assert "Traceback" not in result.stdout + result.stderr, result.stderr
    return result


# ---------------------------------------------------------------------------------------------
# Help
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "mentions"),
    [
        (["--help"], ["serve", "validate", "settings", "--version", "rules-sidecar"]),
        (
            ["serve", "--help"],
            [
                "--config",
                "--listen",
                "--unix-socket",
                "--data-dir",
                "--connectors-file",
                "--secrets-dir",
                "--log-level",
                "RULES_SIDECAR_LISTEN_ADDRESS",
                "`rules-sidecar settings`",
            ],
        ),
        (["validate", "--help"], ["file", "file:line", "Exit code 0 when valid, 1 when not"]),
        (["settings", "--help"], ["default", "environment variable"]),
    ],
    ids=["main", "serve", "validate", "settings"],
)
def test_help_exits_zero_and_names_the_options(arguments, mentions):
    result = run_cli(*arguments)

    assert result.returncode == 0
    for mention in mentions:
        assert mention in result.stdout


def test_version_is_the_installed_packages_which_is_pyprojects():
    result = run_cli("--version")

    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    assert result.returncode == 0
    assert result.stdout == f"rules-sidecar {importlib.metadata.version('rules-sidecar')}\n"
    assert result.stdout == f"rules-sidecar {pyproject['project']['version']}\n"


def settings_blocks(text: str) -> dict[str, list[str]]:
    """`rules-sidecar settings` output as {setting name: its lines}, the header skipped."""
    blocks: dict[str, list[str]] = {}
    for block in text.split("\n\n")[1:]:
        lines = block.strip("\n").splitlines()
        if lines:
            blocks[lines[0].split()[0]] = lines
    return blocks


def test_settings_prints_every_setting_with_its_default_variable_and_description():
    result = run_cli("settings")

    assert result.returncode == 0, result.stderr
    blocks = settings_blocks(result.stdout)
    assert list(blocks) == list(Settings.model_fields)
    for name, field in Settings.model_fields.items():
        head, variable, *description = blocks[name]
        default = field.get_default(call_default_factory=True)
        shown = "unset by default" if default is None else "default "
        assert shown in head, head
        assert variable.split()[:2] == ["env:", f"RULES_SIDECAR_{name.upper()}"]
        assert " ".join(" ".join(description).split()) == " ".join(field.description.split())


@pytest.mark.parametrize(
    ("name", "head", "variable"),
    [
        (
            "listen_address",
            "listen_address  (string; default 127.0.0.1:50051)",
            "    env: RULES_SIDECAR_LISTEN_ADDRESS   flag: serve --listen",
        ),
        (
            "reflection",
            "reflection  (boolean; default true)",
            "    env: RULES_SIDECAR_REFLECTION",
        ),
        (
            "max_connection_age_seconds",
            "max_connection_age_seconds  (number; unset by default)",
            "    env: RULES_SIDECAR_MAX_CONNECTION_AGE_SECONDS",
        ),
        (
            "egress_allow_cidrs",
            "egress_allow_cidrs  (list of string; default [])",
            "    env: RULES_SIDECAR_EGRESS_ALLOW_CIDRS",
        ),
        (
            "log_format",
            "log_format  (one of json, text; default json)",
            "    env: RULES_SIDECAR_LOG_FORMAT   flag: serve --log-format",
        ),
    ],
)
def test_settings_shows_types_defaults_and_flags_as_written_in_yaml(name, head, variable):
    blocks = settings_blocks(run_cli("settings").stdout)

    assert blocks[name][:2] == [head, variable]


def test_settings_into_a_closed_pipe_exits_quietly():
    command = [sys.executable, "-m", "sidecar.cli", "settings"]
    with subprocess.Popen(
        command, cwd=REPO_ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE
    ) as process:
        assert process.stdout is not None
        assert process.stderr is not None
        process.stdout.read(10)
        process.stdout.close()
        stderr = process.stderr.read().decode()
        assert process.wait(DEADLINE_SECONDS) == 0
    assert "Traceback" not in stderr
    assert "BrokenPipeError" not in stderr


def test_no_command_is_a_usage_error():
    result = run_cli()

    assert result.returncode == 2
    assert "usage: rules-sidecar" in result.stderr


# ---------------------------------------------------------------------------------------------
# validate
# ---------------------------------------------------------------------------------------------


def test_validate_example_file_prints_ok_and_the_count():
    declared = yaml.safe_load((REPO_ROOT / EXAMPLE).read_text())["connectors"]

    result = run_cli("validate", EXAMPLE, "--config", EXAMPLE_SETTINGS)

    assert result.returncode == 0
    assert result.stdout.strip() == f"{EXAMPLE}: OK, {len(declared)} connector(s)"


BAD_FILE = """\
connectors:
  - id: Bad Id
    status: LIVE
    url_template: https://{{host}}/x
  - id: ok
    status: SOMETIMES
    url_template: https://a.example/x
    headers:
      Cookie: session=1
"""


def test_validate_bad_file_exits_one_and_lists_every_problem_with_its_line(tmp_path):
    path = tmp_path / "connectors.yaml"
    path.write_text(BAD_FILE)

    result = run_cli("validate", path)

    assert result.returncode == 1
    assert result.stdout == ""
    problems = [line.strip() for line in result.stderr.splitlines() if line.startswith("  ")]
    assert [problem.split(": ")[0:2] for problem in problems] == [
        [f"{path}:2", "connectors[0].id"],
        [f"{path}:4", "connectors[0].url_template"],
        [f"{path}:6", "connectors[1].status"],
        [f"{path}:9", 'connectors[1].headers["Cookie"]'],
    ]
    assert f"rules-sidecar: error: {path}: 4 problem(s)" in result.stderr


def test_validate_valid_json_file(tmp_path):
    path = tmp_path / "connectors.json"
    path.write_text(
        '{"connectors": [{"id": "a", "status": "LIVE", "url_template": "https://a.example/x"}]}'
    )

    result = run_cli("validate", path)

    assert (result.returncode, result.stdout.strip()) == (0, f"{path}: OK, 1 connector(s)")


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (None, "cannot read connectors file"),
        ("connectors:\n  - id: a\n    status: [LIVE\n", "not valid YAML/JSON"),
        ("items: []\n", "must be a mapping with a `connectors` list"),
    ],
    ids=["missing", "syntax-error", "no-connectors"],
)
def test_validate_unusable_file_exits_one_with_a_message(tmp_path, content, message):
    path = tmp_path / "connectors.yaml"
    if content is not None:
        path.write_text(content)

    result = run_cli("validate", path)

    assert result.returncode == 1
    assert message in result.stderr
    assert str(path) in result.stderr


BOUND_SECRET_FILE = """\
connectors:
  - id: order-status
    status: LIVE
    url_template: https://api.store.com/orders/{{order_number}}
    auth:
      bearer: {token_secret: store_token}
"""
SECRET_ELSEWHERE = (
    "connectors[0].auth: connector 'order-status': secret 'store_token' may only be sent to "
    "api.payments.example, not to 'api.store.com' (the secret_hosts setting)"
)


@pytest.mark.parametrize("source", ["config-file", "environment"])
def test_validate_applies_secret_hosts_as_serve_would(tmp_path, source):
    path = tmp_path / "connectors.yaml"
    path.write_text(BOUND_SECRET_FILE)
    config = tmp_path / "sidecar.yaml"
    config.write_text("secret_hosts:\n  store_token: [api.payments.example]\n")
    if source == "config-file":
        result = run_cli("validate", path, "--config", config)
    else:
        hosts = '{"store_token": ["api.payments.example"]}'
        result = run_cli("validate", path, env={"RULES_SIDECAR_SECRET_HOSTS": hosts})

    assert result.returncode == 1
    assert f"  {path}:6: {SECRET_ELSEWHERE}\n" in result.stderr


def test_validate_refuses_a_secret_bound_to_no_host_naming_the_setting(tmp_path):
    path = tmp_path / "connectors.yaml"
    path.write_text(BOUND_SECRET_FILE)

    refused = run_cli("validate", path)
    allowed = run_cli("validate", path, env={"RULES_SIDECAR_ALLOW_UNBOUND_SECRETS": "true"})

    assert refused.returncode == 1
    assert (
        f"  {path}:6: connectors[0].auth: connector 'order-status': secret 'store_token' is "
        "bound to no host: add it to the secret_hosts setting, e.g. secret_hosts: "
        "{store_token: [api.store.com]}"
    ) in refused.stderr
    assert (allowed.returncode, allowed.stdout.strip()) == (0, f"{path}: OK, 1 connector(s)")


def test_validate_accepts_a_secret_sent_to_its_bound_host(tmp_path):
    path = tmp_path / "connectors.yaml"
    path.write_text(BOUND_SECRET_FILE)

    result = run_cli(
        "validate", path, env={"RULES_SIDECAR_SECRET_HOSTS": '{"store_token": ["*.store.com"]}'}
    )

    assert (result.returncode, result.stdout.strip()) == (0, f"{path}: OK, 1 connector(s)")


def test_validate_with_invalid_settings_exits_two_naming_them(tmp_path):
    path = tmp_path / "connectors.yaml"
    path.write_text(BOUND_SECRET_FILE)

    result = run_cli("validate", path, env={"RULES_SIDECAR_SECRET_HOSTS": "[not a mapping"})

    assert result.returncode == 2
    assert "rules-sidecar: error: invalid settings" in result.stderr
    assert "secret_hosts" in result.stderr


# ---------------------------------------------------------------------------------------------
# serve: configuration failures end with exit code 2 and a message
# ---------------------------------------------------------------------------------------------


def test_serve_with_a_missing_config_file_exits_two(tmp_path):
    path = tmp_path / "absent.yaml"

    result = run_cli("serve", "--config", path)

    assert result.returncode == 2
    assert f"rules-sidecar: error: config file {path} does not exist" in result.stderr


def test_serve_with_an_unknown_config_key_exits_two_naming_it(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("listen: 127.0.0.1:0\n")

    result = run_cli("serve", "--config", path)

    assert result.returncode == 2
    assert "invalid settings" in result.stderr
    assert "listen: Extra inputs are not permitted" in result.stderr


def test_serve_with_a_corrupt_store_exits_two_saying_so(tmp_path):
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    (data_dir / "connectors.sqlite3").write_bytes(b"not a database" * 200)

    result = run_cli("serve", "--listen", "127.0.0.1:0", "--data-dir", data_dir)

    assert result.returncode == 2
    assert "not a readable SQLite database" in result.stderr


def test_serve_with_an_invalid_connectors_file_exits_two_listing_the_problems(tmp_path):
    path = tmp_path / "connectors.yaml"
    path.write_text(BAD_FILE)

    result = run_cli(
        "serve",
        "--listen",
        "127.0.0.1:0",
        "--data-dir",
        tmp_path / "data",
        "--connectors-file",
        path,
    )

    assert result.returncode == 2
    assert f"{path}:9: connectors[1].headers" in result.stderr


def test_serve_with_a_malformed_config_file_exits_two_without_a_traceback(tmp_path):
    path = tmp_path / "sidecar.yaml"
    path.write_text("listen_address: [127.0.0.1\n")

    result = run_cli("serve", "--config", path, "--data-dir", tmp_path / "data")

    assert result.returncode == 2
    assert str(path) in result.stderr


def test_serve_with_an_unknown_log_level_exits_two_without_a_traceback(tmp_path):
    result = run_cli(
        "serve", "--log-level", "LOUD", "--listen", "127.0.0.1:0", "--data-dir", tmp_path / "data"
    )

    assert result.returncode == 2
    assert "LOUD" in result.stderr


names: list[str] = []


async def running_loop_name() -> int:
    """Record the module of the loop it runs on (uvloop's or asyncio's); 0, as serve returns."""
    names.append(type(asyncio.get_running_loop()).__module__)
    return 0


@pytest.mark.parametrize(
    ("event_loop", "module"), [("uvloop", "uvloop"), ("asyncio", "asyncio.unix_events")]
)
def test_serve_runs_on_the_chosen_event_loop(event_loop: str, module: str) -> None:
    names.clear()

    assert cli._run(running_loop_name(), event_loop) == 0

    assert names == [module]


def test_a_missing_uvloop_falls_back_to_asyncio_with_a_warning(
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setitem(sys.modules, "uvloop", None)  # import uvloop now raises ImportError
    names.clear()

    with caplog.at_level(logging.WARNING, logger="sidecar.cli"):
        assert cli._run(running_loop_name(), "uvloop") == 0

    assert names == ["asyncio.unix_events"]
    assert "uvloop is not installed" in caplog.text
