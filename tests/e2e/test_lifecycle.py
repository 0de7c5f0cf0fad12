"""The sidecar's life as a process: start, load, persist, crash, drain, stop.

Every test runs the real `rules-sidecar serve` in a subprocess (the `sidecar_process` fixture)
and talks to it over loopback gRPC with the synchronous API.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.descriptor_pool import DescriptorPool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar.errors import ConfigError
from sidecar.registry import ConnectorStore
from sidecar.server import check_protected_mode, create_server
from sidecar.settings import Settings
from sidecar.telemetry.instruments import Telemetry
from tests.support.sidecars import (
    EXAMPLE_CONNECTORS_FILE,
    SERVE_COMMAND,
    STARTUP_DEADLINE_SECONDS,
    InProcessSidecar,
    SidecarProcess,
    example_connectors,
    example_secret_hosts,
    free_loopback_port,
    hide_sidecar_environment,
    sidecar_environment,
)

pytestmark = pytest.mark.process  # runs `rules-sidecar` itself, not only via the fixture

SERVICE_NAME = "rulesidecar.v1.RulesSidecarService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
RPC_TIMEOUT = 5.0

StartSidecar = Callable[..., SidecarProcess]


def connector(connector_id: str, display_name: str = "") -> pb.Connector:
    return pb.Connector(
        id=connector_id,
        display_name=display_name,
        status=pb.CONNECTOR_STATUS_LIVE,
        url_template="https://api.example.com/orders/{{order_number}}",
    )


def register(stub: pb_grpc.RulesSidecarServiceStub, definition: pb.Connector) -> int:
    """Register and return the new version."""
    request = pb.RegisterConnectorRequest(connector=definition)
    return int(stub.RegisterConnector(request, timeout=RPC_TIMEOUT).connector.version)


def versions(stub: pb_grpc.RulesSidecarServiceStub) -> dict[str, int]:
    """Every connector's id and version (one page holds them all in these tests)."""
    response = stub.ListConnectors(pb.ListConnectorsRequest(page_size=500), timeout=RPC_TIMEOUT)
    assert response.next_page_token == ""
    return {item.id: item.version for item in response.connectors}


def get(stub: pb_grpc.RulesSidecarServiceStub, connector_id: str) -> pb.Connector:
    request = pb.GetConnectorRequest(id=connector_id)
    response: pb.GetConnectorResponse = stub.GetConnector(request, timeout=RPC_TIMEOUT)
    return response.connector


def run_serve_until_exit(*args: str) -> subprocess.CompletedProcess[str]:
    """Run `rules-sidecar serve` on a free port and wait for it to exit by itself."""
    command = [*SERVE_COMMAND, "--listen", f"127.0.0.1:{free_loopback_port()}", *args]
    return subprocess.run(
        command,
        capture_output=True,
        text=True,
        env=sidecar_environment(),
        timeout=STARTUP_DEADLINE_SECONDS * 2,
        check=False,
    )


@contextlib.contextmanager
def store_write_lock(data_dir: Path, begin: str = "BEGIN IMMEDIATE") -> Iterator[None]:
    """Hold SQLite's write lock on the sidecar's store, as another process would.

    The store is created first if missing: an empty file made by sqlite3 here would be a
    damaged store, which the sidecar refuses rather than waits on."""
    data_dir.mkdir(parents=True, exist_ok=True)
    if not (data_dir / "connectors.sqlite3").exists():
        ConnectorStore(data_dir / "connectors.sqlite3").close()
    database = sqlite3.connect(data_dir / "connectors.sqlite3", isolation_level=None)
    try:
        database.execute(begin)
        yield
        database.execute("ROLLBACK")
    finally:
        database.close()


# ---------------------------------------------------------------------------------------------
# Persistence
# ---------------------------------------------------------------------------------------------


