"""The composition root, and the server built apart from running it.

`start_sidecar(settings)` turns Settings into running objects, in one place and in order:

    checks (protected mode, secrets_dir, data_dir) -> telemetry -> egress, secret store, secret
    bindings -> gRPC servers (ports bound, health NOT_SERVING, RulesSidecarService closed) ->
    connectors file + store -> registry -> OAuth2 token cache, engine -> servicer -> gate open,
    health SERVING

With a shared store (`store_url`), a database that cannot be reached at startup is an outage,
not a configuration error: the replica stays bound and NOT_SERVING, refuses calls UNAVAILABLE
saying why, and retries the load with bounded, jittered backoff until the registry is loaded
(a wrong password, a missing database or a newer schema still stops the start). Once loaded,
readiness stays SERVING through later outages, as evaluations go on from memory; the store's
own health name (`rulesidecar.v1.Store`) and the `rules_sidecar.store.connected` gauge show
whether the change feed is connected.

Two listeners. The API (`listen_address`: the six RPCs of rulesidecar.v1, health, reflection
unless `reflection` is off; keepalive and connection age per the `keepalive_*` and
`max_connection_age*` settings) is on loopback by default, and refuses to start elsewhere
unprotected (protected mode, as Redis's: a token file or client certificates, or
`allow_unprotected_api` with a WARNING). Health alone may also be served on
`health_listen_address`, plaintext, for probes that connect to the pod IP: in a cluster the
kubelet must reach health, but it must not reach RegisterConnector.

`create_server(settings, telemetry)` builds and binds the gRPC server only (port 0 in tests);
`serve(settings)` adds the signal handling and the graceful drain:

    SIGTERM -> health NOT_SERVING at once -> new calls refused -> in-flight calls get
    `shutdown_grace_seconds` less a reserve for closing -> calls still running are cancelled, and
    their judging stops at its next step (`sidecar.core.budget`) -> egress, store, telemetry
    closed in what is left -> exit 0

One deadline covers the whole stop (`Sidecar.stop`): a closing step that cannot finish by then
is abandoned and named in the log, and the process exits with EXIT_ABANDONED (3) by the end of
the grace even if a worker thread is stuck in a C call (the CLI's watchdog, `serve`'s `exit_by`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import ipaddress
import logging
import os
import signal
import socket
import stat
import sys
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from sidecar.api.access import TokenCheck, TokenFile
from sidecar.api.interceptors import guarded, handlers_of, layered
from sidecar.api.servicer import SERVICE_NAME, RulesSidecarServicer, ServiceGate
from sidecar.core.budget import WorkLimits
from sidecar.core.engine import Engine
from sidecar.core.model import Connector
from sidecar.core.oauth import TokenCache
from sidecar.core.secrets import SecretBindings, SecretStore
from sidecar.egress import (
    ConnectorFactory,
    Egress,
    EgressLimits,
    EgressPolicy,
    Resolver,
    ResponseCache,
)
from sidecar.egress.oauth import TokenEndpoint
from sidecar.errors import ConfigError
from sidecar.registry import ConnectorStore, Registry, Store, load_connectors_file
from sidecar.registry.backend import Backoff, StoreUnreachableError
from sidecar.registry.follower import Follower
from sidecar.registry.watcher import ConnectorsFileWatcher, ReloadState
from sidecar.settings import Settings
from sidecar.telemetry.config import TelemetryConfig
from sidecar.telemetry.instruments import FLUSH_SECONDS, Telemetry

if TYPE_CHECKING:
    from sidecar.registry.postgres import PostgresStore

log = logging.getLogger(__name__)
T = TypeVar("T")

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
# Health of the last connectors file reload. Not part of readiness: the last good set still serves.
CONNECTORS_FILE_HEALTH_SERVICE = "rulesidecar.v1.ConnectorsFile"
# Whether the shared store's change feed is connected (store_url only). Not part of readiness
# either: during an outage the loaded registry still serves evaluations.
STORE_HEALTH_SERVICE = "rulesidecar.v1.Store"
# The initial load's retries while the shared store is unreachable: doubling, jittered.
LOAD_RETRY_FIRST_SECONDS = 0.5
LOAD_RETRY_MOST_SECONDS = 10.0


async def start_sidecar(
    settings: Settings,
    *,
    telemetry: Telemetry | None = None,
    resolver: Resolver | None = None,
    connector_factory: ConnectorFactory | None = None,
) -> Sidecar:
    """Build every object the sidecar runs on from Settings, start answering, load, serve.

    The keyword arguments are the seams tests pass: their own telemetry, and the egress's
    resolver and connector factory (no real DNS, recorded connections). ConfigError or
    StoreError when something cannot start; whatever had started is stopped first.
    """
    check_protected_mode(settings)
    check_secrets_dir(settings.secrets_dir)
    if settings.allow_unbound_secrets:
        log.warning(
            "allow_unbound_secrets is on: connectors may use secrets that have no secret_hosts "
            "entry (development only; bind every secret in secret_hosts and turn it off)"
        )
    telemetry = telemetry or Telemetry.from_config(
        telemetry_config(settings), evaluation_log_every=settings.evaluation_log_every
    )
    egress = build_egress(  # nothing opened yet: its session is made on the first call
        settings, telemetry, resolver=resolver, connector_factory=connector_factory
    )
    secrets = SecretStore(
        directory=settings.secrets_dir,
        environ=settings.secret_variables(),
        env_prefix=settings.secret_env_prefix,
    )
    bindings = SecretBindings(settings.secret_hosts, allow_unbound=settings.allow_unbound_secrets)
    server = create_server(settings, telemetry)
    store_link = StoreLink(server) if settings.store_url is not None else None
    try:
        telemetry.start()
        await server.start()
        if store_link is not None:
            telemetry.watch_store(lambda: store_link.connected)
            await store_link.report(False)
        file_connectors, registry, follower = await _load_registry(
            settings,
            bindings,
            server.gate,
            on_connection=store_link.report if store_link is not None else None,
        )
        if follower is not None:
            follower.start()
    except BaseException:
        await server.stop(grace=0)
        await egress.aclose()
        await asyncio.to_thread(telemetry.shutdown)
        raise
    response_cache = ResponseCache(
        egress.send, max_bytes=settings.response_cache_max_bytes, telemetry=telemetry
    )
    # OAuth2 tokens are fetched through the same egress (never cached as responses), and cached
    # per credential for every connector.
    tokens = TokenCache(TokenEndpoint(egress.send).fetch)
    engine = Engine(
        registry,
        secrets,
        response_cache.send,
        bindings=bindings,
        tokens=tokens,
        limits=work_limits(settings),
        max_cache_bytes=settings.max_compiled_cache_bytes,
        max_answer_bytes=settings.max_message_bytes,
    )
    servicer = RulesSidecarServicer(
        registry,
        engine,
        telemetry=telemetry,
        max_concurrent_evaluations=settings.max_concurrent_evaluations,
        message_limit=settings.max_message_bytes,
        max_cache_bytes=settings.max_compiled_cache_bytes,
    )
    telemetry.watch(
        in_flight=lambda: servicer.evaluations_in_flight, breakers=egress.breaker_states
    )
    watcher = None
    if settings.connectors_file and settings.connectors_reload_seconds > 0:
        watcher = ConnectorsFileWatcher(
            settings.connectors_file,
            registry,
            file_connectors,
            bindings=bindings,
            interval_seconds=settings.connectors_reload_seconds,
            on_state=server.report_connectors_file,
        )
        watcher.start()
    await server.open(servicer)
    # Logged once loaded: a data_dir or store that cannot be opened stops the start first.
    log.info("rules-sidecar listening on %s (port %d)", settings.listen_address, server.port)
    if server.health_port is not None:
        log.info(
            "health (only) listening on %s (port %d)",
            settings.health_listen_address,
            server.health_port,
        )
    return Sidecar(
        settings,
        server,
        telemetry,
        egress,
        registry,
        watcher,
        follower,
        response_cache,
        tokens,
        engine,
    )


def work_limits(settings: Settings) -> WorkLimits:
    """The caps on each evaluation's work, from their settings of the same names."""
    return WorkLimits(
        max_evaluation_seconds=settings.max_evaluation_seconds,
        max_query_result_bytes=settings.max_query_result_bytes,
        max_query_steps=settings.max_query_steps,
        max_regex_subject_bytes=settings.max_regex_subject_bytes,
        regex_max_memory_bytes=settings.regex_max_memory_bytes,
        max_node_cost_bytes=settings.max_node_cost_bytes,
        max_explain_value_bytes=settings.max_explain_value_bytes,
        max_operand_values=settings.max_operand_values,
    )


