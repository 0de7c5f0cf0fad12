"""Secrets by name: a mounted directory first, then prefixed environment variables; rotation."""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path

import pytest

from sidecar.core.secrets import SecretStore

PREFIX = "RULES_SECRET_"


def store(directory: Path | None, environ: Mapping[str, str] | None = None) -> SecretStore:
    return SecretStore(directory=directory, environ=environ or {}, env_prefix=PREFIX)


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    return directory


@pytest.mark.parametrize(
    ("content", "value"),
    [
        ("s3cr3t\n", "s3cr3t"),
        ("s3cr3t\r\n", "s3cr3t"),
        ("s3cr3t\n\n", "s3cr3t"),
        ("s3cr3t", "s3cr3t"),
        ("  spaced value  \n", "  spaced value  "),
        ("line one\nline two\n", "line one\nline two"),
    ],
)
def test_file_secret_is_read_without_its_trailing_newline(secrets_dir, content, value):
    (secrets_dir / "store_api_key").write_text(content)

    assert store(secrets_dir).resolve("store_api_key") == value


@pytest.mark.parametrize(
    ("variable", "name"),
    [
        ("RULES_SECRET_store_api_key", "store_api_key"),
        ("RULES_SECRET_STORE_API_KEY", "store_api_key"),
        ("RULES_SECRET_STORE_API_KEY", "store-api.key"),
        ("RULES_SECRET_STORE_API_KEY", "STORE_API_KEY"),
        ("RULES_SECRET_crm.token", "crm.token"),
    ],
)
def test_environment_secret_by_exact_name_or_upper_case_spelling(variable, name):
    assert store(None, {variable: "from-env"}).resolve(name) == "from-env"


def test_exact_environment_name_wins_over_the_upper_case_spelling():
    environ = {f"{PREFIX}token": "exact", f"{PREFIX}TOKEN": "upper"}

    assert store(None, environ).resolve("token") == "exact"


def test_file_wins_over_environment(secrets_dir):
    (secrets_dir / "token").write_text("from-file\n")

    resolved = store(secrets_dir, {f"{PREFIX}token": "exact", f"{PREFIX}TOKEN": "upper"})

    assert resolved.resolve("token") == "from-file"


def test_environment_is_used_when_the_directory_lacks_the_file(secrets_dir):
    assert store(secrets_dir, {f"{PREFIX}TOKEN": "from-env"}).resolve("token") == "from-env"


@pytest.mark.parametrize(
    "environ",
    [
        {},
        {"TOKEN": "no prefix"},
        {"OTHER_PREFIX_TOKEN": "other prefix"},
        {f"{PREFIX}TOKENS": "another name"},
    ],
    ids=["empty", "no-prefix", "other-prefix", "other-name"],
)
def test_missing_secret_is_none(secrets_dir, environ):
    assert store(secrets_dir, environ).resolve("token") is None


def test_bare_prefix_is_not_a_secret():
    assert store(None, {PREFIX: "value"}).resolve("") is None


@pytest.mark.parametrize(
    "name", ["../outside", ".hidden", "sub/inner", "..", ".", "", "..data", "sub\\inner"]
)
def test_names_that_are_not_plain_file_names_never_read_a_file(tmp_path, secrets_dir, name):
    (tmp_path / "outside").write_text("outside the secrets directory")
    (secrets_dir / ".hidden").write_text("a dot-file")
    (secrets_dir / "sub").mkdir()
    (secrets_dir / "sub" / "inner").write_text("in a subdirectory")
    (secrets_dir / "..data").mkdir()
    (secrets_dir / "sub\\inner").write_text("a backslash in the name")

    assert store(secrets_dir).resolve(name) is None


def test_a_directory_is_not_a_secret(secrets_dir):
    (secrets_dir / "token").mkdir()

    assert store(secrets_dir).resolve("token") is None


def test_unreadable_text_falls_back_to_the_environment(secrets_dir):
    (secrets_dir / "token").write_bytes(b"\xff\xfe not utf-8")

    assert store(secrets_dir, {f"{PREFIX}TOKEN": "from-env"}).resolve("token") == "from-env"


def test_secrets_directory_that_does_not_exist_finds_nothing(tmp_path):
    assert store(tmp_path / "absent").resolve("token") is None


# ---------------------------------------------------------------------------------------------
# Rotation
# ---------------------------------------------------------------------------------------------


