"""Hot reload of the connectors file, without a restart.

Kubernetes delivers a ConfigMap update as an atomic swap of the `..data` symlink of the mounted
directory (`connectors.yaml -> ..data/connectors.yaml`, `..data -> ..2026_01_01_00_00_00.1`); the
file the sidecar was given never changes in place. So the watcher polls: every
`connectors_reload_seconds` it takes one `stat` of the path *through* the links, and the resolved
target, and reloads when that stamp differs. Polling one file once a second costs nothing, sees the
swap on every filesystem and needs no dependency; inotify-based watchers (watchfiles, fsnotify) must
watch the directory and interpret link events, which peers have got wrong more than once
(open-feature/flagd#42, jimmidyson/configmap-reload#190).

A reload goes `stat -> load_connectors_file -> reconcile -> Registry.replace_file_connectors`:

- a connector whose definition is unchanged keeps its version (and its compiled form);
- a changed one gets version + 1; a removed one disappears, and if it comes back its versions
  continue where they stopped, so within a process a version never names two definitions;
- an invalid file changes nothing: the last good set keeps serving, one ERROR line lists the
  problems, and the state says so (`ReloadState.valid`, `last_error`) until a valid file arrives.

The watcher reports every new state to `on_state`; the server turns it into the health status of
`rulesidecar.v1.ConnectorsFile`. Nothing here knows about gRPC.

Usage::

    watcher = ConnectorsFileWatcher(path, registry, initial, bindings=bindings,
                                    interval_seconds=1.0, on_state=report)
    watcher.start()       # polls until stop(); every new ReloadState goes to `report`
    await watcher.stop()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Protocol

from sidecar.core.model import Connector
from sidecar.core.secrets import SecretBindings
from sidecar.errors import ConfigError
from sidecar.registry.connectors_file import OUTPUT_ONLY_FIELDS, load_connectors_file

log = logging.getLogger(__name__)


class FileConnectorSink(Protocol):
    """Where a reloaded set goes: `Registry.replace_file_connectors`."""

    def replace_file_connectors(self, connectors: Iterable[Connector]) -> None: ...


@dataclass(frozen=True, slots=True)
class FileStamp:
    """What identifies one version of the file: where the links lead, and the target's inode."""

    target: str
    device: int
    inode: int
    size: int
    mtime_ns: int
    ctime_ns: int


def file_stamp(path: Path) -> FileStamp | None:
    """The stamp of `path` followed through its symlinks; None if it cannot be reached."""
    try:
        info = os.stat(path)
        target = os.path.realpath(path)
    except OSError:
        return None
    return FileStamp(
        target, info.st_dev, info.st_ino, info.st_size, info.st_mtime_ns, info.st_ctime_ns
    )


@dataclass(frozen=True, slots=True)
class ReloadState:
    """What the sidecar serves from the connectors file, and how the last attempt went.

    `valid` is False from a failed reload until the next successful one; meanwhile the last good
    set (loaded at `last_good_load`) keeps serving. `reloads` and `failures` count attempts after
    startup, one per change of the file.
    """

    path: Path
    valid: bool
    connectors: int
    last_good_load: datetime
    last_error: str | None = None
    last_error_time: datetime | None = None
    reloads: int = 0
    failures: int = 0


@dataclass(frozen=True, slots=True)
class Changes:
    """Which ids a reload added, changed (new version) and removed; sorted."""

    added: tuple[str, ...] = ()
    changed: tuple[str, ...] = ()
    removed: tuple[str, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.added or self.changed or self.removed)

    def describe(self) -> str:
        parts = [
            f"{label} {', '.join(ids)}"
            for label, ids in (
                ("added", self.added),
                ("changed", self.changed),
                ("removed", self.removed),
            )
            if ids
        ]
        return "; ".join(parts) or "no connector changed"


def reconcile(
    current: Mapping[str, Connector],
    loaded: Iterable[Connector],
    retired_versions: Mapping[str, int],
) -> tuple[tuple[Connector, ...], Changes]:
    """Version a freshly loaded set against the one in service.

    `current` is the set in service by id, `retired_versions` the last version of ids that were
    removed earlier. Returns the set to install and what changed.
    """
    result: list[Connector] = []
    added: list[str] = []
    changed: list[str] = []
    for connector in loaded:
        previous = current.get(connector.id)
        if previous is None:
            version = retired_versions.get(connector.id, 0) + 1
            result.append(connector.model_copy(update={"version": version}))
            added.append(connector.id)
        elif same_definition(previous, connector):
            result.append(previous)
        else:
            result.append(connector.model_copy(update={"version": previous.version + 1}))
            changed.append(connector.id)
    kept = {connector.id for connector in result}
    removed = sorted(set(current) - kept)
    return tuple(result), Changes(tuple(sorted(added)), tuple(sorted(changed)), tuple(removed))