def check_protected_mode(settings: Settings) -> None:
    """Protected mode: an API other hosts can reach must ask for a token (or a client
    certificate); the admin RPCs would otherwise let anyone who reaches the port point a
    connector, and the secrets it carries, anywhere. Loopback and unix sockets are local."""
    protected = bool(
        settings.admin_token_file or settings.evaluation_token_file or settings.tls_client_ca_file
    )
    if protected or is_local_address(settings.listen_address):
        return
    if settings.allow_unprotected_api:
        log.warning(
            "UNPROTECTED API: listen_address %s is reachable from other hosts and no token "
            "(admin_token_file) or client certificate (tls_client_ca_file) is required; anyone "
            "who reaches it may register connectors. allow_unprotected_api is on: do this only "
            "on a network you trust",
            settings.listen_address,
        )
        return
    raise ConfigError(
        f"protected mode: listen_address {settings.listen_address} is not loopback and the API "
        "requires no token, so anyone who reaches it could register connectors",
        [
            "set admin_token_file (RULES_SIDECAR_ADMIN_TOKEN_FILE) to a file holding a token",
            "or listen on loopback (listen_address: 127.0.0.1:50051; health_listen_address "
            "serves probes from the pod IP)",
            "or, on a network you trust, set allow_unprotected_api: true",
        ],
    )