def test_connectors_and_versions_survive_a_clean_restart(sidecar_process: StartSidecar) -> None:
    first = sidecar_process()
    register(first.stub, connector("alpha"))
    for revision in range(3):
        register(first.stub, connector("bravo", f"bravo r{revision}"))
    register(first.stub, connector("charlie"))
    register(first.stub, connector("charlie"))
    first.stub.DeleteConnector(pb.DeleteConnectorRequest(id="charlie"), timeout=RPC_TIMEOUT)

    assert first.terminate() == 0
    second = sidecar_process(first.data_dir)

    assert versions(second.stub) == {"alpha": 1, "bravo": 3}
    assert get(second.stub, "bravo").display_name == "bravo r2"
    assert get(second.stub, "bravo").source == pb.CONNECTOR_SOURCE_API
    # The deleted connector's last version (2) survived too: the next one is 3, never 1 again.
    assert register(second.stub, connector("charlie")) == 3


def test_registrations_acknowledged_before_kill_9_survive_it(sidecar_process: StartSidecar) -> None:
    expected: dict[str, int] = {}
    data_dir: Path | None = None
    for round_number in range(5):
        sidecar = sidecar_process(data_dir)
        data_dir = sidecar.data_dir
        assert versions(sidecar.stub) == expected

        expected[f"round-{round_number}"] = register(
            sidecar.stub, connector(f"round-{round_number}")
        )
        expected["survivor"] = register(
            sidecar.stub, connector("survivor", f"written in round {round_number}")
        )
        sidecar.kill()  # SIGKILL right after the OK: no drain, no close, no checkpoint

    restarted = sidecar_process(data_dir)

    assert versions(restarted.stub) == expected
    assert expected == {"survivor": 5} | {f"round-{n}": 1 for n in range(5)}
    assert get(restarted.stub, "survivor").display_name == "written in round 4"


# ---------------------------------------------------------------------------------------------
# Startup failures: exit code 2, a message, no traceback
# ---------------------------------------------------------------------------------------------


def test_a_corrupt_store_stops_startup_with_exit_2_and_keeps_the_file(tmp_path: Path) -> None:
    data_dir = tmp_path / "data"
    data_dir.mkdir()
    garbage = b"this is not an SQLite database\n" * 200
    (data_dir / "connectors.sqlite3").write_bytes(garbage)

    result = run_serve_until_exit("--data-dir", str(data_dir))

    assert result.returncode == 2, result.stderr
    assert "cannot open the connector store" in result.stderr
    assert str(data_dir / "connectors.sqlite3") in result.stderr
    assert "Traceback" not in result.stderr
    assert (data_dir / "connectors.sqlite3").read_bytes() == garbage


def test_an_invalid_connectors_file_stops_startup_with_exit_2_listing_each_problem(
    tmp_path: Path,
) -> None:
    connectors_file = tmp_path / "connectors.yaml"
    connectors_file.write_text(
        "connectors:\n"
        "  - id: order-status\n"
        "    status: LIVE\n"
        "    url_template: ftp://api.store.com/orders/{{order_number}}\n"
        "  - id: Not A Slug\n"
        "    status: LIVE\n"
        "    url_template: https://api.store.com/orders\n"
        "    headers:\n"
        "      Authorization: Bearer sk-live-123\n"
    )

    result = run_serve_until_exit(
        "--data-dir", str(tmp_path / "data"), "--connectors-file", str(connectors_file)
    )

    assert result.returncode == 2, result.stderr
    assert "3 problem(s)" in result.stderr
    assert f"{connectors_file}:4: connectors[0].url_template: " in result.stderr
    assert f"{connectors_file}:5: connectors[1].id: " in result.stderr
    assert f'{connectors_file}:9: connectors[1].headers["Authorization"]: ' in result.stderr
    assert "sk-live-123" not in result.stderr
    assert "Traceback" not in result.stderr


def test_a_file_connector_carrying_a_secret_to_an_unbound_host_stops_startup_with_exit_2(
    tmp_path: Path,
) -> None:
    connectors_file = tmp_path / "connectors.yaml"
    connectors_file.write_text(
        "connectors:\n"
        "  - id: order-status\n"
        "    status: LIVE\n"
        "    url_template: https://api.store.com/orders/{{order_number}}\n"
        "    auth: {bearer: {token_secret: store_token}}\n"
    )
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text("secret_hosts: {store_token: [api.payments.example]}\n")

    result = run_serve_until_exit(
        "--config",
        str(config_file),
        "--data-dir",
        str(tmp_path / "data"),
        "--connectors-file",
        str(connectors_file),
    )

    assert result.returncode == 2, result.stderr
    assert (
        f"{connectors_file}:5: connectors[0].auth: connector 'order-status': secret "
        "'store_token' may only be sent to api.payments.example, not to 'api.store.com' (the "
        "secret_hosts setting)"
    ) in result.stderr
    assert "Traceback" not in result.stderr


