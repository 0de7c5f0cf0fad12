"""The embedded connector store: SQLite with durable commits.

Durability is the point: once RegisterConnector has answered OK, the connector survives a crash or
`kill -9` that follows. WAL mode with `synchronous=FULL` fsyncs the log on every commit. An
unreadable or corrupt store stops startup with a clear error instead of starting empty, because
starting empty would silently lose every registration.

Versions only grow: deleting a connector leaves a tombstone with its last version, so a connector
re-created under the same id never reuses a (id, version) pair that a cache may still hold.

A new store is told from a damaged one. The store file is created whole (built under a temporary
name, then renamed into place) with a marker table (`store_meta`), and every write also counts a
generation there and in a marker file beside it (`<store>.marker`, replaced atomically after the
commit). At open, a file with no tables (0 bytes), a lost marker or connectors table (dropped), or a
generation below the marker file's (a lost write-ahead log, a stale copy) is damage: the sidecar
stops (exit 2) naming the path and what to do, instead of starting with fewer connectors. A store
written before markers existed (tables but no marker anywhere) is adopted as it is.

What cannot be told, by design of the check: a stale store from the latest one when the marker
file went with it. Writes since SQLite's last checkpoint (at a clean close, and every ~1,000
pages) live only in `<store>-wal`, so after a crash the latest writes are there until the next
open folds them in. Losing the -wal is detected only against the marker file's count; losing the
-wal and the marker file together, or restoring an older copy of the store (with its marker, or
without one), leaves an older store that is whole by every check here: it is opened, and the
marker rewritten from it. No check of the store file alone can do better, since a stale copy is
a consistent database (its later writes left traces only in the files that were lost); keeping
the three files on one volume and backing them up together is the operator's part, and a fleet
that must never go back in time uses PostgreSQL (`sidecar/registry/postgres.py`).

One process owns a store at a time (an advisory lock on `<data_dir>/lock`); two sidecars sharing
one file would each keep a stale in-memory view of the other's writes. That single owner is also
what makes `save` and `remove` atomic here: inside the process they hold one lock from the version
check to the commit (a fleet shares PostgreSQL instead, `sidecar/registry/postgres.py`).
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO

from sidecar.core.model import Connector
from sidecar.errors import NotFoundError, StoreError
from sidecar.registry.backend import check_expected_version, parse_definition

SCHEMA_VERSION = 1
_SCHEMA = (
    "CREATE TABLE IF NOT EXISTS connectors ("
    " id TEXT PRIMARY KEY, version INTEGER NOT NULL, definition TEXT NOT NULL)",
    "CREATE TABLE IF NOT EXISTS tombstones (id TEXT PRIMARY KEY, version INTEGER NOT NULL)",
    # The marker: present from creation on; `generation` counts the writes ever committed.
    "CREATE TABLE IF NOT EXISTS store_meta (key TEXT PRIMARY KEY, value INTEGER NOT NULL)",
    "INSERT OR IGNORE INTO store_meta (key, value) VALUES ('generation', 0)",
)
_DATA_TABLES = frozenset({"connectors", "tombstones"})
_NEXT_GENERATION = (
    "UPDATE store_meta SET value = value + 1 WHERE key = 'generation' RETURNING value"
)


class ConnectorStore:
    """Durable storage of API-registered connectors (a `Store`). Calls block: run them off the
    event loop."""

    def __init__(self, path: Path, *, busy_timeout_seconds: float = 5.0) -> None:
        self.path = path
        self.marker_path = path.with_name(path.name + ".marker")
        self._write_lock = threading.Lock()
        self._lock_file = _acquire_lock(path.parent / "lock")
        try:
            if not path.exists():
                self._create()
            self._db = sqlite3.connect(
                path, timeout=busy_timeout_seconds, isolation_level=None, check_same_thread=False
            )
            version = self._db.execute("PRAGMA user_version").fetchone()[0]
            if version > SCHEMA_VERSION:
                raise StoreError(
                    f"store {path} was written by a newer rules-sidecar (schema {version}); "
                    "upgrade this sidecar or point data_dir elsewhere"
                )
            self._check_intact()  # before anything writes to the file
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA synchronous=FULL")
            with self._transaction():
                for statement in _SCHEMA:  # not executescript: it would commit mid-transaction
                    self._db.execute(statement)
                self._db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            self._check_generation()
            check = self._db.execute("PRAGMA quick_check").fetchone()[0]
            if check != "ok":
                raise StoreError(f"store {path} is corrupt ({check}); restore a backup")
        except sqlite3.DatabaseError as exc:
            self._close_quietly()
            raise StoreError(
                f"cannot open the connector store {path}: {exc}. It is not a readable SQLite "
                "database; restore a backup, or move it aside to start with an empty store"
            ) from exc
        except StoreError:
            self._close_quietly()
            raise

    def _create(self) -> None:
        """A new store file, made whole under a temporary name and renamed into place, so a
        crash while creating leaves no empty store file that would later look damaged."""
        if self.marker_path.exists():
            raise self._damaged(
                "the store file is missing, but its marker file says it held connectors"
            )
        building = self.path.with_name(self.path.name + ".creating")
        building.unlink(missing_ok=True)
        with contextlib.closing(sqlite3.connect(building, isolation_level=None)) as db:
            db.execute("PRAGMA journal_mode=WAL")
            db.execute("BEGIN IMMEDIATE")
            for statement in _SCHEMA:
                db.execute(statement)
            db.execute(f"PRAGMA user_version = {SCHEMA_VERSION}")
            db.execute("COMMIT")
        # Closing the last connection checkpointed the WAL into the file: fsync it, rename it.
        _fsync(building)
        os.replace(building, self.path)
        _fsync(self.path.parent)
        self._write_marker(0)

    def _check_intact(self) -> None:
        """Refuse a store file whose tables or marker are gone (see the module docstring)."""
        tables = {
            row[0]
            for row in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")
        }
        if not tables:
            raise self._damaged("it holds no tables (an empty or truncated file)")
        missing = sorted(_DATA_TABLES - tables)
        if missing:
            raise self._damaged(f"its table(s) {', '.join(missing)} are gone")
        if "store_meta" not in tables and self.marker_path.exists():
            raise self._damaged("its marker table store_meta is gone")
        # No marker table and no marker file: written before markers existed; adopted.

    def _check_generation(self) -> None:
        """Refuse a store that has fewer writes than its marker file counted."""
        generation = self._generation()
        counted = self._read_marker()
        if counted is not None and generation < counted:
            raise self._damaged(
                f"it holds {generation} write(s) but its marker counted {counted}: committed "
                f"writes are lost (its write-ahead log {self.path.name}-wal missing, or an "
                "older copy of the file)"
            )
        if counted != generation:
            self._write_marker(generation)

    def _generation(self) -> int:
        row = self._db.execute("SELECT value FROM store_meta WHERE key = 'generation'").fetchone()
        return int(row[0]) if row else 0

    def _read_marker(self) -> int | None:
        try:
            text = self.marker_path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise StoreError(f"cannot read the store marker {self.marker_path}: {exc}") from exc
        try:
            return int(json.loads(text)["generation"])
        except (ValueError, KeyError, TypeError) as exc:
            raise self._damaged(f"its marker file {self.marker_path} is unreadable") from exc

    def _write_marker(self, generation: int) -> None:
        """Replace the marker file atomically, durably (a torn marker would look like damage)."""
        temporary = self.marker_path.with_name(self.marker_path.name + ".tmp")
        try:
            with open(temporary, "w", encoding="utf-8") as marker:
                marker.write(json.dumps({"generation": generation}) + "\n")
                marker.flush()
                os.fsync(marker.fileno())
            os.replace(temporary, self.marker_path)
        except OSError as exc:
            raise StoreError(f"cannot write the store marker {self.marker_path}: {exc}") from exc

    def _damaged(self, what: str) -> StoreError:
        return StoreError(
            f"the connector store {self.path} is damaged: {what}. Starting would silently lose "
            f"connectors, so the sidecar stops. Restore {self.path.name} (with its -wal file) "
            f"from a backup; or, to start with an empty store on purpose, move {self.path} and "
            f"{self.marker_path} aside"
        )

    def load_all(self) -> list[Connector]:
        """Every stored connector; StoreError naming the row if one cannot be read."""
        connectors = []
        try:
            rows = self._db.execute("SELECT id, definition FROM connectors ORDER BY id").fetchall()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the connector store {self.path}: {exc}") from exc
        for connector_id, definition in rows:
            connectors.append(parse_definition(connector_id, definition, str(self.path)))
        return connectors

    def get(self, connector_id: str) -> Connector | None:
        """The stored connector with this id, or None."""
        try:
            row = self._db.execute(
                "SELECT definition FROM connectors WHERE id = ?", (connector_id,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the connector store {self.path}: {exc}") from exc
        return parse_definition(connector_id, row[0], str(self.path)) if row else None

    def save(self, connector: Connector, *, expected_version: int | None) -> tuple[Connector, bool]:
        """Create or replace, at the next version of the id (after its tombstone, if deleted)."""
        with self._write_lock:
            try:
                current = self._version_of(connector.id)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot write connector {connector.id!r}: {exc}") from exc
            check_expected_version(connector.id, expected_version, current)
            base = current or self.tombstone_version(connector.id)
            stored = connector.model_copy(update={"version": base + 1})
            self.put(stored)
            return stored, current == 0

    def remove(self, connector_id: str, *, expected_version: int | None) -> int:
        """Delete the connector, leaving its tombstone; returns the version deleted."""
        with self._write_lock:
            try:
                current = self._version_of(connector_id)
            except sqlite3.DatabaseError as exc:
                raise StoreError(f"cannot delete connector {connector_id!r}: {exc}") from exc
            if current == 0:
                raise NotFoundError(
                    f"no connector with id {connector_id!r}",
                    metadata={"connector_id": connector_id},
                )
            check_expected_version(connector_id, expected_version, current)
            self.delete(connector_id, current)
            return current

    def tombstone_version(self, connector_id: str) -> int:
        """The last version of a deleted connector, or 0."""
        try:
            row = self._db.execute(
                "SELECT version FROM tombstones WHERE id = ?", (connector_id,)
            ).fetchone()
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot read the connector store {self.path}: {exc}") from exc
        return int(row[0]) if row else 0

    def put(self, connector: Connector) -> None:
        """Insert or replace one connector; returns only once the commit is durable."""
        definition = connector.model_dump_json(exclude_none=True)
        try:
            with self._transaction():
                self._db.execute(
                    "INSERT INTO connectors (id, version, definition) VALUES (?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET version = excluded.version, "
                    "definition = excluded.definition",
                    (connector.id, connector.version, definition),
                )
                self._db.execute("DELETE FROM tombstones WHERE id = ?", (connector.id,))
                generation = self._db.execute(_NEXT_GENERATION).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot write connector {connector.id!r}: {exc}") from exc
        self._write_marker(generation)

    def delete(self, connector_id: str, version: int) -> None:
        """Remove one connector, leaving a tombstone with its last version."""
        try:
            with self._transaction():
                self._db.execute("DELETE FROM connectors WHERE id = ?", (connector_id,))
                self._db.execute(
                    "INSERT OR REPLACE INTO tombstones (id, version) VALUES (?, ?)",
                    (connector_id, version),
                )
                generation = self._db.execute(_NEXT_GENERATION).fetchone()[0]
        except sqlite3.DatabaseError as exc:
            raise StoreError(f"cannot delete connector {connector_id!r}: {exc}") from exc
        self._write_marker(generation)

    def _version_of(self, connector_id: str) -> int:
        """The stored version of this id, 0 when it is not stored (sqlite3 errors pass)."""
        row = self._db.execute(
            "SELECT version FROM connectors WHERE id = ?", (connector_id,)
        ).fetchone()
        return int(row[0]) if row else 0

    def close(self) -> None:
        """Close the database and release the store lock."""
        self._db.close()
        self._release_lock()

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[None]:
        self._db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self._db.execute("ROLLBACK")
            raise
        self._db.execute("COMMIT")

    def _close_quietly(self) -> None:
        db = getattr(self, "_db", None)
        if db is not None:
            db.close()
        self._release_lock()

    def _release_lock(self) -> None:
        if not self._lock_file.closed:
            self._lock_file.close()


def _fsync(path: Path) -> None:
    """Flush a file's (or a directory's entries') writes to disk."""
    descriptor = os.open(path, os.O_RDONLY)
    try:
        os.fsync(descriptor)
    finally:
        os.close(descriptor)


def _acquire_lock(path: Path) -> IO[bytes]:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        lock_file = open(path, "ab")  # noqa: SIM115 (held for the store's lifetime)
    except OSError as exc:
        raise StoreError(f"cannot create the data directory {path.parent}: {exc}") from exc
    try:
        fcntl.flock(lock_file.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        lock_file.close()
        raise StoreError(
            f"another rules-sidecar process is using the store in {path.parent} (it holds "
            f"the lock {path}); give each sidecar its own data_dir"
        ) from exc
    os.set_inheritable(lock_file.fileno(), False)
    return lock_file