def is_local_address(address: str) -> bool:
    """Loopback (127.0.0.0/8, ::1, localhost) or a unix socket; a name may resolve elsewhere.

    >>> [is_local_address(a) for a in ("127.0.0.1:1", "[::1]:1", "0.0.0.0:1", "unix:/s")]
    [True, True, False, True]
    """
    if address.startswith(("unix:", "unix-abstract:")):
        return True
    host = address.rpartition(":")[0].strip("[]")
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_secrets_dir(directory: Path | None) -> None:
    """A configured secrets_dir that is missing is a typo or a missing mount: every connector
    using a secret would answer SECRET_NOT_FOUND later, so it stops the start now (a Kubernetes
    Secret volume is mounted before the container starts, so it never appears later)."""
    if directory is None:
        return
    if not directory.is_dir():
        state = "is not a directory" if directory.exists() else "does not exist"
        raise ConfigError(
            f"secrets_dir {directory} {state}: mount the secrets there, or point secrets_dir "
            "(RULES_SIDECAR_SECRETS_DIR, --secrets-dir) at the directory that holds them, or "
            "unset it to read secrets only from RULES_SECRET_* variables"
        )
    if not os.access(directory, os.R_OK | os.X_OK):
        raise ConfigError(
            f"secrets_dir {directory} is not readable by this process (uid {os.getuid()}): "
            "give it read permission (a Kubernetes Secret's defaultMode, or fsGroup)"
        )


