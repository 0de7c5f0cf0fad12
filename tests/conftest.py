"""Shared fixtures: the real sidecar, in-process or as a `rules-sidecar serve` subprocess.

`sidecar_factory` / `running_sidecar` run the real server (create_server -> start -> load) on
127.0.0.1:0 in a background thread with its own event loop, and hand the test a synchronous
channel and stub. `sidecar_process` starts the real CLI on a free loopback port and waits until
its health check says SERVING. Both stop what they started at teardown.
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
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar.server import SidecarServer, create_server
from sidecar.settings import ENV_PREFIX, Settings

REPO_ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_CONNECTORS_FILE = REPO_ROOT / "examples" / "connectors.yaml"
STARTUP_DEADLINE_SECONDS = 30.0  # a deadline, not a measurement: loaded CI machines are slow
SERVING = health_pb2.HealthCheckResponse.SERVING


def example_connectors() -> list[dict[str, Any]]:
    """The connector definitions of examples/connectors.yaml, as plain data."""
    document = yaml.safe_load(EXAMPLE_CONNECTORS_FILE.read_text(encoding="utf-8"))
    return list(document["connectors"])


# ---------------------------------------------------------------------------------------------
# In-process server
# ---------------------------------------------------------------------------------------------


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


class _ServerThread(threading.Thread):
    """Runs create_server -> start -> load, waits for `stop`, then drains and closes."""

    def __init__(self, settings: Settings, *, grace: float) -> None:
        super().__init__(name="sidecar-under-test", daemon=True)
        self._settings = settings
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
        sidecar: SidecarServer | None = None
        try:
            sidecar = create_server(self._settings)
            await sidecar.start()
            await sidecar.load()
            self.port = sidecar.port
        except BaseException as exc:
            self.error = exc
            if sidecar is not None:
                await sidecar.stop(grace=0)
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


LOOPBACK_ALLOW: dict[str, list[str]] = {
    "egress_allow_cidrs": ["127.0.0.1/32"],
    "egress_allow_http_hosts": ["127.0.0.1"],
}


@pytest.fixture
def sidecar_factory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[..., InProcessSidecar]]:
    """Start in-process sidecars: `sidecar_factory(connectors_file=None, **setting_overrides)`.

    Each gets its own data_dir under tmp_path unless `data_dir` is given. RULES_SIDECAR_*
    variables of the developer's environment are hidden so they cannot change the settings.
    """
    for name in list(os.environ):
        if name.startswith(ENV_PREFIX):
            monkeypatch.delenv(name)
    started: list[tuple[_ServerThread, grpc.Channel]] = []

    def start(connectors_file: Path | None = None, **overrides: Any) -> InProcessSidecar:
        overrides.setdefault("data_dir", tmp_path / f"data-{len(started)}")
        overrides.setdefault("listen_address", "127.0.0.1:0")
        # The egress guard refuses loopback and plain http by default; the test upstreams are
        # both, so the tests open exactly 127.0.0.1 over http, as an operator would.
        overrides.setdefault("egress_allow_cidrs", LOOPBACK_ALLOW["egress_allow_cidrs"])
        overrides.setdefault("egress_allow_http_hosts", LOOPBACK_ALLOW["egress_allow_http_hosts"])
        if connectors_file is not None:
            overrides["connectors_file"] = connectors_file
        settings = Settings.load(overrides=overrides)
        thread = _ServerThread(settings, grace=1.0)
        thread.start()
        try:
            thread.wait_started()
        except BaseException:
            thread.stop()
            raise
        channel = grpc.insecure_channel(f"127.0.0.1:{thread.port}")
        started.append((thread, channel))
        return InProcessSidecar(
            settings, thread.port, channel, pb_grpc.RulesSidecarServiceStub(channel)
        )

    yield start
    for thread, channel in reversed(started):
        channel.close()
        thread.stop()


@pytest.fixture
def running_sidecar(sidecar_factory: Callable[..., InProcessSidecar]) -> InProcessSidecar:
    """One loaded in-process sidecar with an empty store and no connectors file."""
    return sidecar_factory()


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
    """A `rules-sidecar serve` subprocess and clients connected to its TCP port."""

    process: subprocess.Popen[bytes]
    port: int
    data_dir: Path
    stderr_path: Path
    channel: grpc.Channel
    stub: pb_grpc.RulesSidecarServiceStub
    health_stub: health_pb2_grpc.HealthStub
    _stderr_file: Any = field(repr=False)

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

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

    def wait_until_serving(self, deadline_seconds: float = STARTUP_DEADLINE_SECONDS) -> None:
        """Poll health Check until SERVING; fail with the process's stderr if it dies."""
        deadline = time.monotonic() + deadline_seconds
        while True:
            if self.process.poll() is not None:
                pytest.fail(
                    f"rules-sidecar exited with {self.process.returncode} before SERVING:\n"
                    f"{self.stderr_text()}"
                )
            with contextlib.suppress(grpc.RpcError):
                if self.health_status() == SERVING:
                    return
            if time.monotonic() > deadline:
                pytest.fail(
                    f"rules-sidecar not SERVING after {deadline_seconds}s:\n{self.stderr_text()}"
                )
            time.sleep(0.05)

    def terminate(self, timeout: float = STARTUP_DEADLINE_SECONDS) -> int:
        """SIGTERM, then wait for the exit code."""
        self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout)

    def kill(self) -> None:
        """SIGKILL (kill -9) and reap."""
        self.process.kill()
        self.process.wait(STARTUP_DEADLINE_SECONDS)

    def close(self) -> None:
        self.channel.close()
        if self.process.poll() is None:
            self.kill()
        self._stderr_file.close()


