"""The real sidecar under test, in-process or as a `rules-sidecar serve` subprocess.

`InProcessSidecars` runs the real sidecar (`start_sidecar`, the composition root) on
127.0.0.1:0 in a background thread with its own event loop, and hands the test a synchronous
channel and stub. `Seams` are what a test hands the composition root in place of the real thing
(its own telemetry, a fake DNS, a recording connector): parameters, never patched globals.
`SidecarProcesses` starts the real CLI on a free loopback port and waits until its health check
says SERVING. Both stop everything they started on `close()`; the fixtures in tests/conftest.py
call it at teardown.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar.egress import ConnectorFactory, Resolver
from sidecar.server import start_sidecar
from sidecar.settings import ENV_PREFIX, Settings
from sidecar.telemetry.instruments import Telemetry

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_CONNECTORS_FILE = REPO_ROOT / "examples" / "connectors.yaml"
EXAMPLE_SETTINGS_FILE = REPO_ROOT / "examples" / "sidecar.yaml"
STARTUP_DEADLINE_SECONDS = 30.0  # a deadline, not a measurement: loaded CI machines are slow
SERVING = health_pb2.HealthCheckResponse.SERVING


def example_connectors() -> list[dict[str, Any]]:
    """The connector definitions of examples/connectors.yaml, as plain data."""
    document = yaml.safe_load(EXAMPLE_CONNECTORS_FILE.read_text(encoding="utf-8"))
    return list(document["connectors"])


def example_secret_hosts() -> dict[str, list[str]]:
    """The secret_hosts of examples/sidecar.yaml: they bind every secret the example file uses."""
    document = yaml.safe_load(EXAMPLE_SETTINGS_FILE.read_text(encoding="utf-8"))
    return dict(document["secret_hosts"])


# ---------------------------------------------------------------------------------------------
# In-process server
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Seams:
    """The keyword arguments of `start_sidecar` a test may fill; None keeps the real one."""

    telemetry: Telemetry | None = None
    resolver: Resolver | None = None
    connector_factory: ConnectorFactory | None = None

    def as_arguments(self) -> dict[str, Any]:
        return {seam.name: getattr(self, seam.name) for seam in fields(self)}


@dataclass
class InProcessSidecar:
    """A loaded sidecar served from a background thread, with a synchronous client."""

    settings: Settings
    port: int
    channel: grpc.Channel
    stub: pb_grpc.RulesSidecarServiceStub

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"


class ServerThread(threading.Thread):
    """Runs start_sidecar, waits for `stop`, then drains and closes."""

    def __init__(self, settings: Settings, seams: Seams, *, grace: float) -> None:
        super().__init__(name="sidecar-under-test", daemon=True)
        self._settings = settings
        self._seams = seams
        self._grace = grace
        self._ready = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop_requested: asyncio.Event | None = None
        self.port = 0
        self.error: BaseException | None = None

    def run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop_requested = asyncio.Event()
        try:
            sidecar = await start_sidecar(self._settings, **self._seams.as_arguments())
            self.port = sidecar.port
        except BaseException as exc:  # start_sidecar stopped what it had started
            self.error = exc
            return
        finally:
            self._ready.set()
        await self._stop_requested.wait()
        await sidecar.stop(grace=self._grace)

    def wait_started(self) -> None:
        if not self._ready.wait(STARTUP_DEADLINE_SECONDS):
            raise TimeoutError("the in-process sidecar did not start in time")
        if self.error is not None:
            raise self.error

    def stop(self) -> None:
        if self._loop is not None and self._stop_requested is not None and self.is_alive():
            self._loop.call_soon_threadsafe(self._stop_requested.set)
        self.join(STARTUP_DEADLINE_SECONDS)
        assert not self.is_alive(), "the in-process sidecar did not stop"


class InProcessSidecars:
    """Starts in-process sidecars, each with its own data_dir under `data_root`; `close()`
    stops them all, the last started first."""

    def __init__(self, data_root: Path) -> None:
        self._data_root = data_root
        self._started: list[tuple[ServerThread, grpc.Channel]] = []

    def settings(self, **overrides: Any) -> Settings:
        """Settings for the next sidecar: its own data_dir and a kernel-picked loopback port,
        unless `overrides` say otherwise."""
        overrides.setdefault("data_dir", self._data_root / f"data-{len(self._started)}")
        overrides.setdefault("listen_address", "127.0.0.1:0")
        return Settings.load(overrides=overrides)

    def start(self, settings: Settings, seams: Seams = Seams()) -> InProcessSidecar:
        """Serve `settings` and return once the sidecar is loaded (or raise what stopped it)."""
        thread = ServerThread(settings, seams, grace=1.0)
        thread.start()
        try:
            thread.wait_started()
        except BaseException:
            thread.stop()
            raise
        channel = grpc.insecure_channel(f"127.0.0.1:{thread.port}")
        self._started.append((thread, channel))
        return InProcessSidecar(
            settings, thread.port, channel, pb_grpc.RulesSidecarServiceStub(channel)
        )

    def close(self) -> None:
        for thread, channel in reversed(self._started):
            channel.close()
            thread.stop()


def hide_sidecar_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """Remove the developer's RULES_SIDECAR_* variables so they cannot change the settings."""
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)


# ---------------------------------------------------------------------------------------------
# Subprocess: the real `rules-sidecar serve`
# ---------------------------------------------------------------------------------------------