def check_data_dir(directory: Path) -> None:
    """The store's directory, created if missing; an error that says what to fix instead of
    the operating system's 'File exists' or 'Permission denied: .../lock'."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(
            f"data_dir {directory} is a file, not a directory: point data_dir "
            "(RULES_SIDECAR_DATA_DIR, --data-dir) at a directory, or move the file aside"
        )
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(
            f"cannot create data_dir {directory} ({exc.strerror}): create it with write "
            "permission for this process, or point data_dir (RULES_SIDECAR_DATA_DIR, "
            "--data-dir) at a writable directory"
        ) from exc
    if not os.access(directory, os.R_OK | os.W_OK | os.X_OK):
        raise ConfigError(
            f"data_dir {directory} is not writable by this process (uid {os.getuid()}): give "
            "it write permission (chown or chmod; in Kubernetes a writable volume, or fsGroup), "
            "or point data_dir (RULES_SIDECAR_DATA_DIR, --data-dir) elsewhere"
        )


def telemetry_config(settings: Settings) -> TelemetryConfig:
    """What telemetry switches on: the OTEL_* variables and the Prometheus endpoint settings."""
    prometheus = None
    if settings.metrics_prometheus_port is not None:
        prometheus = (settings.metrics_prometheus_host, settings.metrics_prometheus_port)
    return TelemetryConfig.of(settings.otel_variables(), prometheus=prometheus)


async def _load_registry(
    settings: Settings,
    bindings: SecretBindings,
    gate: ServiceGate,
    *,
    on_connection: Callable[[bool], Awaitable[None]] | None,
) -> tuple[tuple[Connector, ...], Registry, Follower | None]:
    """The connectors file's connectors, the registry over them and the opened store, and
    (with a shared store) the follower to keep it current, not started yet."""
    file_connectors: tuple[Connector, ...] = (
        await asyncio.to_thread(load_connectors_file, settings.connectors_file, bindings=bindings)
        if settings.connectors_file
        else ()
    )
    store, registry = await _open_registry(settings, bindings, file_connectors, gate)
    log.info(
        "loaded %d connector(s) (%d from %s)",
        len(registry),
        len(file_connectors),
        settings.connectors_file or "no connectors file",
    )
    follower = None
    if settings.store_url is not None and isinstance(store, _postgres_store()):
        follower = Follower(
            registry,
            store.changes(
                resync_seconds=settings.store_resync_seconds, on_connection=on_connection
            ),
        )
    return file_connectors, registry, follower


async def _open_registry(
    settings: Settings,
    bindings: SecretBindings,
    file_connectors: tuple[Connector, ...],
    gate: ServiceGate,
) -> tuple[Store, Registry]:
    """The store opened and the registry loaded from it; while the shared store cannot be
    reached, retried with backoff (calls meanwhile are refused saying why)."""
    backoff = Backoff(LOAD_RETRY_FIRST_SECONDS, LOAD_RETRY_MOST_SECONDS)
    while True:
        try:
            return await asyncio.to_thread(_registry_over, settings, bindings, file_connectors)
        except StoreUnreachableError as exc:
            delay = backoff.next()
            gate.waiting_for(
                f"the sidecar has not loaded its connectors yet: {exc}. It retries by itself; "
                "retry this call shortly"
            )
            log.warning(
                "%s; NOT_SERVING until the connectors are loaded, retrying in %.1fs", exc, delay
            )
            await asyncio.sleep(delay)


def _registry_over(
    settings: Settings, bindings: SecretBindings, file_connectors: tuple[Connector, ...]
) -> tuple[Store, Registry]:
    store = open_store(settings)
    try:
        return store, Registry(store, bindings=bindings, file_connectors=file_connectors)
    except BaseException:
        store.close()
        raise


def open_store(settings: Settings) -> Store:
    """PostgreSQL when `store_url` is set (a fleet shares it), else the embedded SQLite store."""
    if settings.store_url is None:
        check_data_dir(settings.data_dir)
        return ConnectorStore(
            settings.store_path, busy_timeout_seconds=settings.store_busy_timeout_seconds
        )
    return _postgres_store()(
        settings.store_url,
        password=settings.store_password(),
        connect_timeout_seconds=settings.store_connect_timeout_seconds,
        lock_timeout_seconds=settings.store_busy_timeout_seconds,
        statement_timeout_seconds=settings.store_statement_timeout_seconds,
    )


def _postgres_store() -> type[PostgresStore]:
    """The PostgreSQL store, imported when a fleet uses it: psycopg alone holds ~9 MiB of
    resident memory, which a sidecar on its embedded store has no use for."""
    from sidecar.registry.postgres import PostgresStore

    return PostgresStore


class StoreLink:
    """Whether this replica's change feed from the shared store is connected: read by the
    `rules_sidecar.store.connected` gauge (any thread), shown on STORE_HEALTH_SERVICE."""

    def __init__(self, server: SidecarServer) -> None:
        self._server = server
        self.connected = False

    async def report(self, connected: bool) -> None:
        """The feed connected (True) or lost or could not be made (False)."""
        if connected != self.connected:
            log.info("store change feed %s", "connected" if connected else "disconnected")
        self.connected = connected
        await self._server.health.set(STORE_HEALTH_SERVICE, SERVING if connected else NOT_SERVING)


@dataclass(frozen=True)
class Sidecar:
    """A loaded, serving sidecar: what `stop` drains and closes, in order."""

    settings: Settings
    server: SidecarServer
    telemetry: Telemetry
    egress: Egress
    registry: Registry
    connectors_watcher: ConnectorsFileWatcher | None
    follower: Follower | None = None
    response_cache: ResponseCache | None = None
    tokens: TokenCache | None = None
    engine: Engine | None = None

    @property
    def port(self) -> int:
        """The API's TCP port (the one chosen by the system when the address asked for 0)."""
        return self.server.port

    @property
    def health_port(self) -> int | None:
        """The health-only listener's TCP port, if `health_listen_address` is set."""
        return self.server.health_port

    async def stop(self, grace: float | None = None) -> tuple[str, ...]:
        """Drain and close within `grace` seconds (`shutdown_grace_seconds`), whatever runs.

        NOT_SERVING at once, new calls refused; in-flight calls get the grace less a reserve
        for closing (`drain_seconds`); at the drain's end the calls still running are cancelled
        and the engine's judging told to stop; each closing step then gets what is left of the
        one deadline. A step that cannot finish by then is abandoned with a WARNING (a thread
        stuck in a C call cannot be stopped, only left behind). Returns what was abandoned:
        empty when everything stopped in time.
        """
        grace = self.settings.shutdown_grace_seconds if grace is None else grace
        closing = _Closing(grace)
        loop = asyncio.get_running_loop()
        # At the drain's end even if grpc's own stop overruns it: judging stops at its next step.
        stop_judging = loop.call_later(drain_seconds(grace), self._stop_judging)
        try:
            if self.connectors_watcher is not None:
                await closing.step("the connectors file watcher", self.connectors_watcher.stop())
            if self.follower is not None:
                await closing.step("the store's change feed", self.follower.stop())
            drain = max(closing.drain_end - loop.time(), 0.0)
            await closing.step("the drain of in-flight calls", self.server.stop(drain))
        finally:
            stop_judging.cancel()
        self._stop_judging()
        await closing.step("judging still running", self._judging_stopped())
        if self.response_cache is not None:
            await closing.step("the response cache", self.response_cache.aclose())
        if self.tokens is not None:
            await closing.step("the OAuth2 token cache", self.tokens.aclose())
        await closing.step("the egress", self.egress.aclose())
        await closing.step("closing the store", in_daemon_thread(self.registry.close))
        flush = partial(self.telemetry.shutdown, min(max(closing.left(), 0.0), FLUSH_SECONDS))
        if await closing.step("the last telemetry flush", in_daemon_thread(flush)) is False:
            closing.abandon("the last telemetry flush")
        return tuple(closing.abandoned)

    def _stop_judging(self) -> None:
        if self.engine is not None:
            self.engine.stop_all()

    async def _judging_stopped(self) -> None:
        """Until every evaluation's work has stopped (each at its next step after stop_all)."""
        while self.engine is not None and self.engine.working:
            self.engine.stop_all()  # one that began meanwhile (its call was already admitted)
            await asyncio.sleep(JUDGING_POLL_SECONDS)


