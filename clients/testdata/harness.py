"""A real sidecar and a real loopback upstream for the clients' tests, in every language.

    .venv/bin/python clients/testdata/harness.py

Starts, on free loopback ports:

- an HTTP upstream (aiohttp) that answers `/vectors/<case name>/...` with that case's canned
  `upstream` response from vectors.json (status, headers, JSON `body` or text `body_text`; a case
  may require request headers, e.g. the API key the sidecar adds), and `/slow/...` after
  SLOW_SECONDS;
- a silent TCP listener that accepts connections and never answers, to show that a client's
  default deadline bounds a call to a sidecar that hangs;
- the real sidecar, `.venv/bin/rules-sidecar serve --config <settings file>`, on TCP and on a unix
  socket, with its own empty store and a secrets directory holding the `vector_api_key` secret;
- two secured sidecars for the clients' credential tests, both requiring bearer tokens (an admin
  and an evaluation token file) and serving TLS with a certificate for 127.0.0.1 and localhost from
  a throwaway CA (trustme): `secure_sidecar` (TLS) and `mtls_sidecar` (also requires a client
  certificate from that CA).

When every sidecar's health check says SERVING, prints ONE JSON line on stdout and flushes it:

    {"sidecar": "127.0.0.1:P", "sidecar_unix": "unix:/tmp/.../sidecar.sock",
     "upstream": "http://127.0.0.1:U", "silent": "127.0.0.1:S",
     "secure_sidecar": "127.0.0.1:T", "mtls_sidecar": "127.0.0.1:M",
     "ca_file": ".../ca.pem", "client_cert_file": ".../client.pem",
     "client_key_file": ".../client.key", "admin_token": "...", "evaluation_token": "..."}

(PEM files; the client key is PKCS#8, which every client's TLS stack reads. The tokens are the
contents of the sidecars' token files, which the tests never change: a test that rotates a token
rotates its own client-side file.)

then runs until its stdin closes or it gets SIGTERM/SIGINT (at any time, startup included), stops
the sidecar and removes its temporary directory. Tests replace `${UPSTREAM}` in the vectors' URL
templates with `upstream`. Diagnostics, and the sidecar's output if it fails to start, go to
stderr.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc
import trustme
import yaml
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from grpc_health.v1 import health_pb2, health_pb2_grpc

HOST = "127.0.0.1"
REPO_ROOT = Path(__file__).resolve().parents[2]
VECTORS_FILE = Path(__file__).with_name("vectors.json")
SIDECAR_COMMAND = (str(REPO_ROOT / ".venv" / "bin" / "rules-sidecar"), "serve")
SIDECAR_SETTINGS_PREFIX = "RULES_SIDECAR_"
VECTOR_SECRETS = {"vector_api_key": "vector-secret-4f1d"}
# Bound but never stored: the vector that expects SECRET_NOT_FOUND (an unbound secret would be
# refused at registration instead).
UNSTORED_SECRETS = ("no_such_secret",)
SLOW_SECONDS = 5.0
# Generous: four sidecar processes start at once, and on a loaded 2-core machine (load 16 was
# seen) 30 s was not always enough. A sidecar that exits fails at once; only a hung one waits.
STARTUP_DEADLINE_SECONDS = 90.0
STOP_DEADLINE_SECONDS = 10.0
# Fixed, not secret: throwaway tokens of a throwaway sidecar (at least 16 characters each).
TOKENS = {"admin": "harness-admin-token-7c2e91", "evaluation": "harness-evaluation-token-3b8d"}


def sidecar_settings(workdir: Path, port: int) -> dict[str, Any]:
    """Every setting the harness gives the sidecar: the ONE place to change them.

    Written to a YAML file passed as `--config`, so any setting of `rules-sidecar serve` can be
    added here, flags or not.
    """
    return {
        "listen_address": f"{HOST}:{port}",
        "unix_socket": str(workdir / "sidecar.sock"),
        "data_dir": str(workdir / "data"),
        "secrets_dir": str(workdir / "secrets"),
        "log_level": "WARNING",
        "shutdown_grace_seconds": 1.0,
        # The upstream is plain http on loopback, which the egress guard refuses by default.
        "egress_allow_cidrs": [f"{HOST}/32"],
        "egress_allow_http_hosts": [HOST],
        "secret_hosts": {name: [HOST] for name in (*VECTOR_SECRETS, *UNSTORED_SECRETS)},
    }


def secured_settings(workdir: Path, name: str, port: int, *, mutual: bool) -> dict[str, Any]:
    """A sidecar that requires tokens and serves TLS (mTLS when `mutual`), on TCP only."""
    tls = workdir / "tls"
    settings = sidecar_settings(workdir, port)
    del settings["unix_socket"]
    settings["data_dir"] = str(workdir / name / "data")
    settings |= {
        "admin_token_file": str(workdir / "tokens" / "admin"),
        "evaluation_token_file": str(workdir / "tokens" / "evaluation"),
        "tls_cert_file": str(tls / "server.pem"),
        "tls_key_file": str(tls / "server.key"),
    }
    if mutual:
        settings["tls_client_ca_file"] = str(tls / "ca.pem")
    return settings


def write_credentials(workdir: Path) -> dict[str, str]:
    """The token files and a throwaway CA's PEM files; returns what the clients need."""
    tokens = workdir / "tokens"
    tokens.mkdir()
    for role, token in TOKENS.items():
        (tokens / role).write_text(token + "\n")
    tls = workdir / "tls"
    tls.mkdir()
    authority = trustme.CA()
    server = authority.issue_cert(HOST, "localhost")
    client = authority.issue_cert("client.rules-sidecar.test")
    authority.cert_pem.write_to_path(str(tls / "ca.pem"))
    server.cert_chain_pems[0].write_to_path(str(tls / "server.pem"))
    server.private_key_pem.write_to_path(str(tls / "server.key"))
    client.cert_chain_pems[0].write_to_path(str(tls / "client.pem"))
    (tls / "client.key").write_bytes(pkcs8(client.private_key_pem.bytes()))
    return {
        "ca_file": str(tls / "ca.pem"),
        "client_cert_file": str(tls / "client.pem"),
        "client_key_file": str(tls / "client.key"),
        "admin_token": TOKENS["admin"],
        "evaluation_token": TOKENS["evaluation"],
    }


