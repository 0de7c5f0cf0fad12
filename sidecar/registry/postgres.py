"""The fleet's connector store: one PostgreSQL database shared by every replica (`store_url`).

The database is the one authority for versions. Each write is one transaction that first locks
the id's row in `rules_sidecar_versions` (its high-water mark, created on the id's first write
and kept after a delete), then checks `expected_version` against the stored connector, writes,
raises the mark and announces the change. Writers racing on one id, from any replica, queue on
that row lock: exactly one meets the version it expected, the others get VersionConflictError.
Versions never repeat because the mark outlives the connector.

Every change is announced with `pg_notify(NOTIFY_CHANNEL, '{"id": ..., "version": ...}')` in
the writing transaction, so it is heard only once committed; a replica that hears it re-reads
the row (`get`). The payload is small on purpose: the row stays the truth. `changes()` is that
feed for one replica: LISTEN on a connection of its own, a full resync after every (re)connect
and every `resync_seconds` (a notification missed while disconnected heals), reconnecting with
backoff when the database goes away.

The schema is versioned (`MIGRATIONS`) and brought up to date at open, inside one transaction
holding `pg_advisory_xact_lock(MIGRATION_LOCK)`: ten replicas starting at once apply each
migration exactly once, the others wait and find it done. A database whose schema is newer than
this binary is refused, as a rolled-back deployment must not write rows it does not understand.

Every psycopg and OS error becomes a StoreError naming the database (host:port/dbname, never the
password) and what to do, `from exc`. Each call first checks its connection (an empty query)
and replaces one a restarted server has cut, so the first write after an outage does not fail
on a dead socket; TCP keepalives and tcp_user_timeout make a vanished server fail a call within
seconds instead of hanging it, statement_timeout a server that answers too slowly. An error that
means "cannot reach it now" (refused, timed out, cut, starting up) is a StoreUnreachableError:
the sidecar retries its startup on it, while a refusal (password, database) stays fatal. The
password never appears in the URL: it is passed apart.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import socket
import threading
from collections.abc import AsyncGenerator, Awaitable, Callable, Iterator
from typing import Any

import psycopg
from psycopg import conninfo, errors
from psycopg.rows import TupleRow

from sidecar.core.model import Connector
from sidecar.errors import NotFoundError, StoreError
from sidecar.registry.backend import (
    Backoff,
    StoreUnreachableError,
    check_expected_version,
    parse_definition,
)

SCHEMA_VERSION = 1
MIGRATIONS: tuple[tuple[int, tuple[str, ...]], ...] = (
    (
        1,
        (
            "CREATE TABLE rules_sidecar_connectors ("
            " id text PRIMARY KEY, version bigint NOT NULL, definition text NOT NULL)",
            # The last version each id ever had: kept after a delete, so versions never repeat.
            "CREATE TABLE rules_sidecar_versions (id text PRIMARY KEY, version bigint NOT NULL)",
        ),
    ),
)
log = logging.getLogger(__name__)

# The tables each schema version has; a schema row without them is damage, not a new database.
TABLES = ("rules_sidecar_connectors", "rules_sidecar_versions")

MIGRATION_LOCK = 0x5253_4D49  # any constant; every replica takes the same one ("RSMI")
NOTIFY_CHANNEL = "rules_sidecar_connectors"
# Server refusals that end by themselves (a restart, a failover, a full server): retried. Any other
# FATAL answer at connect (password, database, role, pg_hba) is a configuration to fix.
_PASSING_REFUSALS = (
    "the database system is starting up",
    "the database system is shutting down",
    "the database system is in recovery mode",
    "the database system is not yet accepting connections",
    "too many clients",
    "remaining connection slots are reserved",
)
# Connection-level SQLSTATEs: the connection is gone or the server cannot take it now.
_UNREACHABLE_STATES = ("57P01", "57P02", "57P03", "53300")


class PostgresStore:
    """API-registered connectors in a shared PostgreSQL database (a `Store`). Calls block.

    Usage::

        store = PostgresStore("postgresql://sidecar@db:5432/rules", password=password)
        stored, created = store.save(connector, expected_version=None)
    """

    def __init__(
        self,
        url: str,
        *,
        password: str | None,
        connect_timeout_seconds: float = 5.0,
        lock_timeout_seconds: float = 5.0,
        statement_timeout_seconds: float = 5.0,
    ) -> None:
        try:
            parts = conninfo.conninfo_to_dict(url)
        except psycopg.ProgrammingError as exc:
            raise StoreError(
                "store_url is not a PostgreSQL URL; write postgresql://user@host:port/dbname"
            ) from exc
        if "password" in parts:
            raise StoreError(
                "store_url carries a password; remove it and give it through "
                "store_password_file or RULES_SIDECAR_STORE_PASSWORD"
            )
        self.where = (
            f"PostgreSQL {parts.get('host', 'localhost')}:{parts.get('port', 5432)}"
            f"/{parts.get('dbname', parts.get('user', ''))}"
        )
        self._url = url
        self._password = password
        self._connect_timeout = max(1, round(connect_timeout_seconds))
        self._lock_timeout_ms = round(lock_timeout_seconds * 1000)
        self._statement_timeout_ms = round(statement_timeout_seconds * 1000)
        self._call_deadline = self._connect_timeout + statement_timeout_seconds
        self._lock = threading.Lock()  # one connection, used by one thread at a time
        self._conn: psycopg.Connection[TupleRow] | None = None
        with self._lock:
            self._migrate()

    def __repr__(self) -> str:
        return f"PostgresStore({self.where})"

    def load_all(self) -> list[Connector]:
        """Every stored connector, in id order."""
        with self._session("read the connectors") as conn:
            rows = conn.execute(
                "SELECT id, definition FROM rules_sidecar_connectors ORDER BY id"
            ).fetchall()
        return [parse_definition(i, d, self.where) for i, d in rows]

    def get(self, connector_id: str) -> Connector | None:
        """The stored connector with this id, or None."""
        with self._session(f"read connector {connector_id!r}") as conn:
            row = conn.execute(
                "SELECT definition FROM rules_sidecar_connectors WHERE id = %s", (connector_id,)
            ).fetchone()
        return parse_definition(connector_id, row[0], self.where) if row else None

    def save(self, connector: Connector, *, expected_version: int | None) -> tuple[Connector, bool]:
        """Create or replace at the id's next version: check and write in one transaction."""
        with self._session(f"write connector {connector.id!r}") as conn, conn.transaction():
            conn.execute(
                "INSERT INTO rules_sidecar_versions (id, version) VALUES (%s, 0) "
                "ON CONFLICT (id) DO NOTHING",
                (connector.id,),
            )
            high_water = self._lock_id(conn, connector.id)
            current = self._version_of(conn, connector.id)
            check_expected_version(connector.id, expected_version, current)
            stored = connector.model_copy(update={"version": high_water + 1})
            conn.execute(
                "INSERT INTO rules_sidecar_connectors (id, version, definition) "
                "VALUES (%s, %s, %s) ON CONFLICT (id) DO UPDATE "
                "SET version = excluded.version, definition = excluded.definition",
                (stored.id, stored.version, stored.model_dump_json(exclude_none=True)),
            )
            conn.execute(
                "UPDATE rules_sidecar_versions SET version = %s WHERE id = %s",
                (stored.version, stored.id),
            )
            _announce(conn, stored.id, stored.version)
        return stored, current == 0

    def remove(self, connector_id: str, *, expected_version: int | None) -> int:
        """Delete; the high-water mark stays, so the id's next version continues after it."""
        with self._session(f"delete connector {connector_id!r}") as conn, conn.transaction():
            self._lock_id(conn, connector_id)
            current = self._version_of(conn, connector_id)
            if current == 0:
                raise NotFoundError(
                    f"no connector with id {connector_id!r}",
                    metadata={"connector_id": connector_id},
                )
            check_expected_version(connector_id, expected_version, current)
            conn.execute("DELETE FROM rules_sidecar_connectors WHERE id = %s", (connector_id,))
            _announce(conn, connector_id, current)
        return current

    async def changes(
        self,
        *,
        resync_seconds: float,
        retry_seconds: float = 0.5,
        max_retry_seconds: float = 10.0,
        on_connection: Callable[[bool], Awaitable[None]] | None = None,
    ) -> AsyncGenerator[str | None, None]:
        """The change feed, forever: an id (re-read that connector) or None (re-read all).

        None comes first on every (re)connect, once LISTEN is in place (so no change falls
        between the resync and the notifications), then every `resync_seconds`.
        `on_connection(True)` is awaited once LISTEN is in place, `on_connection(False)` when
        the feed's connection is lost or cannot be made (the replica's store health).
        """
        backoff = Backoff(retry_seconds, max_retry_seconds)
        while True:
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self._url,
                    password=self._password,
                    autocommit=True,
                    application_name="rules-sidecar-feed",
                    **self._connection_limits(),
                )
            except psycopg.Error as exc:
                await self._feed_down(
                    "cannot listen for connector changes in", exc, backoff, on_connection
                )
                continue
            try:
                async with conn:
                    await conn.execute(f"LISTEN {NOTIFY_CHANNEL}".encode())
                    backoff.reset()
                    if on_connection is not None:
                        await on_connection(True)
                    while True:
                        yield None
                        async for note in conn.notifies(timeout=resync_seconds):
                            yield _changed_id(note.payload)
            except psycopg.Error as exc:
                await self._feed_down(
                    "lost the connector change feed from", exc, backoff, on_connection
                )

    async def _feed_down(
        self,
        what: str,
        exc: psycopg.Error,
        backoff: Backoff,
        on_connection: Callable[[bool], Awaitable[None]] | None,
    ) -> None:
        """The feed could not be made or was lost: say so, report the store down, wait."""
        delay = backoff.next()
        log.warning("%s %s: %s; retrying in %.1fs", what, self.where, _reason(exc), delay)
        if on_connection is not None:
            await on_connection(False)
        await asyncio.sleep(delay)

    def close(self) -> None:
        """Close the connection (a later call would open a new one)."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

    @contextlib.contextmanager
    def _session(self, doing: str) -> Iterator[psycopg.Connection[TupleRow]]:
        """The open connection, for one call; every psycopg error becomes a StoreError.

        The call has a deadline of its own (connect_timeout + statement_timeout): a server that
        keeps the socket open but never answers (a hung or stopped backend; the kernel still
        acknowledges, so neither keepalives nor statement_timeout fire) has its socket shut
        down by a timer, and the blocked call fails instead of hanging the registry's writer.
        """
        with self._lock:
            cut = threading.Event()
            watchdog = threading.Timer(self._call_deadline, self._cut_connection, (cut,))
            watchdog.daemon = True
            watchdog.start()
            try:
                yield self._connection()
            except errors.LockNotAvailable as exc:
                raise StoreError(
                    f"cannot {doing} in {self.where}: another writer held it for longer than "
                    f"{self._lock_timeout_ms} ms; retry"
                ) from exc
            except errors.QueryCanceled as exc:
                raise StoreUnreachableError(
                    f"cannot {doing} in {self.where}: the database did not answer within "
                    f"{self._statement_timeout_ms} ms (store_statement_timeout_seconds); read the "
                    "connector again and retry"
                ) from exc
            except psycopg.Error as exc:
                if self._conn is not None and (self._conn.broken or self._conn.closed):
                    self._conn = None  # the next call connects again
                if cut.is_set():
                    self._conn = None
                    raise StoreUnreachableError(
                        f"cannot {doing} in {self.where}: the database did not answer within "
                        f"{self._call_deadline:g} s (store_connect_timeout_seconds + "
                        "store_statement_timeout_seconds); read the connector again and retry"
                    ) from exc
                kind = StoreUnreachableError if is_unreachable(exc) else StoreError
                raise kind(
                    f"cannot {doing} in {self.where}: {_reason(exc)}; check that the database "
                    "is up and reachable, then read the connector again and retry"
                ) from exc
            finally:
                watchdog.cancel()

    def _cut_connection(self, cut: threading.Event) -> None:
        """The watchdog: shut the socket of a call past its deadline down (on the timer's
        thread, without the lock: the call holding it is the one stuck). Fired late, after the
        call ended, it only makes the next call's check reconnect."""
        conn = self._conn
        if conn is None or conn.closed:
            return
        cut.set()
        with contextlib.suppress(OSError, psycopg.Error):
            sock = socket.socket(fileno=os.dup(conn.fileno()))
            try:
                sock.shutdown(socket.SHUT_RDWR)
            finally:
                sock.close()

    def _connection(self) -> psycopg.Connection[TupleRow]:
        """The connection, checked first with an empty query (psycopg_pool's check): one cut
        by a restarted server is replaced here, before a write starts, not in its middle."""
        conn = self._conn
        if conn is not None and not conn.closed and not conn.broken:
            try:
                conn.execute(b"")
                return conn
            except psycopg.Error:
                conn.close()
        self._conn = None
        self._conn = self._connect()
        return self._conn

    def _connect(self) -> psycopg.Connection[TupleRow]:
        return psycopg.connect(
            self._url,
            password=self._password,
            autocommit=True,  # transactions are explicit: `with conn.transaction()`
            application_name="rules-sidecar",
            options=(
                f"-c lock_timeout={self._lock_timeout_ms} "
                f"-c statement_timeout={self._statement_timeout_ms}"
            ),
            **self._connection_limits(),
        )

    def _connection_limits(self) -> dict[str, Any]:
        """connect_timeout, and TCP keepalives and tcp_user_timeout: a database that vanishes
        without closing the socket fails a call (or the change feed) in seconds, not never."""
        return {
            "connect_timeout": self._connect_timeout,
            "keepalives": 1,
            "keepalives_idle": self._connect_timeout,
            "keepalives_interval": 1,
            "keepalives_count": 3,
            "tcp_user_timeout": self._connect_timeout * 1000,
        }

    def _migrate(self) -> None:
        """Bring the schema to SCHEMA_VERSION, under the advisory lock; refuse a newer one."""
        try:
            conn = self._connection()
        except psycopg.Error as exc:
            if is_unreachable(exc):
                raise StoreUnreachableError(
                    f"cannot connect to {self.where}: {_reason(exc)}; check that the database "
                    "is up and reachable from this host"
                ) from exc
            raise StoreError(
                f"cannot connect to {self.where}: {_reason(exc)}; check store_url, the "
                "password, and that the database accepts connections from this host"
            ) from exc
        try:
            with conn.transaction():
                conn.execute("SELECT pg_advisory_xact_lock(%s)", (MIGRATION_LOCK,))
                conn.execute(
                    "CREATE TABLE IF NOT EXISTS rules_sidecar_schema (version integer NOT NULL)"
                )
                row = conn.execute("SELECT max(version) FROM rules_sidecar_schema").fetchone()
                found = int(row[0]) if row and row[0] is not None else 0
                if found > SCHEMA_VERSION:
                    raise StoreError(
                        f"the connector store in {self.where} has schema {found}, written by a "
                        f"newer rules-sidecar (this one knows up to {SCHEMA_VERSION}); upgrade "
                        "this sidecar, or point store_url at another database"
                    )
                _check_tables(conn, found, self.where)
                for version, statements in MIGRATIONS:
                    if version > found:
                        for statement in statements:
                            conn.execute(statement)
                if found < SCHEMA_VERSION:
                    conn.execute("DELETE FROM rules_sidecar_schema")
                    conn.execute(
                        "INSERT INTO rules_sidecar_schema (version) VALUES (%s)", (SCHEMA_VERSION,)
                    )
        except psycopg.Error as exc:
            self._conn = None
            conn.close()
            if is_unreachable(exc):
                raise StoreUnreachableError(
                    f"cannot prepare the connector tables in {self.where}: {_reason(exc)}; "
                    "check that the database is up and reachable from this host"
                ) from exc
            raise StoreError(
                f"cannot prepare the connector tables in {self.where}: {_reason(exc)}; the "
                "store_url user needs CREATE on the database's public schema"
            ) from exc
        except StoreError:
            self._conn = None
            conn.close()
            raise

    def _lock_id(self, conn: psycopg.Connection[TupleRow], connector_id: str) -> int:
        """Lock the id's high-water row until commit; its version, NotFoundError if none."""
        row = conn.execute(
            "SELECT version FROM rules_sidecar_versions WHERE id = %s FOR UPDATE", (connector_id,)
        ).fetchone()
        if row is None:
            raise NotFoundError(
                f"no connector with id {connector_id!r}", metadata={"connector_id": connector_id}
            )
        return int(row[0])

    def _version_of(self, conn: psycopg.Connection[TupleRow], connector_id: str) -> int:
        row = conn.execute(
            "SELECT version FROM rules_sidecar_connectors WHERE id = %s", (connector_id,)
        ).fetchone()
        return int(row[0]) if row else 0