# Of the grace, kept back from the drain for closing (the engine's workers, the egress, the
# store, the last telemetry flush): a fifth, within these bounds. Closing takes milliseconds
# unless a collector or the store is slow; the drain ends early when no call is in flight.
CLOSING_RESERVE_FRACTION = 0.2
CLOSING_RESERVE_LEAST_SECONDS = 0.25
CLOSING_RESERVE_MOST_SECONDS = 2.0
# Of that reserve, the end is kept for the process to exit once the stop returned (the loop's
# close, the interpreter's): the stop's own deadline comes this much before the grace's end.
EXIT_RESERVE_FRACTION = 0.05
EXIT_RESERVE_LEAST_SECONDS = 0.1
EXIT_RESERVE_MOST_SECONDS = 0.5
JUDGING_POLL_SECONDS = 0.01
STEP_LEAST_SECONDS = 0.01
EXIT_ABANDONED = 3
"""The exit code when the grace ran out before everything stopped (the log names what was
abandoned: a telemetry flush, the store's close, a worker thread stuck in a C call)."""


def drain_seconds(grace: float) -> float:
    """The part of the shutdown grace in-flight calls get; the rest is kept for closing.

    >>> drain_seconds(10.0), drain_seconds(1.0), drain_seconds(0.0)
    (8.0, 0.75, 0.0)
    """
    return max(grace - closing_reserve(grace), 0.0)


def closing_reserve(grace: float) -> float:
    """Seconds kept for closing: a fifth of the grace, at least 0.25 s, at most 2 s."""
    return min(
        max(grace * CLOSING_RESERVE_FRACTION, CLOSING_RESERVE_LEAST_SECONDS),
        CLOSING_RESERVE_MOST_SECONDS,
    )


def stop_seconds(grace: float) -> float:
    """The time the whole stop may take from the signal: the grace (or the least closing
    reserve, when the grace is shorter). The process ends by then, whatever runs.

    >>> stop_seconds(10.0), stop_seconds(0.0)
    (10.0, 0.25)
    """
    return max(grace, closing_reserve(grace))


def exit_reserve(grace: float) -> float:
    """Seconds at the end of the stop kept for the process to exit: 5%, within 0.1-0.5 s."""
    return min(
        max(grace * EXIT_RESERVE_FRACTION, EXIT_RESERVE_LEAST_SECONDS), EXIT_RESERVE_MOST_SECONDS
    )