def health_tls(credentials: dict[str, str], *, mutual: bool) -> grpc.ChannelCredentials:
    """What the harness's own health checks of a secured sidecar connect with."""
    ca = Path(credentials["ca_file"]).read_bytes()
    if not mutual:
        return grpc.ssl_channel_credentials(ca)
    key = Path(credentials["client_key_file"]).read_bytes()
    chain = Path(credentials["client_cert_file"]).read_bytes()
    return grpc.ssl_channel_credentials(ca, key, chain)


def pkcs8(private_key_pem: bytes) -> bytes:
    """The key as PKCS#8 PEM: Java's TLS stack reads no other form."""
    key = serialization.load_pem_private_key(private_key_pem, password=None)
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def free_port() -> int:
    """A loopback port that was free a moment ago."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind((HOST, 0))
        return int(probe.getsockname()[1])


def upstream_application(cases: dict[str, dict[str, Any]]) -> web.Application:
    """The canned answers of vectors.json by case name, plus the slow route."""

    async def vector(request: web.Request) -> web.Response:
        case = cases.get(request.match_info["name"])
        if case is None:
            return web.json_response({"error": "no such vector"}, status=404)
        canned = case["upstream"]
        for name, value in canned.get("require_headers", {}).items():
            if request.headers.get(name) != value:
                return web.json_response({"error": f"missing or wrong {name}"}, status=401)
        if "body_text" in canned:
            body = canned["body_text"].encode()
        else:
            body = json.dumps(canned.get("body"), separators=(",", ":")).encode()
        headers = {"Content-Type": "application/json", **canned.get("headers", {})}
        return web.Response(status=canned["status"], body=body, headers=headers)

    async def slow(_: web.Request) -> web.Response:
        await asyncio.sleep(SLOW_SECONDS)
        return web.json_response({"status": "late"})

    app = web.Application()
    app.router.add_route("*", "/vectors/{name}/{tail:.*}", vector)
    app.router.add_route("*", "/slow/{tail:.*}", slow)
    return app


async def wait_until_serving(
    address: str,
    process: asyncio.subprocess.Process,
    credentials: grpc.ChannelCredentials | None = None,
) -> None:
    """Poll the sidecar's health check until SERVING; raise if it exits or takes too long."""
    deadline = time.monotonic() + STARTUP_DEADLINE_SECONDS
    channel = (
        grpc.aio.insecure_channel(address)
        if credentials is None
        else grpc.aio.secure_channel(address, credentials)
    )
    async with channel:
        health = health_pb2_grpc.HealthStub(channel)
        while time.monotonic() < deadline:
            if process.returncode is not None:
                raise RuntimeError(f"the sidecar exited with code {process.returncode}")
            with contextlib.suppress(grpc.aio.AioRpcError):
                answer = await health.Check(health_pb2.HealthCheckRequest(), timeout=1.0)
                if answer.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            await asyncio.sleep(0.1)
    raise RuntimeError(f"the sidecar was not SERVING within {STARTUP_DEADLINE_SECONDS} s")


async def stop_sidecar(process: asyncio.subprocess.Process) -> None:
    if process.returncode is not None:
        return
    process.terminate()
    try:
        await asyncio.wait_for(process.wait(), STOP_DEADLINE_SECONDS)
    except TimeoutError:
        process.kill()
        await process.wait()


