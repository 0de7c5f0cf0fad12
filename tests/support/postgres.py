"""A throwaway PostgreSQL for tests: a cluster of its own in a temp directory, on loopback.

`PostgresCluster.start()` runs Debian's server binaries (`scripts/postgres install` puts them
there): initdb into a fresh temp directory, then pg_ctl start listening on 127.0.0.1 on a free
port, with its unix socket in that directory. PostgreSQL refuses to run as root, so when the tests
run as root (CI does) the cluster belongs to an unprivileged user (`postgres` when the package
created it, else `nobody`) and its directory is chowned to that user. Host connections need the
password (scram-sha-256), so the tests exercise the sidecar's password path as a deployment would.

Each test gets a database of its own (`create_database`), so tests never see each other's rows.
"""

from __future__ import annotations

import itertools
import os
import pwd
import re
import secrets
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tests.support.upstreams import closed_port

SUPERUSER = "rules_sidecar_test"
_database_numbers = itertools.count(1)


@dataclass(frozen=True)
class Database:
    """One empty database of the cluster: what a sidecar needs to use it."""

    url: str  # store_url: no password in it
    password: str


def server_bindir() -> Path | None:
    """The newest installed PostgreSQL server's bin directory, or None when there is none."""
    found = []
    for initdb in Path("/usr/lib/postgresql").glob("*/bin/initdb"):
        major = initdb.parent.parent.name
        if major.isdigit():
            found.append((int(major), initdb.parent))
    if found:
        return max(found)[1]
    initdb_on_path = shutil.which("initdb")
    return Path(initdb_on_path).resolve().parent if initdb_on_path else None


@dataclass
class PostgresCluster:
    """A running throwaway cluster; `stop()` ends it and removes its directory."""

    directory: Path
    bindir: Path
    port: int
    password: str
    owner: str | None  # the user it runs as when the tests run as root; None: as ourselves

    @classmethod
    def start(cls, bindir: Path) -> PostgresCluster:
        """initdb + pg_ctl start; RuntimeError with the server's log when it does not come up."""
        directory = Path(tempfile.mkdtemp(prefix="rules-sidecar-pg-"))
        owner = _unprivileged_user() if os.geteuid() == 0 else None
        password = secrets.token_urlsafe(16)
        (directory / "pwfile").write_text(password + "\n")
        if owner is not None:
            entry = pwd.getpwnam(owner)
            for path in (directory, directory / "pwfile"):
                os.chown(path, entry.pw_uid, entry.pw_gid)
        cluster = cls(directory, bindir, closed_port(), password, owner)
        try:
            cluster._run(
                "initdb",
                "--pgdata",
                str(directory / "data"),
                "--username",
                SUPERUSER,
                "--pwfile",
                str(directory / "pwfile"),
                "--auth-local=trust",
                "--auth-host=scram-sha-256",
                "--encoding=UTF8",
                "--no-sync",
            )
            cluster.start_server()
        except RuntimeError:
            shutil.rmtree(directory, ignore_errors=True)
            raise
        return cluster

    def url(self, database: str = "postgres", user: str = SUPERUSER) -> str:
        """The store_url of a database here (no password: it travels apart)."""
        return f"postgresql://{user}@127.0.0.1:{self.port}/{database}"

    def create_database(self, name: str | None = None) -> Database:
        """A new empty database (named `test_<n>` unless told)."""
        name = name or f"test_{next(_database_numbers)}"
        if not re.fullmatch(r"[a-z_][a-z0-9_]*", name):
            raise ValueError(f"not a plain database name: {name!r}")
        with psycopg.connect(self.url(), password=self.password, autocommit=True) as conn:
            # FILE_COPY: a plain copy of template1, twice as fast as the WAL-logged default.
            conn.execute(f"CREATE DATABASE {name} STRATEGY FILE_COPY".encode())
        return Database(self.url(name), self.password)

    def start_server(self) -> None:
        """pg_ctl start on the cluster's port (again, after `stop_server`: an outage's end)."""
        options = (
            f"-c listen_addresses=127.0.0.1 -c port={self.port} "
            f"-c unix_socket_directories={self.directory} -c fsync=off -c max_connections=200"
        )
        try:
            self._run(
                "pg_ctl", "start", "--wait", "--pgdata", str(self.directory / "data"),
                "--log", str(self.directory / "server.log"), "-o", options,
            )  # fmt: skip
        except RuntimeError as exc:
            log = (self.directory / "server.log").read_text(errors="replace")[-2000:]
            raise RuntimeError(f"{exc}\nserver log:\n{log}") from exc

    def stop_server(self) -> None:
        """pg_ctl stop -m fast: every connection is cut, the data stays (an outage)."""
        self._run("pg_ctl", "stop", "--pgdata", str(self.directory / "data"), "-m", "fast")

    def pause_server(self) -> None:
        """SIGSTOP the postmaster and every process it started: a hung server whose sockets
        stay open (the kernel still acknowledges), the outage timeouts alone cannot see."""
        for pid in self._server_pids():
            os.kill(pid, signal.SIGSTOP)

    def resume_server(self) -> None:
        """SIGCONT what `pause_server` stopped."""
        for pid in reversed(self._server_pids()):
            os.kill(pid, signal.SIGCONT)

    def _server_pids(self) -> list[int]:
        """The postmaster's pid, then its children's (from /proc)."""
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        children = []
        for stat_file in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat_file.read_text().rpartition(")")[2].split()
            except OSError:
                continue  # ended meanwhile
            if int(fields[1]) == postmaster:
                children.append(int(stat_file.parent.name))
        return [postmaster, *children]

    def stop(self) -> None:
        """Stop the server if it runs, then remove the directory."""
        try:
            if (self.directory / "data" / "postmaster.pid").exists():
                self.stop_server()
        finally:
            shutil.rmtree(self.directory, ignore_errors=True)

    def _run(self, program: str, *args: str) -> None:
        command = [str(self.bindir / program), *args]
        if self.owner is not None:
            command = ["runuser", "-u", self.owner, "--", *command]
        done = subprocess.run(
            command, cwd=self.directory, capture_output=True, text=True, timeout=120, check=False
        )
        if done.returncode != 0:
            raise RuntimeError(
                f"{program} failed ({done.returncode}): {done.stderr.strip() or done.stdout}"
            )


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        try:
            pwd.getpwnam(name)
        except KeyError:
            continue
        return name
    raise RuntimeError("no unprivileged user (postgres or nobody) to run PostgreSQL as")