class _Closing:
    """One deadline for a whole stop: each step gets what is left of it, or is abandoned."""

    def __init__(self, grace: float) -> None:
        self._loop = asyncio.get_running_loop()
        started = self._loop.time()
        self.grace = grace
        # The closing steps end before the process must: it still has to exit after them.
        self.deadline = started + stop_seconds(grace) - exit_reserve(grace)
        self.drain_end = started + drain_seconds(grace)
        self.abandoned: list[str] = []

    def left(self) -> float:
        """Seconds until the deadline (negative once past)."""
        return self.deadline - self._loop.time()

    async def step(self, name: str, work: Awaitable[T]) -> T | None:
        """`work`'s result, or None if it could not finish by the deadline (then abandoned:
        cancelled if it is a task on the loop, left to itself if it runs in a thread)."""
        task = asyncio.ensure_future(work)
        # At least a moment: after a step that overran, one that takes no time still runs.
        done, _ = await asyncio.wait((task,), timeout=max(self.left(), STEP_LEAST_SECONDS))
        if task in done:
            return task.result()
        task.cancel()
        self.abandon(name)
        return None

    def abandon(self, name: str) -> None:
        log.warning(
            "shutdown: %s did not finish within the grace (%.1fs); abandoned", name, self.grace
        )
        self.abandoned.append(name)


def in_daemon_thread(work: Callable[[], T]) -> asyncio.Future[T]:
    """`work` run in a daemon thread of its own: if it never ends (a flush to a collector that
    never answers), the process still exits, as a worker of asyncio's executor would hold it."""
    loop = asyncio.get_running_loop()
    future: asyncio.Future[T] = loop.create_future()

    def settle(outcome: Callable[[], None]) -> None:
        if not future.done():
            outcome()

    def run() -> None:
        try:
            result = work()
        except BaseException as exc:  # handed to the awaiting coroutine
            report = partial(settle, partial(future.set_exception, exc))
        else:
            report = partial(settle, partial(future.set_result, result))
        with contextlib.suppress(RuntimeError):  # the loop closed meanwhile: nobody waits
            loop.call_soon_threadsafe(report)

    threading.Thread(target=run, name="shutdown-step", daemon=True).start()
    return future


@dataclass(frozen=True)
class SidecarServer:
    """The gRPC server with its ports bound, its health, and the gate of RulesSidecarService;
    and, if configured, the health-only server for probes (same health states)."""

    server: grpc.aio.Server
    port: int
    health: health.aio.HealthServicer
    gate: ServiceGate
    health_server: grpc.aio.Server | None = None
    health_port: int | None = None

    async def start(self) -> None:
        """Start answering: health NOT_SERVING and RulesSidecarService UNAVAILABLE until `open`."""
        await self._set_health(NOT_SERVING)
        await self.server.start()
        if self.health_server is not None:
            await self.health_server.start()

    async def open(self, servicer: RulesSidecarServicer) -> None:
        """Serve the loaded sidecar: calls go to `servicer`, health says SERVING."""
        self.gate.open(servicer)
        await self._set_health(SERVING)

    async def stop(self, grace: float) -> None:
        """NOT_SERVING at once, refuse new calls, give in-flight ones `grace` seconds."""
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        if self.health_server is not None:  # probes see NOT_SERVING until the drain is over
            await self.health_server.stop(0)

    async def report_connectors_file(self, state: ReloadState) -> None:
        """The health of the last connectors file reload (a service of its own)."""
        status = SERVING if state.valid else NOT_SERVING
        await self.health.set(CONNECTORS_FILE_HEALTH_SERVICE, status)

    async def _set_health(self, status: int) -> None:
        for service in ("", SERVICE_NAME):
            await self.health.set(service, status)