async def stdin_closed() -> None:
    """Return when stdin reaches end of file."""
    loop = asyncio.get_running_loop()
    closed = asyncio.Event()

    def read_until_end_of_file() -> None:
        while os.read(sys.stdin.fileno(), 65536):
            pass
        loop.call_soon_threadsafe(closed.set)

    # A daemon thread, not connect_read_pipe (stdin may be a file, a pipe or a terminal), and not
    # the default executor, whose shutdown would wait for a read that may never end. os.read, not
    # sys.stdin: a buffered reader's lock held by this thread would abort the interpreter's exit.
    threading.Thread(target=read_until_end_of_file, daemon=True).start()
    await closed.wait()


async def start_sidecar(
    workdir: Path,
    name: str,
    settings: dict[str, Any],
    credentials: grpc.ChannelCredentials | None = None,
) -> asyncio.subprocess.Process:
    """Start one sidecar with `settings` and wait until SERVING; its output goes to a file that is
    copied to stderr if it fails to start."""
    settings_file = workdir / f"{name}.yaml"
    settings_file.write_text(yaml.safe_dump(settings))
    stderr_path = workdir / f"{name}.stderr"
    environment = {k: v for k, v in os.environ.items() if not k.startswith(SIDECAR_SETTINGS_PREFIX)}
    with stderr_path.open("wb") as stderr:
        process = await asyncio.create_subprocess_exec(
            *SIDECAR_COMMAND,
            "--config",
            str(settings_file),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=stderr,
            stderr=stderr,
            env=environment,
            cwd=workdir,
        )
    try:
        await wait_until_serving(settings["listen_address"], process, credentials)
    except RuntimeError as error:
        await stop_sidecar(process)
        sys.stderr.write(stderr_path.read_text(errors="replace"))
        raise RuntimeError(f"{name}: {error}") from error
    except asyncio.CancelledError:  # SIGTERM during startup: no sidecar left behind
        await stop_sidecar(process)
        raise
    return process


async def main() -> None:
    # SIGTERM/SIGINT cancel this task, at startup too, so the `finally` below always runs.
    task = asyncio.current_task()
    assert task is not None
    for signum in (signal.SIGTERM, signal.SIGINT):
        asyncio.get_running_loop().add_signal_handler(signum, task.cancel)
    cases = {case["name"]: case for case in json.loads(VECTORS_FILE.read_text())["cases"]}
    workdir = Path(tempfile.mkdtemp(prefix="rules-sidecar-harness-"))
    runner = web.AppRunner(upstream_application(cases), handle_signals=False)
    silent_connections: list[asyncio.StreamWriter] = []
    starting: list[asyncio.Task[asyncio.subprocess.Process]] = []
    silent: asyncio.Server | None = None
    try:
        await runner.setup()
        upstream_socket = socket.create_server((HOST, 0))
        upstream_port = upstream_socket.getsockname()[1]
        await web.SockSite(runner, upstream_socket, shutdown_timeout=0.5).start()

        async def hold(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            silent_connections.append(writer)  # never read, never answered, closed at the end

        silent = await asyncio.start_server(hold, HOST, 0)
        silent_port = silent.sockets[0].getsockname()[1]

        secrets = workdir / "secrets"
        secrets.mkdir()
        for name, value in VECTOR_SECRETS.items():
            (secrets / name).write_text(value)
        credentials = write_credentials(workdir)
        plain = sidecar_settings(workdir, free_port())
        secure = secured_settings(workdir, "secure", free_port(), mutual=False)
        mutual = secured_settings(workdir, "mtls", free_port(), mutual=True)
        # Started together: three sidecars, one startup's wait.
        starting = [
            asyncio.create_task(start_sidecar(workdir, "sidecar", plain)),
            asyncio.create_task(
                start_sidecar(workdir, "secure", secure, health_tls(credentials, mutual=False))
            ),
            asyncio.create_task(
                start_sidecar(workdir, "mtls", mutual, health_tls(credentials, mutual=True))
            ),
        ]
        await asyncio.gather(*starting)
        addresses = {
            "sidecar": plain["listen_address"],
            "sidecar_unix": f"unix:{plain['unix_socket']}",
            "upstream": f"http://{HOST}:{upstream_port}",
            "silent": f"{HOST}:{silent_port}",
            "secure_sidecar": secure["listen_address"],
            "mtls_sidecar": mutual["listen_address"],
            **credentials,
        }
        print(json.dumps(addresses), flush=True)
        await stdin_closed()
    finally:
        if silent is not None:
            silent.close()
        for started in starting:
            if not started.done():
                started.cancel()
        await asyncio.gather(*starting, return_exceptions=True)
        await asyncio.gather(
            *(
                stop_sidecar(started.result())
                for started in starting
                if not started.cancelled() and started.exception() is None
            )
        )
        for writer in silent_connections:
            writer.close()
        await runner.cleanup()
        shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    try:
        asyncio.run(main())
    except asyncio.CancelledError:  # SIGTERM or SIGINT: cleaned up, a normal end
        pass
    except RuntimeError as error:
        print(f"harness: {error}", file=sys.stderr)
        sys.exit(1)