@pytest.fixture
def sidecar_process(tmp_path: Path) -> Iterator[Callable[..., SidecarProcess]]:
    """Start `rules-sidecar serve` subprocesses; every one is killed at teardown.

    `sidecar_process(data_dir=None, args=(), env=None, settings_via_env=False, wait=True)`:
    the listen address and data_dir go in as flags (or as RULES_SIDECAR_* variables when
    `settings_via_env`); `args` adds flags, `env` adds variables. With `wait`, returns once
    health says SERVING.
    """
    started: list[SidecarProcess] = []

    def start(
        data_dir: Path | None = None,
        *,
        args: Sequence[str] = (),
        env: Mapping[str, str] | None = None,
        settings_via_env: bool = False,
        wait: bool = True,
    ) -> SidecarProcess:
        data_dir = data_dir or tmp_path / "data"
        port = free_loopback_port()
        address = f"127.0.0.1:{port}"
        environment = sidecar_environment(env)
        command = [*SERVE_COMMAND, *args]
        if settings_via_env:
            environment[f"{ENV_PREFIX}LISTEN_ADDRESS"] = address
            environment[f"{ENV_PREFIX}DATA_DIR"] = str(data_dir)
        else:
            command += ["--listen", address, "--data-dir", str(data_dir)]
        stderr_path = tmp_path / f"sidecar-{len(started)}.stderr"
        stderr_file = stderr_path.open("wb")
        process = subprocess.Popen(
            command,
            cwd=REPO_ROOT,
            env=environment,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=stderr_file,
        )
        channel = grpc.insecure_channel(address)
        handle = SidecarProcess(
            process=process,
            port=port,
            data_dir=data_dir,
            stderr_path=stderr_path,
            channel=channel,
            stub=pb_grpc.RulesSidecarServiceStub(channel),
            health_stub=health_pb2_grpc.HealthStub(channel),
            _stderr_file=stderr_file,
        )
        started.append(handle)
        if wait:
            handle.wait_until_serving()
        return handle

    yield start
    for handle in started:
        handle.close()


# ---------------------------------------------------------------------------------------------
# Loopback HTTP upstreams (tests/upstreams.py)
# ---------------------------------------------------------------------------------------------

from upstreams import Upstream, closed_port  # noqa: E402


@pytest.fixture
def upstream() -> Iterator[Upstream]:
    """Real HTTP upstreams on 127.0.0.1 (see tests/upstreams.py), stopped at teardown."""
    server = Upstream()
    yield server
    server.close()


@pytest.fixture
def refused_url() -> str:
    """An http:// URL on a loopback port nothing listens on: connecting is refused."""
    return f"http://127.0.0.1:{closed_port()}/orders/A-10023"


@pytest.fixture(scope="module")
def module_upstream() -> Iterator[Upstream]:
    """One set of upstreams for a whole test module; `reset()` it between tests."""
    server = Upstream()
    yield server
    server.close()


@pytest.fixture(scope="module")
def module_sidecar_factory(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Callable[..., InProcessSidecar]]:
    """Like `sidecar_factory`, but each sidecar lives for the whole test module.

    For tables of read-only calls (evaluations, extractions) that need not pay a start-up per
    row. Tests sharing one sidecar must not depend on each other's registrations or counters.
    """
    root = tmp_path_factory.mktemp("module-sidecars")
    started: list[tuple[_ServerThread, grpc.Channel]] = []

    def start(**overrides: Any) -> InProcessSidecar:
        overrides.setdefault("data_dir", root / f"data-{len(started)}")
        overrides.setdefault("listen_address", "127.0.0.1:0")
        with pytest.MonkeyPatch.context() as patch:
            for name in list(os.environ):
                if name.startswith(ENV_PREFIX):
                    patch.delenv(name)
            settings = Settings.load(overrides=overrides)
            thread = _ServerThread(settings, grace=1.0)
            thread.start()
            try:
                thread.wait_started()
            except BaseException:
                thread.stop()
                raise
        channel = grpc.insecure_channel(f"127.0.0.1:{thread.port}")
        started.append((thread, channel))
        return InProcessSidecar(
            settings, thread.port, channel, pb_grpc.RulesSidecarServiceStub(channel)
        )

    yield start
    for thread, channel in reversed(started):
        channel.close()
        thread.stop()