def create_server(settings: Settings, telemetry: Telemetry) -> SidecarServer:
    """The gRPC server with its services and their layers, bound to its ports (TCP, and the
    unix socket if configured); RulesSidecarService stays closed until `SidecarServer.open`."""
    message_limit = settings.max_message_bytes
    tokens = None
    if settings.admin_token_file or settings.evaluation_token_file:
        tokens = TokenCheck(
            admin=TokenFile(settings.admin_token_file) if settings.admin_token_file else None,
            evaluation=TokenFile(settings.evaluation_token_file)
            if settings.evaluation_token_file
            else None,
        )
    gate = ServiceGate()
    server = grpc.aio.server(
        # Each method's layers are built once (interceptors would rebuild them per call).
        handlers=(
            layered(gate, telemetry=telemetry, tokens=tokens.for_method if tokens else None),
        ),
        options=[
            ("grpc.max_receive_message_length", message_limit),
            ("grpc.max_send_message_length", message_limit),
            # Without this, a second sidecar could silently share (and steal calls from) our port.
            ("grpc.so_reuseport", 0),
            *keepalive_options(settings),
        ],
    )
    health_servicer = health.aio.HealthServicer()
    # Open (no token) and not observed; malformed requests answered as everywhere else.
    server.add_generic_rpc_handlers(
        tuple(
            guarded(service)
            for service in handlers_of(
                health_pb2_grpc.add_HealthServicer_to_server, health_servicer
            )
        )
    )
    if settings.reflection:
        reflection.enable_server_reflection(
            (SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server
        )
    credentials = _server_credentials(settings)
    port = _bind(server, settings.listen_address, credentials)
    if settings.unix_socket is not None:
        _remove_stale_socket(settings.unix_socket)
        _bind(server, f"unix:{settings.unix_socket}", credentials)
    health_server, health_port = None, None
    if settings.health_listen_address is not None:
        # Health only, no layers, plaintext: what the kubelet's gRPC probes can speak.
        health_server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
        health_port = _bind(health_server, settings.health_listen_address, None)
    return SidecarServer(server, port, health_servicer, gate, health_server, health_port)


def keepalive_options(settings: Settings) -> list[tuple[str, int]]:
    """The API server's keepalive and connection-age channel arguments (grpc core's names)."""

    def ms(seconds: float) -> int:
        return round(seconds * 1000)

    options = [
        ("grpc.keepalive_time_ms", ms(settings.keepalive_time_seconds)),
        ("grpc.keepalive_timeout_ms", ms(settings.keepalive_timeout_seconds)),
        ("grpc.keepalive_permit_without_calls", int(settings.keepalive_permit_without_calls)),
        (
            "grpc.http2.min_ping_interval_without_data_ms",
            ms(settings.keepalive_min_ping_interval_seconds),
        ),
    ]
    if settings.max_connection_age_seconds is not None:
        options.append(("grpc.max_connection_age_ms", ms(settings.max_connection_age_seconds)))
    if settings.max_connection_age_grace_seconds is not None:
        options.append(
            ("grpc.max_connection_age_grace_ms", ms(settings.max_connection_age_grace_seconds))
        )
    return options


def build_egress(
    settings: Settings,
    telemetry: Telemetry,
    *,
    resolver: Resolver | None = None,
    connector_factory: ConnectorFactory | None = None,
) -> Egress:
    """The egress with the operator's policy and limits (and the tests' seams, if given)."""
    try:
        policy = EgressPolicy(
            allow_cidrs=tuple(settings.egress_allow_cidrs),
            allow_hosts=tuple(settings.egress_allow_hosts),
            allow_http_hosts=tuple(settings.egress_allow_http_hosts),
        )
    except ValueError as exc:
        raise ConfigError(f"egress_allow_cidrs: {exc}") from exc
    limits = EgressLimits(
        max_connections=settings.max_connections,
        per_upstream_concurrency=settings.per_upstream_concurrency,
        retries=settings.retries,
        breaker_failure_threshold=settings.breaker_failure_threshold,
        breaker_cooldown_seconds=settings.breaker_cooldown_seconds,
    )
    return Egress(
        policy,
        limits,
        resolver=resolver,
        connector_factory=connector_factory,
        telemetry=telemetry,
    )


async def serve(settings: Settings, *, exit_by: Callable[[float], None] | None = None) -> int:
    """Run until SIGTERM or SIGINT, then drain. Returns the process exit code: 0, or
    EXIT_ABANDONED when the grace ran out before everything stopped.

    `exit_by(seconds)` is called when the signal arrives, with the time the stop may take: the
    CLI ends the process by then, whatever still runs (a worker thread stuck in a C call).
    """
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signal_number, stop_requested.set)
    # The signals are heard while starting too: a replica retrying an unreachable store stops.
    starting = asyncio.create_task(start_sidecar(settings), name="start")
    stopping = asyncio.create_task(stop_requested.wait(), name="stop-requested")
    await asyncio.wait((starting, stopping), return_when=asyncio.FIRST_COMPLETED)
    grace = settings.shutdown_grace_seconds
    if not starting.done():
        if exit_by is not None:
            exit_by(stop_seconds(grace))
        starting.cancel()  # start_sidecar stops what it had started
        with contextlib.suppress(asyncio.CancelledError):
            await starting
        log.info("rules-sidecar stopped before it had loaded its connectors")
        return 0
    stopping.cancel()
    sidecar = starting.result()  # ConfigError, StoreError: raised here, as before
    share_the_interpreter()
    log.info("rules-sidecar is SERVING")
    await stop_requested.wait()
    if exit_by is not None:
        exit_by(stop_seconds(grace))
    log.info(
        "shutting down: NOT_SERVING, draining in-flight calls for up to %.1fs, all within %.1fs",
        drain_seconds(grace),
        grace,
    )
    abandoned = await sidecar.stop()
    if abandoned:
        log.warning(
            "rules-sidecar stopped at the end of its grace (%.1fs), abandoning: %s; exit code %d",
            grace,
            "; ".join(abandoned),
            EXIT_ABANDONED,
        )
        return EXIT_ABANDONED
    log.info("rules-sidecar stopped")
    return 0