def same_definition(left: Connector, right: Connector) -> bool:
    """Equal in everything but the output-only fields (version, update_time, source)."""
    output_only = set(OUTPUT_ONLY_FIELDS)
    return left.model_dump(exclude=output_only) == right.model_dump(exclude=output_only)


StateListener = Callable[[ReloadState], Awaitable[None]]


class ConnectorsFileWatcher:
    """Polls the connectors file and installs each valid new version in the registry.

    `initial` is the set loaded at startup (already in the registry). `check()` runs one poll and
    is what the background task calls every `interval_seconds`; tests call it directly.
    """

    def __init__(
        self,
        path: Path,
        registry: FileConnectorSink,
        initial: Iterable[Connector],
        *,
        bindings: SecretBindings,
        interval_seconds: float,
        on_state: StateListener | None = None,
    ) -> None:
        self._path = path
        self._registry = registry
        self._bindings = bindings
        self._interval = interval_seconds
        self._on_state = on_state
        self._current = {connector.id: connector for connector in initial}
        self._retired: dict[str, int] = {}
        # Not checked yet: the first check reads the file again, so a change made between the
        # startup load and the watcher's start is not missed (unchanged content is a no-op).
        self._checked = False
        self._stamp: FileStamp | None = None
        self._state = ReloadState(
            path=path, valid=True, connectors=len(self._current), last_good_load=_now()
        )
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        """Poll in the background until `stop`."""
        if self._task is None:
            self._task = asyncio.get_running_loop().create_task(
                self._run(), name="connectors-file-watcher"
            )

    async def stop(self) -> None:
        """Stop polling; a reload in progress is abandoned before it changes anything."""
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def check(self) -> ReloadState:
        """Reload if the file changed since the last check; returns the state."""
        stamp = await asyncio.to_thread(file_stamp, self._path)
        if self._checked and stamp == self._stamp:
            return self._state
        first_check, self._checked, self._stamp = not self._checked, True, stamp
        try:
            if stamp is None:
                raise ConfigError(f"cannot read connectors file {self._path}: it is missing")
            loaded = await asyncio.to_thread(
                load_connectors_file, self._path, bindings=self._bindings
            )
        except ConfigError as error:
            self._fail(error)
        else:
            self._install(loaded, counted=not first_check)
        if self._on_state is not None:
            await self._on_state(self._state)
        return self._state

    async def _run(self) -> None:
        if self._on_state is not None:
            await self._on_state(self._state)
        while True:
            try:
                await self.check()
            except Exception:  # a bug must not end hot reload for the life of the pod
                log.exception("checking connectors file %s failed", self._path)
            await asyncio.sleep(self._interval)

    def _install(self, loaded: Iterable[Connector], *, counted: bool) -> None:
        connectors, changes = reconcile(self._current, loaded, self._retired)
        counted = counted or bool(changes)
        was_valid = self._state.valid
        if changes:
            self._registry.replace_file_connectors(connectors)
        for connector_id in changes.removed:
            self._retired[connector_id] = self._current[connector_id].version
        self._current = {connector.id: connector for connector in connectors}
        self._state = replace(
            self._state,
            valid=True,
            connectors=len(connectors),
            last_good_load=_now() if counted else self._state.last_good_load,
            reloads=self._state.reloads + (1 if counted else 0),
        )
        if changes:
            log.info(
                "reloaded connectors file %s: %s (%d connector(s) from the file)",
                self._path,
                changes.describe(),
                len(connectors),
            )
        elif not was_valid:
            log.info("connectors file %s is valid again; no connector changed", self._path)
        else:
            log.debug("connectors file %s changed on disk; no connector changed", self._path)

    def _fail(self, error: ConfigError) -> None:
        details = "; ".join(error.problems) or error.message
        now = _now()
        self._state = replace(
            self._state,
            valid=False,
            last_error=f"{error.message}: {details}" if error.problems else details,
            last_error_time=now,
            failures=self._state.failures + 1,
        )
        log.error(
            "connectors file %s was not reloaded, keeping the last good set (%d connector(s), "
            "loaded %s): %s",
            self._path,
            self._state.connectors,
            self._state.last_good_load.isoformat(timespec="seconds"),
            self._state.last_error,
        )


def _now() -> datetime:
    return datetime.now(UTC)
