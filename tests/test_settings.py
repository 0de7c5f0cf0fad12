"""Settings: defaults, environment, YAML config file, overrides, and which one wins."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import yaml
from pydantic import ValidationError

from sidecar.errors import ConfigError
from sidecar.settings import CONFIG_FILE_VARIABLE, ENV_PREFIX, Settings


@pytest.fixture(autouse=True)
def clean_environment(monkeypatch):
    """No RULES_SIDECAR_* variable of the machine running the tests may leak in."""
    for name in list(os.environ):
        if name.upper().startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


def config_file(tmp_path: Path, content: object, name: str = "sidecar.yaml") -> Path:
    path = tmp_path / name
    path.write_text(content if isinstance(content, str) else yaml.safe_dump(content))
    return path


def test_defaults_are_the_embedded_loopback_setup():
    settings = Settings.load()

    assert settings.listen_address == "127.0.0.1:50051"
    assert settings.data_dir == Path(".rules-sidecar")
    assert settings.store_path == Path(".rules-sidecar") / "connectors.sqlite3"
    assert settings.unix_socket is None
    assert settings.connectors_file is None
    assert settings.secrets_dir is None
    assert settings.secret_env_prefix == "RULES_SECRET_"
    assert settings.max_message_bytes == 4 * 1024 * 1024
    assert settings.shutdown_grace_seconds == 10.0
    assert settings.store_busy_timeout_seconds == 5.0
    assert settings.log_level == "INFO"


def test_defaults_are_secure_health_shares_the_api_port_and_nothing_is_allowed_unprotected():
    settings = Settings.load()

    assert settings.health_listen_address is None  # a process by hand opens only loopback
    assert settings.allow_unprotected_api is False
    assert settings.allow_unbound_secrets is False
    assert settings.secret_hosts == {}


@pytest.mark.parametrize(
    ("variable", "value", "field", "expected"),
    [
        ("RULES_SIDECAR_LISTEN_ADDRESS", "0.0.0.0:6000", "listen_address", "0.0.0.0:6000"),
        (
            "RULES_SIDECAR_UNIX_SOCKET",
            "/run/sidecar.sock",
            "unix_socket",
            Path("/run/sidecar.sock"),
        ),
        ("RULES_SIDECAR_DATA_DIR", "/var/lib/sidecar", "data_dir", Path("/var/lib/sidecar")),
        ("RULES_SIDECAR_CONNECTORS_FILE", "/etc/c.yaml", "connectors_file", Path("/etc/c.yaml")),
        ("RULES_SIDECAR_SECRETS_DIR", "/etc/secrets", "secrets_dir", Path("/etc/secrets")),
        ("RULES_SIDECAR_SECRET_ENV_PREFIX", "MY_SECRET_", "secret_env_prefix", "MY_SECRET_"),
        ("RULES_SIDECAR_MAX_MESSAGE_BYTES", "2048", "max_message_bytes", 2048),
        ("RULES_SIDECAR_SHUTDOWN_GRACE_SECONDS", "2.5", "shutdown_grace_seconds", 2.5),
        ("RULES_SIDECAR_STORE_BUSY_TIMEOUT_SECONDS", "0.5", "store_busy_timeout_seconds", 0.5),
        ("RULES_SIDECAR_LOG_LEVEL", "DEBUG", "log_level", "DEBUG"),
        (
            "RULES_SIDECAR_HEALTH_LISTEN_ADDRESS",
            "0.0.0.0:50052",
            "health_listen_address",
            "0.0.0.0:50052",
        ),
        ("RULES_SIDECAR_ALLOW_UNPROTECTED_API", "true", "allow_unprotected_api", True),
        ("RULES_SIDECAR_ALLOW_UNBOUND_SECRETS", "true", "allow_unbound_secrets", True),
    ],
)
def test_environment_variable_overrides_the_default(monkeypatch, variable, value, field, expected):
    monkeypatch.setenv(variable, value)

    assert getattr(Settings.load(), field) == expected


def test_data_dir_from_the_environment_moves_the_store(monkeypatch):
    monkeypatch.setenv("RULES_SIDECAR_DATA_DIR", "/data")

    assert Settings.load().store_path == Path("/data/connectors.sqlite3")


def test_secret_variables_do_not_count_as_unknown_settings(monkeypatch):
    monkeypatch.setenv("RULES_SECRET_STORE_API_KEY", "k")
    monkeypatch.setenv("RULES_SECRET_CRM__TOKEN", "t")

    assert Settings.load().listen_address == "127.0.0.1:50051"


def test_secret_variables_are_those_with_the_secret_prefix(monkeypatch):
    monkeypatch.setenv("RULES_SECRET_STORE_API_KEY", "k")
    monkeypatch.setenv("MY_SECRET_OTHER", "o")
    monkeypatch.setenv("RULES_SIDECAR_LOG_LEVEL", "INFO")

    assert Settings.load().secret_variables() == {"RULES_SECRET_STORE_API_KEY": "k"}
    assert Settings.load(overrides={"secret_env_prefix": "MY_SECRET_"}).secret_variables() == {
        "MY_SECRET_OTHER": "o"
    }


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_yaml_config_file_sets_fields(tmp_path, monkeypatch, how):
    path = config_file(
        tmp_path,
        {"listen_address": "127.0.0.1:7000", "data_dir": "/srv/data", "shutdown_grace_seconds": 1},
    )
    if how == "environment":
        monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(path))
        settings = Settings.load()
    else:
        settings = Settings.load(config_file=path)

    assert settings.listen_address == "127.0.0.1:7000"
    assert settings.data_dir == Path("/srv/data")
    assert settings.shutdown_grace_seconds == 1.0
    assert settings.log_level == "INFO"  # not in the file: the default


def test_config_file_argument_wins_over_the_environment_variable(tmp_path, monkeypatch):
    chosen = config_file(tmp_path, {"listen_address": "127.0.0.1:1111"}, "chosen.yaml")
    ignored = config_file(tmp_path, {"listen_address": "127.0.0.1:2222"}, "ignored.yaml")
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(ignored))

    assert Settings.load(config_file=chosen).listen_address == "127.0.0.1:1111"


def test_empty_config_file_variable_means_no_file(monkeypatch):
    monkeypatch.setenv(CONFIG_FILE_VARIABLE, "")

    assert Settings.load().listen_address == "127.0.0.1:50051"


@pytest.mark.parametrize(
    ("sources", "winner"),
    [
        ((), "127.0.0.1:50051"),
        (("file",), "file:1"),
        (("env",), "env:2"),
        (("override",), "override:3"),
        (("file", "env"), "env:2"),
        (("file", "override"), "override:3"),
        (("env", "override"), "override:3"),
        (("file", "env", "override"), "override:3"),
    ],
)
def test_overrides_beat_environment_beat_file_beat_defaults(tmp_path, monkeypatch, sources, winner):
    path = None
    if "file" in sources:
        path = config_file(tmp_path, {"listen_address": "file:1"})
    if "env" in sources:
        monkeypatch.setenv("RULES_SIDECAR_LISTEN_ADDRESS", "env:2")
    overrides = {"listen_address": "override:3"} if "override" in sources else None

    settings = Settings.load(config_file=path, overrides=overrides)

    assert settings.listen_address == winner


def test_sources_combine_field_by_field(tmp_path, monkeypatch):
    path = config_file(tmp_path, {"listen_address": "file:1", "log_level": "WARNING"})
    monkeypatch.setenv("RULES_SIDECAR_DATA_DIR", "/env")

    settings = Settings.load(config_file=path, overrides={"max_message_bytes": 4096})

    assert (settings.listen_address, settings.log_level) == ("file:1", "WARNING")
    assert settings.data_dir == Path("/env")
    assert settings.max_message_bytes == 4096


def test_unknown_key_in_the_config_file_is_a_config_error(tmp_path):
    path = config_file(tmp_path, {"listen_adress": "typo:1", "log_level": "INFO"})

    with pytest.raises(ConfigError) as caught:
        Settings.load(config_file=path)

    assert caught.value.message == "invalid settings"
    assert caught.value.problems == (
        "listen_adress: Extra inputs are not permitted (got 'typo:1')",
    )


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("RULES_SIDECAR_MAX_MESSAGE_BYTES", "lots", "max_message_bytes"),
        ("RULES_SIDECAR_MAX_MESSAGE_BYTES", "100", "max_message_bytes"),
        ("RULES_SIDECAR_SHUTDOWN_GRACE_SECONDS", "-1", "shutdown_grace_seconds"),
        ("RULES_SIDECAR_STORE_BUSY_TIMEOUT_SECONDS", "0", "store_busy_timeout_seconds"),
        ("RULES_SIDECAR_EVALUATION_LOG_EVERY", "-1", "evaluation_log_every"),
    ],
)
def test_invalid_environment_value_is_a_config_error_naming_the_field(
    monkeypatch, variable, value, field
):
    monkeypatch.setenv(variable, value)

    with pytest.raises(ConfigError) as caught:
        Settings.load()

    (problem,) = caught.value.problems
    assert problem.startswith(f"{field}: ")


@pytest.mark.parametrize("with_config_file", [False, True], ids=["alone", "with-config-file"])
def test_environment_value_that_is_not_json_for_a_mapping_is_a_config_error_naming_it(
    tmp_path, monkeypatch, with_config_file
):
    monkeypatch.setenv("RULES_SIDECAR_SECRET_HOSTS", "[not json")
    chosen = config_file(tmp_path, {"log_level": "INFO"}) if with_config_file else None

    with pytest.raises(ConfigError) as caught:
        Settings.load(config_file=chosen)

    assert caught.value.message == "invalid settings"
    (problem,) = caught.value.problems
    assert '"secret_hosts"' in problem
    assert "JSON" in problem


def test_every_invalid_setting_is_listed(tmp_path):
    path = config_file(tmp_path, {"max_message_bytes": 1, "bogus": True})

    with pytest.raises(ConfigError) as caught:
        Settings.load(config_file=path, overrides={"shutdown_grace_seconds": -5})

    assert sorted(p.split(":")[0] for p in caught.value.problems) == [
        "bogus",
        "max_message_bytes",
        "shutdown_grace_seconds",
    ]


@pytest.mark.parametrize("how", ["argument", "environment"])
def test_missing_config_file_is_a_config_error_naming_it(tmp_path, monkeypatch, how):
    path = tmp_path / "absent.yaml"
    if how == "environment":
        monkeypatch.setenv(CONFIG_FILE_VARIABLE, str(path))

    with pytest.raises(ConfigError, match="does not exist or is not a file") as caught:
        Settings.load(config_file=path if how == "argument" else None)

    assert str(path) in caught.value.message


def test_config_file_that_is_a_directory_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="does not exist or is not a file"):
        Settings.load(config_file=tmp_path)


def test_config_file_with_a_yaml_syntax_error_is_a_config_error(tmp_path):
    path = config_file(tmp_path, "listen_address: [127.0.0.1\n")

    with pytest.raises(ConfigError):
        Settings.load(config_file=path)


def test_config_file_that_is_not_a_mapping_is_a_config_error(tmp_path):
    path = config_file(tmp_path, "- listen_address\n- log_level\n")

    with pytest.raises(ConfigError):
        Settings.load(config_file=path)


def test_settings_are_immutable():
    settings = Settings.load()

    with pytest.raises(ValidationError, match="frozen"):
        settings.listen_address = "0.0.0.0:1"  # type: ignore[misc]


def test_misspelt_environment_variable_is_a_config_error_naming_it(monkeypatch):
    monkeypatch.setenv("RULES_SIDECAR_LISTEN_ADRESS", "127.0.0.1:1")

    with pytest.raises(ConfigError) as caught:
        Settings.load()

    (problem,) = caught.value.problems
    assert problem.startswith("RULES_SIDECAR_LISTEN_ADRESS: not a setting")
    assert "RULES_SIDECAR_LISTEN_ADDRESS" in problem


def test_secret_variables_are_never_read_as_settings(monkeypatch):
    monkeypatch.setenv("RULES_SECRET_ENV_PREFIX", "a-secret-value")

    settings = Settings.load()

    assert settings.secret_env_prefix == "RULES_SECRET_"
    assert settings.secret_variables() == {"RULES_SECRET_ENV_PREFIX": "a-secret-value"}