VALIDATE_COMMAND = (sys.executable, "-m", "sidecar.cli", "validate")
UNBOUND_SECRET_FILE = (
    "connectors:\n"
    "  - id: order-status\n"
    "    status: LIVE\n"
    "    url_template: https://api.store.com/orders/{{order_number}}\n"
    "    auth: {bearer: {token_secret: store_token}}\n"
)
UNBOUND = (
    "secret 'store_token' is bound to no host: add it to the secret_hosts setting, e.g. "
    "secret_hosts: {store_token: [api.store.com]}"
)


def test_an_unbound_secret_is_refused_on_the_api_in_the_file_and_by_validate(
    sidecar_process: StartSidecar, tmp_path: Path
) -> None:
    """One connector whose secret has no secret_hosts entry, through the three doors."""
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text("secret_hosts: {other_token: [api.store.com]}\n")
    connectors_file = tmp_path / "connectors.yaml"
    connectors_file.write_text(UNBOUND_SECRET_FILE)
    sidecar = sidecar_process(args=["--config", str(config_file)])
    with_secret = pb.Connector(
        id="order-status",
        status=pb.CONNECTOR_STATUS_LIVE,
        url_template="https://api.store.com/orders/{{order_number}}",
        auth=pb.Auth(bearer=pb.BearerAuth(token_secret="store_token")),
    )

    with pytest.raises(grpc.RpcError) as on_the_api:
        register(sidecar.stub, with_secret)
    in_the_file = run_serve_until_exit(
        "--config",
        str(config_file),
        "--data-dir",
        str(tmp_path / "other-data"),
        "--connectors-file",
        str(connectors_file),
    )
    by_validate = subprocess.run(
        [*VALIDATE_COMMAND, str(connectors_file), "--config", str(config_file)],
        capture_output=True,
        text=True,
        env=sidecar_environment(),
        timeout=STARTUP_DEADLINE_SECONDS,
        check=False,
    )

    assert on_the_api.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "connector.auth" in on_the_api.value.details()
    assert UNBOUND in on_the_api.value.details()
    assert versions(sidecar.stub) == {}
    located = f"{connectors_file}:5: connectors[0].auth: connector 'order-status': {UNBOUND}"
    assert in_the_file.returncode == 2, in_the_file.stderr
    assert located in in_the_file.stderr
    assert by_validate.returncode == 1, by_validate.stderr
    assert located in by_validate.stderr
    for result in (in_the_file, by_validate):
        assert "Traceback" not in result.stderr


def test_a_non_loopback_api_without_a_token_is_refused_naming_the_fixes(tmp_path: Path) -> None:
    address = f"0.0.0.0:{free_loopback_port()}"

    result = run_serve_until_exit("--listen", address, "--data-dir", str(tmp_path / "data"))

    assert result.returncode == 2, result.stderr
    assert (
        f"rules-sidecar: error: protected mode: listen_address {address} is not loopback and "
        "the API requires no token"
    ) in result.stderr
    assert "admin_token_file" in result.stderr
    assert "allow_unprotected_api: true" in result.stderr
    assert "listening on" not in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("address", "protection", "refused"),
    [
        ("127.0.0.1:50051", {}, False),
        ("127.9.9.9:50051", {}, False),
        ("localhost:50051", {}, False),
        ("[::1]:50051", {}, False),
        ("unix:/run/sidecar.sock", {}, False),
        ("0.0.0.0:50051", {}, True),
        ("[::]:50051", {}, True),
        (":50051", {}, True),
        ("10.1.2.3:50051", {}, True),
        ("sidecar.shop.svc:50051", {}, True),  # a name may resolve anywhere
        ("0.0.0.0:50051", {"admin_token_file": "admin-token"}, False),
        ("0.0.0.0:50051", {"evaluation_token_file": "token"}, False),  # admin RPCs closed
        ("0.0.0.0:50051", {"tls_client_ca_file": "ca.pem"}, False),  # mTLS: clients proven
        ("0.0.0.0:50051", {"allow_unprotected_api": True}, False),
    ],
)
def test_protected_mode_refuses_only_an_open_api_beyond_loopback(
    address: str, protection: dict[str, object], refused: bool
) -> None:
    settings = Settings.model_construct(
        **{**Settings.model_construct().__dict__, "listen_address": address, **protection}
    )

    if refused:
        with pytest.raises(ConfigError, match="protected mode"):
            check_protected_mode(settings)
    else:
        check_protected_mode(settings)


