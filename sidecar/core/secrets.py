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
        self._env_prefix = env_prefix
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

    def searched(self, name: str) -> str:
        """Where `resolve` looked for `name`: the file and variables to create when it is missing
        (names only, never a value).

        >>> store = SecretStore(directory=Path("/etc/secrets"), environ={},
        ...                     env_prefix="RULES_SECRET_")
        >>> print(store.searched("store-api.key"))  # doctest: +NORMALIZE_WHITESPACE
        looked for the file /etc/secrets/store-api.key (secrets_dir) and the environment
        variables RULES_SECRET_store-api.key, RULES_SECRET_STORE_API_KEY
        """
        variables = dict.fromkeys(
            (f"{self._env_prefix}{name}", f"{self._env_prefix}{_env_spelling(name)}")
        )
        environment = f"the environment variables {', '.join(variables)}"
        if len(variables) == 1:
            environment = f"the environment variable {next(iter(variables))}"
        if self._directory is None:
            return f"looked for {environment} (no secrets_dir is set)"
        if not _is_plain_name(name):
            return f"looked for {environment} (not a file name, so not in secrets_dir)"
        return f"looked for the file {self._directory / name} (secrets_dir) and {environment}"

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

    Every secret a connector uses must be bound: a connector whose URL host a secret's binding
    does not match, or that uses a secret with no binding at all, is refused by the registry
    (RegisterConnector, the connectors file, `rules-sidecar validate`), and the engine refuses to
    send if the bindings changed since. Without the rule, whoever may register a connector could
    point any secret the sidecar holds at a host of their choosing. `allow_unbound` (the
    `allow_unbound_secrets` setting, for development) restores the old leniency: an unbound
    secret goes only to the URL host of the connector that uses it.

    >>> bindings = SecretBindings({"store_api_key": ["api.store.com"]})
    >>> bindings.violations(("store_api_key",), "evil.example")
    ["secret 'store_api_key' may only be sent to api.store.com, not to 'evil.example'"]
    >>> bindings.violations(("crm_token",), "crm.example.com")  # doctest: +NORMALIZE_WHITESPACE
    ["secret 'crm_token' is bound to no host: add it to the secret_hosts setting,
      e.g. secret_hosts: {crm_token: [crm.example.com]}"]
    """

    def __init__(
        self, bindings: Mapping[str, Sequence[str]], *, allow_unbound: bool = False
    ) -> None:
        self._bindings = {name: tuple(hosts) for name, hosts in bindings.items()}
        self._allow_unbound = allow_unbound

    def violations(self, secret_names: Sequence[str], host: str) -> list[str]:
        """One message per secret that may not be sent to `host`, naming the fix."""
        problems = []
        for name in secret_names:
            hosts = self._bindings.get(name)
            if hosts is None:
                if not self._allow_unbound:
                    problems.append(
                        f"secret {name!r} is bound to no host: add it to the secret_hosts "
                        f"setting, e.g. secret_hosts: {{{name}: [{host or 'api.example.com'}]}}"
                    )
            elif not host_matches(host, hosts):
                problems.append(
                    f"secret {name!r} may only be sent to {', '.join(hosts)}, not to {host!r}"
                )
        return problems