# How long a thread holds the GIL while another waits for it (Python's default is 5 ms): judging
# threads and the event loop share one interpreter, and a health check waits for several
# hand-overs. Measured with bench/hostile.py (the quantifier case): 1 ms keeps the loop's worst
# wait a few milliseconds where 5 ms let it reach 100 ms and more.
SWITCH_INTERVAL_SECONDS = 0.001


def share_the_interpreter() -> None:
    """Process-wide settings of a serving sidecar, so that no thread holds the event loop long.

    What is alive once loaded (modules, settings, the registry) lives as long as the process:
    frozen out of the garbage collector's sight, a full collection no longer walks it. A
    collection is one call that holds the GIL, and so the event loop: 20-45 ms for the ~75,000
    objects of a started sidecar, each time one runs.
    """
    sys.setswitchinterval(SWITCH_INTERVAL_SECONDS)
    gc.collect()
    gc.freeze()


def _server_credentials(settings: Settings) -> grpc.ServerCredentials | None:
    """TLS (and mTLS with a client CA) when a certificate is configured."""
    if settings.tls_cert_file is None and settings.tls_key_file is None:
        return None
    if settings.tls_cert_file is None or settings.tls_key_file is None:
        raise ConfigError("tls_cert_file and tls_key_file must be set together")
    try:
        chain = settings.tls_cert_file.read_bytes()
        key = settings.tls_key_file.read_bytes()
        client_ca = (
            settings.tls_client_ca_file.read_bytes() if settings.tls_client_ca_file else None
        )
    except OSError as exc:
        raise ConfigError(f"cannot read a TLS file: {exc}") from exc
    return grpc.ssl_server_credentials(
        [(key, chain)], root_certificates=client_ca, require_client_auth=client_ca is not None
    )


def _bind(server: grpc.aio.Server, address: str, credentials: grpc.ServerCredentials | None) -> int:
    try:
        if credentials is None:
            port = server.add_insecure_port(address)
        else:
            port = server.add_secure_port(address, credentials)
    except RuntimeError as exc:
        raise ConfigError(f"cannot listen on {address}: {exc}") from exc
    if port == 0:
        raise ConfigError(f"cannot listen on {address}: the address is in use or invalid")
    return int(port)


def _remove_stale_socket(path: Path) -> None:
    """A socket file left by a killed sidecar would make the bind fail, so it is removed; one
    that a live process still listens on is refused instead (removing it would silently take
    that process's calls)."""
    try:
        if not stat.S_ISSOCK(path.stat().st_mode):
            return
    except FileNotFoundError:
        return
    if _has_listener(path):
        raise ConfigError(
            f"unix_socket {path} is in use: another process (a sidecar?) listens on it. Stop "
            "that process, or point unix_socket (RULES_SIDECAR_UNIX_SOCKET) at another path"
        )
    path.unlink(missing_ok=True)


def _has_listener(path: Path) -> bool:
    """Whether a process accepts connections on the unix socket at `path`."""
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    probe.settimeout(1.0)
    try:
        probe.connect(str(path))
    except (ConnectionRefusedError, FileNotFoundError):  # a process that is gone; or no file
        return False
    except OSError:  # not ours to judge (permissions, a timeout): do not take it over
        return True
    finally:
        probe.close()
    return True