def replace_file(path: Path, content: str) -> None:
    """Replace a file atomically, as a deployment tool would."""
    staged = path.with_name(f".{path.name}.new")
    staged.write_text(content)
    os.replace(staged, path)


def test_replaced_file_is_read_again(secrets_dir):
    secrets = store(secrets_dir)
    (secrets_dir / "token").write_text("old-key\n")
    assert secrets.resolve("token") == "old-key"

    replace_file(secrets_dir / "token", "new-key\n")  # same size: only the file identity changes

    assert secrets.resolve("token") == "new-key"


def test_removed_file_falls_back_to_the_environment(secrets_dir):
    secrets = store(secrets_dir, {f"{PREFIX}TOKEN": "from-env"})
    (secrets_dir / "token").write_text("from-file\n")
    assert secrets.resolve("token") == "from-file"

    (secrets_dir / "token").unlink()

    assert secrets.resolve("token") == "from-env"


def test_unchanged_file_keeps_answering_the_same_value(secrets_dir):
    secrets = store(secrets_dir)
    (secrets_dir / "token").write_text("same\n")

    assert [secrets.resolve("token") for _ in range(3)] == ["same"] * 3


def mount_kubernetes_secret(directory: Path, data_dir_name: str, values: dict[str, str]) -> None:
    """Lay out (or rotate) a mounted Kubernetes Secret the way the kubelet does.

    directory/..2026_x/<key>     the files of one revision
    directory/..data -> ..2026_x  swapped atomically (rename of a new symlink) on rotation
    directory/<key> -> ..data/<key>
    """
    revision = directory / data_dir_name
    revision.mkdir()
    for key, value in values.items():
        (revision / key).write_text(value)
    staged = directory / "..data_tmp"
    staged.symlink_to(data_dir_name)
    os.replace(staged, directory / "..data")
    for key in values:
        link = directory / key
        if not link.is_symlink():
            link.symlink_to(Path("..data") / key)


def test_kubernetes_secret_rotation_by_swapping_the_data_link_is_seen(secrets_dir):
    mount_kubernetes_secret(secrets_dir, "..2026_01_01", {"store_api_key": "key-one\n"})
    secrets = store(secrets_dir)
    assert secrets.resolve("store_api_key") == "key-one"

    mount_kubernetes_secret(secrets_dir, "..2026_02_01", {"store_api_key": "key-two\n"})

    assert secrets.resolve("store_api_key") == "key-two"
    assert os.readlink(secrets_dir / "..data") == "..2026_02_01"


def test_kubernetes_layout_hides_its_internal_entries(secrets_dir):
    mount_kubernetes_secret(secrets_dir, "..2026_01_01", {"token": "t\n"})
    secrets = store(secrets_dir)

    assert secrets.resolve("..data") is None
    assert secrets.resolve("..2026_01_01") is None
    assert secrets.resolve("token") == "t"


@pytest.mark.parametrize(
    ("directory", "name", "expected"),
    [
        (
            "secrets",
            "store_api_key",
            "looked for the file {dir}/store_api_key (secrets_dir) and the environment variables "
            "RULES_SECRET_store_api_key, RULES_SECRET_STORE_API_KEY",
        ),
        (
            "secrets",
            "STORE_KEY",
            "looked for the file {dir}/STORE_KEY (secrets_dir) and the environment variable "
            "RULES_SECRET_STORE_KEY",
        ),
        (
            None,
            "crm.token",
            "looked for the environment variables RULES_SECRET_crm.token, RULES_SECRET_CRM_TOKEN "
            "(no secrets_dir is set)",
        ),
        (
            "secrets",
            ".hidden",
            "looked for the environment variables RULES_SECRET_.hidden, "
            "RULES_SECRET__HIDDEN (not a file name, so not in secrets_dir)",
        ),
    ],
)
def test_searched_names_the_file_and_the_variables_to_create(tmp_path, directory, name, expected):
    path = tmp_path / directory if directory else None

    searched = store(path).searched(name)

    assert searched == expected.format(dir=path)


def test_searched_never_carries_a_value(secrets_dir):
    (secrets_dir / "token").write_text("from-file-value\n")
    environ = {f"{PREFIX}token": "from-env-value"}

    searched = store(secrets_dir, environ).searched("token")

    assert "value" not in searched
    assert str(secrets_dir / "token") in searched