def test_a_non_loopback_api_starts_with_a_token_or_with_a_loud_warning(
    sidecar_factory: Callable[..., InProcessSidecar],
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("an-admin-token-of-some-length\n")
    caplog.set_level(logging.WARNING, logger="sidecar.server")

    with_token = sidecar_factory(listen_address="0.0.0.0:0", admin_token_file=token_file)
    warnings_with_token = [r.getMessage() for r in caplog.records]
    allowed = sidecar_factory(listen_address="[::]:0", allow_unprotected_api=True)

    for sidecar in (with_token, allowed):
        health = health_pb2_grpc.HealthStub(sidecar.channel)
        answer = health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT)
        assert answer.status == SERVING
    assert warnings_with_token == []
    (warning,) = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert warning.getMessage().startswith("UNPROTECTED API: listen_address [::]:0")
    assert "allow_unprotected_api is on" in warning.getMessage()


def test_a_data_dir_that_is_a_file_stops_startup_saying_what_to_fix(tmp_path: Path) -> None:
    data_file = tmp_path / "data"
    data_file.write_text("not a directory\n")
    below_a_file = data_file / "store"

    is_a_file = run_serve_until_exit("--data-dir", str(data_file))
    cannot_create = run_serve_until_exit("--data-dir", str(below_a_file))

    assert is_a_file.returncode == 2, is_a_file.stderr
    assert (
        f"data_dir {data_file} is a file, not a directory: point data_dir "
        "(RULES_SIDECAR_DATA_DIR, --data-dir) at a directory, or move the file aside"
    ) in is_a_file.stderr
    assert cannot_create.returncode == 2, cannot_create.stderr
    assert f"cannot create data_dir {below_a_file} (Not a directory)" in cannot_create.stderr
    assert "point data_dir (RULES_SIDECAR_DATA_DIR, --data-dir)" in cannot_create.stderr
    for result in (is_a_file, cannot_create):
        assert "File exists" not in result.stderr
        assert "listening on" not in result.stderr
        assert "Traceback" not in result.stderr


def test_a_missing_secrets_dir_stops_startup_naming_it(tmp_path: Path) -> None:
    missing = tmp_path / "secrets"

    result = run_serve_until_exit(
        "--data-dir", str(tmp_path / "data"), "--secrets-dir", str(missing)
    )

    assert result.returncode == 2, result.stderr
    assert f"secrets_dir {missing} does not exist: mount the secrets there" in result.stderr
    assert "RULES_SECRET_*" in result.stderr
    assert "Traceback" not in result.stderr


def test_a_second_sidecar_on_the_same_data_dir_is_refused(sidecar_process: StartSidecar) -> None:
    running = sidecar_process()

    result = run_serve_until_exit("--data-dir", str(running.data_dir))

    assert result.returncode == 2, result.stderr
    assert "another rules-sidecar process is using the store" in result.stderr
    assert "Traceback" not in result.stderr
    assert running.health_status() == SERVING


def test_a_port_in_use_stops_startup_with_exit_2(
    sidecar_process: StartSidecar, tmp_path: Path
) -> None:
    running = sidecar_process()

    result = subprocess.run(
        [*SERVE_COMMAND, "--listen", running.address, "--data-dir", str(tmp_path / "other")],
        capture_output=True,
        text=True,
        env=sidecar_environment(),
        timeout=STARTUP_DEADLINE_SECONDS * 2,
        check=False,
    )

    assert result.returncode == 2, result.stderr
    assert f"cannot listen on {running.address}" in result.stderr
    assert "Traceback" not in result.stderr