def free_loopback_port() -> int:
    """A port that is free now, chosen BELOW the kernel's ephemeral range (32768+).

    A port from bind(("127.0.0.1", 0)) is an ephemeral one, and on a busy machine the next
    outgoing connection can take it before the sidecar binds it; ports below the range are
    never handed out that way.
    """
    for _ in range(200):
        port = random.randrange(20000, 32000)
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
            try:
                probe.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free loopback port between 20000 and 32000")


def sidecar_environment(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """This process's environment without RULES_SIDECAR_* variables, plus `extra`."""
    environment = {k: v for k, v in os.environ.items() if not k.startswith(ENV_PREFIX)}
    environment.update(extra or {})
    return environment


SERVE_COMMAND = (sys.executable, "-m", "sidecar.cli", "serve")


@dataclass
class SidecarProcess:
    """A `rules-sidecar serve` subprocess and clients connected to its TCP port.

    The channel opens on first use, once the port accepts a connection: a gRPC channel opened
    before the server listens fails its first connect and waits out a reconnect backoff (about
    a second) before it tries again.
    """

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    stderr_path: Path
    _stderr_file: Any = field(repr=False)
    _channel: grpc.Channel | None = field(default=None, repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def channel(self) -> grpc.Channel:
        """The channel to the TCP port, opened once the port accepts connections."""
        if self._channel is None:
            self.wait_until_listening()
            self._channel = grpc.insecure_channel(self.address)
        return self._channel

    @property
    def stub(self) -> pb_grpc.RulesSidecarServiceStub:
        return pb_grpc.RulesSidecarServiceStub(self.channel)

    @property
    def health_stub(self) -> health_pb2_grpc.HealthStub:
        return health_pb2_grpc.HealthStub(self.channel)

    def stderr_text(self) -> str:
        """Everything the process wrote to stderr so far."""
        return self.stderr_path.read_text(encoding="utf-8", errors="replace")

    def health_status(self, service: str = "") -> int:
        """The health Check answer for `service` (raises grpc.RpcError if unreachable)."""
        return int(
            self.health_stub.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=1.0
            ).status
        )

    def wait_until_listening(self, deadline_seconds: float = STARTUP_DEADLINE_SECONDS) -> None:
        """Until a TCP connect to the port succeeds; fail with stderr if the process dies."""
        self._wait_until(self._accepts_connections, "listening", deadline_seconds, 0.01)

    def wait_until_serving(self, deadline_seconds: float = STARTUP_DEADLINE_SECONDS) -> None:
        """Until health Check says SERVING; fail with the process's stderr if it dies."""
        self._wait_until(self._is_serving, "SERVING", deadline_seconds, 0.05)

    def _accepts_connections(self) -> bool:
        try:
            with socket.create_connection(("127.0.0.1", self.port), timeout=1.0):
                return True
        except OSError:
            return False

    def _is_serving(self) -> bool:
        with contextlib.suppress(grpc.RpcError):
            return self.health_status() == SERVING
        return False

    def _wait_until(
        self, holds: Callable[[], bool], what: str, deadline_seconds: float, interval: float
    ) -> None:
        deadline = time.monotonic() + deadline_seconds
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"rules-sidecar exited with {self.process.returncode} before {what}:\n"
                    f"{self.stderr_text()}"
                )
            if holds():
                return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"rules-sidecar not {what} after {deadline_seconds}s:\n{self.stderr_text()}"
                )
            time.sleep(interval)

    def terminate(self, timeout: float = STARTUP_DEADLINE_SECONDS) -> int:
        """SIGTERM, then wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        self.process.kill()
        self.process.wait(STARTUP_DEADLINE_SECONDS)

    def close(self) -> None:
        if self._channel is not None:
            self._channel.close()
        if self.process.poll() is None:
            self.kill()
        self._stderr_file.close()


class SidecarProcesses:
    """Starts `rules-sidecar serve` subprocesses writing their stderr under `work_dir`;
    `close()` kills every one still running."""

    def __init__(self, work_dir: Path) -> None:
        self._work_dir = work_dir
        self._started: list[SidecarProcess] = []

    def start(
        self,
        data_dir: Path | None = None,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        settings_via_env: bool = False,
        wait: bool = True,
    ) -> SidecarProcess:
        """The listen address and data_dir go in as flags (or as RULES_SIDECAR_* variables when
        `settings_via_env`); `args` adds flags, `env` adds variables. With `wait`, returns once
        health says SERVING."""
        data_dir = data_dir or self._work_dir / "data"
        port = free_loopback_port()
        address = f"127.0.0.1:{port}"
        environment = sidecar_environment(env)
        command = [*SERVE_COMMAND, *args]
        if settings_via_env:
            environment[f"{ENV_PREFIX}LISTEN_ADDRESS"] = address
            environment[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
        else:
            command += ["--listen", address, "--data-dir", str(data_dir)]
        stderr_path = self._work_dir / f"sidecar-{len(self._started)}.stderr"
        stderr_file = stderr_path.open("wb")
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
        handle = SidecarProcess(
            process=process,
            port=port,
            data_dir=data_dir,
            stderr_path=stderr_path,
            _stderr_file=stderr_file,
        )
        self._started.append(handle)
        if wait:
            handle.wait_until_serving()
        return handle

    def close(self) -> None:
        for handle in self._started:
            handle.close()
