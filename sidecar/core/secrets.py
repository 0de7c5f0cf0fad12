"""Secrets: resolved by name at send time, never stored with connectors, never returned.

Two sources, in order: a directory with one file per secret (the layout of a mounted Kubernetes
Secret, whose files are symlinks into `..data/`), then environment variables with a fixed prefix.
Files are re-read when they change (Kubernetes rotates a Secret by swapping the `..data` link), so a
rotated key is used without a restart; an unchanged file costs one `stat`.

    >>> store = SecretStore(directory=None, environ={"RULES_SECRET_STORE_API_KEY": "k"},
    ...                     env_prefix="RULES_SECRET_")
    >>> store.resolve("store_api_key")
    'k'
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from sidecar.core.hosts import host_matches
from sidecar.core.watched_file import WatchedFile


class SecretStore:
    """Looks secrets up by name; `resolve` returns None when a secret is nowhere to be found."""

    def __init__(
        self, *, directory: Path | None, environ: Mapping[str, str], env_prefix: str
    ) -> None:
        self._directory = directory
        self._env = {
            key[len(env_prefix) :]: value
            for key, value in environ.items()
            if key.startswith(env_prefix) and len(key) > len(env_prefix)
        }
        self._files: dict[str, WatchedFile] = {}

    def resolve(self, name: str) -> str | None:
        """The secret's value, from its file or its environment variable; None if absent."""
        if self._directory is not None and _is_plain_name(name):
            value = self._read_file(self._directory / name)
            if value is not None:
                return value
        return self._env.get(name) or self._env.get(_env_spelling(name))

    def _read_file(self, path: Path) -> str | None:
        watched = self._files.get(path.name)
        if watched is None:
            watched = self._files[path.name] = WatchedFile(path)
        try:
            return watched.read().decode("utf-8").rstrip("\r\n")
        except (OSError, UnicodeDecodeError):
            return None


def _is_plain_name(name: str) -> bool:
    """A file name inside the directory: no separators, no dot-files (`..data` is Kubernetes')."""
    return bool(name) and "/" not in name and "\\" not in name and not name.startswith(".")


def _env_spelling(name: str) -> str:
    """`store-api.key` -> `STORE_API_KEY`, the spelling environment variables allow."""
    return name.upper().replace("-", "_").replace(".", "_")


class SecretBindings:
    """Which hosts each secret may be sent to (operator-declared `secret_hosts`).

    A bound secret can only be carried by a connector whose URL host matches the binding: the
    registry refuses such a connector, and the engine refuses to send if the binding changed
    since. An unbound secret goes only to the URL host of the connector that uses it (redirects
    drop credentials when they leave that origin).

    >>> SecretBindings({"store_api_key": ["api.store.com"]}).violations(
    ...     ("store_api_key",), "evil.example")
    ["secret 'store_api_key' may only be sent to api.store.com, not to 'evil.example'"]
    """

    def __init__(self, bindings: Mapping[str, Sequence[str]]) -> None:
        self._bindings = {name: tuple(hosts) for name, hosts in bindings.items()}

    def violations(self, secret_names: Sequence[str], host: str) -> list[str]:
        """One message per secret that may not be sent to `host`."""
        problems = []
        for name in secret_names:
            hosts = self._bindings.get(name)
            if hosts is not None and not host_matches(host, hosts):
                problems.append(
                    f"secret {name!r} may only be sent to {', '.join(hosts)}, not to {host!r}"
                )
        return problems