# ---------------------------------------------------------------------------------------------
# Health
# ---------------------------------------------------------------------------------------------


def test_health_is_not_serving_until_the_store_is_loaded_then_serving(
    sidecar_process: StartSidecar, tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    # Another process holds the store: loading waits on the busy timeout, the port is up.
    with store_write_lock(data_dir, "BEGIN EXCLUSIVE"):
        sidecar = sidecar_process(
            data_dir, env={"RULES_SIDECAR_STORE_BUSY_TIMEOUT_SECONDS": "30"}, wait=False
        )
        first_answer = _first_health_answer(sidecar)
        loading = {service: sidecar.health_status(service) for service in ("", SERVICE_NAME)}
        with pytest.raises(grpc.RpcError) as refused:
            sidecar.stub.ListConnectors(pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT)

    sidecar.wait_until_serving()

    assert first_answer == NOT_SERVING
    assert loading == {"": NOT_SERVING, SERVICE_NAME: NOT_SERVING}
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE
    assert "loading" in refused.value.details()
    assert {service: sidecar.health_status(service) for service in ("", SERVICE_NAME)} == {
        "": SERVING,
        SERVICE_NAME: SERVING,
    }
    assert versions(sidecar.stub) == {}


def test_the_health_port_serves_health_and_nothing_else(sidecar_process: StartSidecar) -> None:
    health_address = f"127.0.0.1:{free_loopback_port()}"
    sidecar = sidecar_process(env={"RULES_SIDECAR_HEALTH_LISTEN_ADDRESS": health_address})

    with grpc.insecure_channel(health_address) as channel:
        health = health_pb2_grpc.HealthStub(channel)
        statuses = {
            service: health.Check(
                health_pb2.HealthCheckRequest(service=service), timeout=RPC_TIMEOUT
            ).status
            for service in ("", SERVICE_NAME)
        }
        with pytest.raises(grpc.RpcError) as api_call:
            pb_grpc.RulesSidecarServiceStub(channel).ListConnectors(
                pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT
            )
        with pytest.raises(grpc.RpcError) as reflection_call:
            ProtoReflectionDescriptorDatabase(channel).get_services()

    assert statuses == {"": SERVING, SERVICE_NAME: SERVING}
    assert api_call.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert reflection_call.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert versions(sidecar.stub) == {}  # the API is on its own port
    assert sidecar.health_status() == SERVING  # and keeps health for clients that check it
    assert f"health (only) listening on {health_address}" in sidecar.stderr_text()


def test_a_bound_server_refuses_every_service_call_until_a_servicer_is_handed_over(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # create_server alone, on port 0: what the process serves while its store is loading.
    hide_sidecar_environment(monkeypatch)
    settings = Settings.load(overrides={"listen_address": "127.0.0.1:0", "data_dir": tmp_path})
    requests = {
        "RegisterConnector": pb.RegisterConnectorRequest(connector=connector("alpha")),
        "GetConnector": pb.GetConnectorRequest(id="alpha"),
        "ListConnectors": pb.ListConnectorsRequest(),
        "DeleteConnector": pb.DeleteConnectorRequest(id="alpha"),
        "EvaluateNode": pb.EvaluateNodeRequest(),
        "ExtractVariables": pb.ExtractVariablesRequest(),
    }

    async def scenario() -> tuple[int, dict[str, tuple[grpc.StatusCode, str]]]:
        server = create_server(settings, Telemetry())
        await server.start()
        answers = {}
        try:
            async with grpc.aio.insecure_channel(f"127.0.0.1:{server.port}") as channel:
                health = health_pb2_grpc.HealthStub(channel)
                check = health_pb2.HealthCheckRequest(service=SERVICE_NAME)
                status = (await health.Check(check, timeout=RPC_TIMEOUT)).status
                stub = pb_grpc.RulesSidecarServiceStub(channel)
                for method, request in requests.items():
                    try:
                        await getattr(stub, method)(request, timeout=RPC_TIMEOUT)
                    except grpc.aio.AioRpcError as error:
                        answers[method] = (error.code(), error.details() or "")
        finally:
            await server.stop(grace=0)
        return status, answers

    status, answers = asyncio.run(scenario())

    assert status == NOT_SERVING
    loading = "the sidecar is still loading its connectors; retry shortly"
    assert answers == dict.fromkeys(requests, (grpc.StatusCode.UNAVAILABLE, loading))


def _first_health_answer(sidecar: SidecarProcess) -> int:
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        assert sidecar.process.poll() is None, sidecar.stderr_text()
        with contextlib.suppress(grpc.RpcError):
            return sidecar.health_status()
        time.sleep(0.05)
    pytest.fail(f"no health answer in time:\n{sidecar.stderr_text()}")


@pytest.mark.parametrize("service", ["", SERVICE_NAME], ids=["server", "service"])
def test_sigterm_turns_health_not_serving_before_the_process_exits(
    sidecar_process: StartSidecar, service: str
) -> None:
    sidecar = sidecar_process()
    watch = sidecar.health_stub.Watch(
        health_pb2.HealthCheckRequest(service=service), timeout=STARTUP_DEADLINE_SECONDS
    )
    try:
        before = next(watch).status
        sidecar.process.send_signal(signal.SIGTERM)
        after = next(watch).status
        still_running = sidecar.process.poll() is None
    finally:
        watch.cancel()  # an open Watch is an in-flight call: it would hold up the drain

    assert (before, after) == (SERVING, NOT_SERVING)
    assert still_running
    assert sidecar.process.wait(STARTUP_DEADLINE_SECONDS) == 0


# ---------------------------------------------------------------------------------------------
# Graceful drain
# ---------------------------------------------------------------------------------------------


def _wait_until_the_store_writer_is_busy(sidecar: SidecarProcess) -> None:
    """Return once a write holds the registry's write lock.

    DeleteConnector of an absent id takes the same write lock before answering NOT_FOUND, so
    while a registration is stuck in the store it cannot answer within its short deadline.
    """
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    while time.monotonic() < deadline:
        with pytest.raises(grpc.RpcError) as probe:
            sidecar.stub.DeleteConnector(pb.DeleteConnectorRequest(id="probe"), timeout=0.5)
        if probe.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED:
            return
        assert probe.value.code() == grpc.StatusCode.NOT_FOUND, probe.value.details()
    pytest.fail("the registration never reached the store")


def _first_refusal(address: str, deadline_seconds: float) -> grpc.RpcError:
    """Call GetConnector on fresh channels until one is refused with UNAVAILABLE."""
    deadline = time.monotonic() + deadline_seconds
    while time.monotonic() < deadline:
        with grpc.insecure_channel(address) as channel:
            stub = pb_grpc.RulesSidecarServiceStub(channel)
            try:
                stub.GetConnector(pb.GetConnectorRequest(id="alpha"), timeout=1.0)
            except grpc.RpcError as error:
                # CANCELLED: the call reached the server while it began shutting down.
                if error.code() != grpc.StatusCode.CANCELLED:
                    return error
    pytest.fail("new calls were still answered while draining")


def test_sigterm_drains_an_in_flight_call_and_refuses_new_ones(
    sidecar_process: StartSidecar, tmp_path: Path
) -> None:
    config_file = tmp_path / "sidecar.yaml"
    config_file.write_text("store_busy_timeout_seconds: 30\n")
    grace = {"RULES_SIDECAR_SHUTDOWN_GRACE_SECONDS": "30"}
    sidecar = sidecar_process(args=["--config", str(config_file)], env=grace)
    register(sidecar.stub, connector("alpha"))

    with store_write_lock(sidecar.data_dir):
        in_flight = sidecar.stub.RegisterConnector.future(
            pb.RegisterConnectorRequest(connector=connector("in-flight")),
            timeout=STARTUP_DEADLINE_SECONDS * 3,
        )
        _wait_until_the_store_writer_is_busy(sidecar)
        sidecar.process.send_signal(signal.SIGTERM)
        refusal = _first_refusal(sidecar.address, STARTUP_DEADLINE_SECONDS)
        draining = not in_flight.done()

    response = in_flight.result()
    exit_code = sidecar.process.wait(STARTUP_DEADLINE_SECONDS)

    assert refusal.code() == grpc.StatusCode.UNAVAILABLE, refusal.details()
    assert draining
    assert (response.created, response.connector.version) == (True, 1)
    assert exit_code == 0, sidecar.stderr_text()
    restarted = sidecar_process(sidecar.data_dir)
    assert versions(restarted.stub) == {"alpha": 1, "in-flight": 1}


# ---------------------------------------------------------------------------------------------
# Reflection, unix socket, settings from the environment
# ---------------------------------------------------------------------------------------------


def test_reflection_lists_the_services_and_describes_every_method(
    sidecar_process: StartSidecar,
) -> None:
    sidecar = sidecar_process()
    database = ProtoReflectionDescriptorDatabase(sidecar.channel)

    services = database.get_services()
    descriptor = DescriptorPool(database).FindServiceByName(SERVICE_NAME)

    assert {SERVICE_NAME, "grpc.health.v1.Health"} <= set(services)
    assert [method.name for method in descriptor.methods] == [
        "RegisterConnector",
        "GetConnector",
        "ListConnectors",
        "DeleteConnector",
        "EvaluateNode",
        "ExtractVariables",
    ]
    register_method = descriptor.methods_by_name["RegisterConnector"]
    assert register_method.input_type.full_name == "rulesidecar.v1.RegisterConnectorRequest"


def test_the_unix_socket_serves_the_registry_and_survives_a_stale_socket_file(
    sidecar_process: StartSidecar, tmp_path: Path
) -> None:
    socket_path = tmp_path / "sidecar.sock"
    first = sidecar_process(args=["--unix-socket", str(socket_path)])
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        over_socket = pb_grpc.RulesSidecarServiceStub(channel)
        register(over_socket, connector("via-socket"))
        register(first.stub, connector("via-tcp"))
        seen_over_socket = versions(over_socket)
    first.kill()  # leaves the socket file behind
    assert socket_path.is_socket()

    second = sidecar_process(first.data_dir, args=["--unix-socket", str(socket_path)])
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        after_restart = get(pb_grpc.RulesSidecarServiceStub(channel), "via-tcp")

    assert seen_over_socket == {"via-socket": 1, "via-tcp": 1}
    assert after_restart.version == 1
    assert second.health_status() == SERVING


def test_settings_come_from_the_environment(sidecar_process: StartSidecar) -> None:
    sidecar = sidecar_process(
        settings_via_env=True,
        env={
            "RULES_SIDECAR_CONNECTORS_FILE": str(EXAMPLE_CONNECTORS_FILE),
            "RULES_SIDECAR_SECRET_HOSTS": json.dumps(example_secret_hosts()),
            "RULES_SIDECAR_LOG_LEVEL": "WARNING",
        },
    )

    register(sidecar.stub, connector("from-api"))

    from_file = {definition["id"]: 1 for definition in example_connectors()}
    assert versions(sidecar.stub) == {**from_file, "from-api": 1}
    assert (sidecar.data_dir / "connectors.sqlite3").is_file()
    assert "is SERVING" not in sidecar.stderr_text()  # INFO is below the WARNING level


def test_flags_win_over_the_environment(sidecar_process: StartSidecar, tmp_path: Path) -> None:
    ignored_port = free_loopback_port()
    sidecar = sidecar_process(
        env={
            "RULES_SIDECAR_LISTEN_ADDRESS": f"127.0.0.1:{ignored_port}",
            "RULES_SIDECAR_DATA_DIR": str(tmp_path / "ignored-data"),
        }
    )

    register(sidecar.stub, connector("alpha"))

    assert sidecar.health_status() == SERVING  # on the port given by --listen
    assert (sidecar.data_dir / "connectors.sqlite3").is_file()
    assert not (tmp_path / "ignored-data").exists()
    with (
        grpc.insecure_channel(f"127.0.0.1:{ignored_port}") as channel,
        pytest.raises(grpc.RpcError) as unreachable,
    ):
        pb_grpc.RulesSidecarServiceStub(channel).ListConnectors(
            pb.ListConnectorsRequest(), timeout=1.0
        )
    assert unreachable.value.code() == grpc.StatusCode.UNAVAILABLE