def is_unreachable(exc: psycopg.Error) -> bool:
    """Whether `exc` says the database cannot be reached now (an outage, retried), rather than
    that it refused us (a configuration to fix).

    libpq gives no SQLSTATE for a failed connect, only its text: a FATAL answer from the server
    is a refusal unless it is one that passes (starting up, shutting down, full); no answer at
    all (refused, timed out, no route, name not resolved, cut) is an outage.
    """
    if not isinstance(exc, psycopg.OperationalError):
        return False
    if exc.sqlstate is not None:
        return exc.sqlstate.startswith("08") or exc.sqlstate in _UNREACHABLE_STATES
    text = str(exc)
    return "FATAL:" not in text or any(refusal in text for refusal in _PASSING_REFUSALS)


def notification(connector_id: str, version: int) -> str:
    """The payload announcing a change: the id and its version (re-read the row for the rest)."""
    return json.dumps({"id": connector_id, "version": version}, separators=(",", ":"))


def _changed_id(payload: str) -> str | None:
    """The id a notification names; None (resync everything) if it names none."""
    try:
        connector_id = json.loads(payload)["id"]
    except (ValueError, TypeError, KeyError):
        connector_id = None
    if not isinstance(connector_id, str):
        log.warning("a connector change notification without an id (%r): resyncing", payload)
        return None
    return connector_id


def _announce(conn: psycopg.Connection[TupleRow], connector_id: str, version: int) -> None:
    conn.execute("SELECT pg_notify(%s, %s)", (NOTIFY_CHANNEL, notification(connector_id, version)))


def _reason(exc: psycopg.Error) -> str:
    """The server's or libpq's first line: enough to act on, without the driver's trail."""
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _check_tables(conn: psycopg.Connection[Any], found: int, where: str) -> None:
    """A database whose schema row says `found` must still have its tables: a dropped table is
    damage, and re-creating it empty would silently lose every connector."""
    if found == 0:
        return
    missing = [
        table
        for table in TABLES
        if conn.execute("SELECT to_regclass(%s)", (table,)).fetchone() == (None,)
    ]
    if missing:
        raise StoreError(
            f"the connector store in {where} is damaged: its table(s) {', '.join(missing)} are "
            f"gone though rules_sidecar_schema says version {found}. Starting would silently "
            "lose connectors, so the sidecar stops: restore the database from a backup, or, to "
            "start empty on purpose, drop the rules_sidecar_* tables"
        )
