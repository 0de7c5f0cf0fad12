"""Who may call: bearer tokens from files (admin vs evaluation), TLS and mTLS.

An in-process sidecar with token files and/or certificates from `trustme`; every call goes over
the real wire. Tokens are searched for in the logs (DEBUG) and in every refusal.
"""

from __future__ import annotations

import functools
import logging
import os
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import trustme
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from grpc_status import rpc_status
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from tests.support.calls import RPC_TIMEOUT, connector_message, evaluate_request, verdict
from tests.support.sidecars import InProcessSidecar
from tests.support.upstreams import Upstream

ADMIN_TOKEN = "admin-token-3c9d1e7f0a2b4c6d"
EVALUATION_TOKEN = "evaluation-token-8e4f2a6b1c3d5e7f"
ROTATED_TOKEN = "evaluation-token-rotated-0f1e2d3c4b5a"
SERVING = health_pb2.HealthCheckResponse.SERVING


def bearer(token: str) -> tuple[tuple[str, str]]:
    return (("authorization", f"Bearer {token}"),)


@dataclass
class Tokens:
    admin: Path
    evaluation: Path


@pytest.fixture
def tokens(tmp_path: Path) -> Tokens:
    directory = tmp_path / "tokens"
    directory.mkdir()
    admin = directory / "admin"
    evaluation = directory / "evaluation"
    admin.write_text(ADMIN_TOKEN + "\n", encoding="utf-8")
    evaluation.write_text(EVALUATION_TOKEN + "\n", encoding="utf-8")
    return Tokens(admin, evaluation)


@pytest.fixture
def guarded(
    sidecar_factory: Callable[..., InProcessSidecar],
    tokens: Tokens,
    caplog: pytest.LogCaptureFixture,
) -> InProcessSidecar:
    """A sidecar that needs tokens (logs captured at DEBUG from its start)."""
    caplog.set_level(logging.DEBUG)
    return sidecar_factory(admin_token_file=tokens.admin, evaluation_token_file=tokens.evaluation)


def code_of(call: Callable[[], object]) -> grpc.StatusCode:
    """The status code of a call: OK, or the code of the RpcError it raised."""
    try:
        call()
    except grpc.RpcError as failure:
        return failure.code()
    return grpc.StatusCode.OK


def register_call(stub: pb_grpc.RulesSidecarServiceStub, metadata: object = None) -> object:
    connector = connector_message("guarded", "https://api.example.com/orders/{{order}}")
    return stub.RegisterConnector(
        pb.RegisterConnectorRequest(connector=connector), timeout=RPC_TIMEOUT, metadata=metadata
    )


def every_rpc(stub: pb_grpc.RulesSidecarServiceStub) -> dict[str, Callable[..., object]]:
    """One call per RPC of the service, taking the metadata to send."""
    extract = json_format.ParseDict(
        {"extractions": [{"variable": "x", "path": "a"}], "raw_json": "eyJhIjogMX0="},
        pb.ExtractVariablesRequest(),
    )
    return {
        "RegisterConnector": lambda metadata: register_call(stub, metadata),
        "DeleteConnector": lambda metadata: stub.DeleteConnector(
            pb.DeleteConnectorRequest(id="guarded"), timeout=RPC_TIMEOUT, metadata=metadata
        ),
        "GetConnector": lambda metadata: stub.GetConnector(
            pb.GetConnectorRequest(id="guarded"), timeout=RPC_TIMEOUT, metadata=metadata
        ),
        "ListConnectors": lambda metadata: stub.ListConnectors(
            pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT, metadata=metadata
        ),
        "EvaluateNode": lambda metadata: stub.EvaluateNode(
            evaluate_request("guarded"), timeout=RPC_TIMEOUT, metadata=metadata
        ),
        "ExtractVariables": lambda metadata: stub.ExtractVariables(
            extract, timeout=RPC_TIMEOUT, metadata=metadata
        ),
    }


ADMIN_RPCS = ("RegisterConnector", "DeleteConnector")
EVALUATION_RPCS = ("GetConnector", "ListConnectors", "EvaluateNode", "ExtractVariables")


# ---------------------------------------------------------------------------------------------
# Bearer tokens
# ---------------------------------------------------------------------------------------------

WRONG_CREDENTIALS = [
    pytest.param(None, id="none"),
    pytest.param((("authorization", "Bearer wrong-token-0000000000"),), id="wrong"),
    pytest.param((("authorization", f"Bearer {ADMIN_TOKEN[:-1]}"),), id="admin-prefix"),
    pytest.param((("authorization", f"Bearer {ADMIN_TOKEN}x"),), id="admin-plus-one"),
    pytest.param((("authorization", f"Basic {ADMIN_TOKEN}"),), id="not-bearer"),
    pytest.param((("authorization", "Bearer "),), id="empty"),
    pytest.param((("x-api-key", ADMIN_TOKEN),), id="other-header"),
]


@pytest.mark.parametrize("metadata", WRONG_CREDENTIALS)
def test_missing_or_wrong_token_is_unauthenticated_on_every_rpc(
    guarded: InProcessSidecar, metadata: object
) -> None:
    calls = every_rpc(guarded.stub)

    codes = {rpc: code_of(functools.partial(call, metadata)) for rpc, call in calls.items()}

    assert codes == dict.fromkeys(calls, grpc.StatusCode.UNAUTHENTICATED)


@pytest.mark.parametrize("rpc", ADMIN_RPCS)
def test_evaluation_token_on_an_admin_rpc_is_permission_denied(
    guarded: InProcessSidecar, rpc: str
) -> None:
    call = every_rpc(guarded.stub)[rpc]

    assert code_of(lambda: call(bearer(EVALUATION_TOKEN))) == grpc.StatusCode.PERMISSION_DENIED


@pytest.mark.parametrize("rpc", EVALUATION_RPCS)
def test_evaluation_token_is_accepted_on_evaluation_rpcs(
    guarded: InProcessSidecar, rpc: str
) -> None:
    register_call(guarded.stub, bearer(ADMIN_TOKEN))
    call = every_rpc(guarded.stub)[rpc]

    assert code_of(lambda: call(bearer(EVALUATION_TOKEN))) == grpc.StatusCode.OK


def test_admin_token_works_for_every_rpc(guarded: InProcessSidecar) -> None:
    calls = every_rpc(guarded.stub)
    order = ["RegisterConnector", *EVALUATION_RPCS, "DeleteConnector"]

    codes = {rpc: code_of(functools.partial(calls[rpc], bearer(ADMIN_TOKEN))) for rpc in order}

    assert codes == dict.fromkeys(order, grpc.StatusCode.OK)


@pytest.mark.parametrize(
    ("rpc", "metadata", "code", "message"),
    [
        (
            "ListConnectors",
            None,
            grpc.StatusCode.UNAUTHENTICATED,
            "a valid bearer token is required",
        ),
        (
            "DeleteConnector",
            bearer(EVALUATION_TOKEN),
            grpc.StatusCode.PERMISSION_DENIED,
            "this call needs the admin token",
        ),
    ],
    ids=["unauthenticated", "permission-denied"],
)
def test_refusals_come_from_the_one_status_table(
    guarded: InProcessSidecar,
    rpc: str,
    metadata: object,
    code: grpc.StatusCode,
    message: str,
) -> None:
    # As every SidecarError's status: the same code and message in the google.rpc.Status detail.
    with pytest.raises(grpc.RpcError) as caught:
        every_rpc(guarded.stub)[rpc](metadata)

    status = rpc_status.from_call(caught.value)
    assert (caught.value.code(), caught.value.details()) == (code, message)
    assert status is not None
    assert (status.code, status.message) == (code.value[0], message)


def test_lower_case_bearer_scheme_is_accepted(guarded: InProcessSidecar) -> None:
    metadata = (("authorization", f"bearer {ADMIN_TOKEN}"),)

    assert code_of(lambda: register_call(guarded.stub, metadata)) == grpc.StatusCode.OK


def test_health_and_reflection_need_no_token(guarded: InProcessSidecar) -> None:
    health = health_pb2_grpc.HealthStub(guarded.channel)
    reflection = reflection_pb2_grpc.ServerReflectionStub(guarded.channel)

    status = health.Check(health_pb2.HealthCheckRequest(), timeout=RPC_TIMEOUT).status
    listed = next(
        reflection.ServerReflectionInfo(
            iter([reflection_pb2.ServerReflectionRequest(list_services="")]), timeout=RPC_TIMEOUT
        )
    )

    assert status == SERVING
    services = {service.name for service in listed.list_services_response.service}
    assert "rulesidecar.v1.RulesSidecarService" in services


def test_rotated_token_file_is_picked_up_without_a_restart(
    guarded: InProcessSidecar, tokens: Tokens
) -> None:
    list_with = every_rpc(guarded.stub)["ListConnectors"]
    assert code_of(lambda: list_with(bearer(EVALUATION_TOKEN))) == grpc.StatusCode.OK

    # As Kubernetes rotates a mounted Secret: a new file swapped in under the same name.
    replacement = tokens.evaluation.with_name("evaluation.new")
    replacement.write_text(ROTATED_TOKEN + "\n", encoding="utf-8")
    os.replace(replacement, tokens.evaluation)

    assert code_of(lambda: list_with(bearer(ROTATED_TOKEN))) == grpc.StatusCode.OK
    assert code_of(lambda: list_with(bearer(EVALUATION_TOKEN))) == (grpc.StatusCode.UNAUTHENTICATED)


def test_with_only_an_evaluation_token_the_registry_cannot_be_changed(
    sidecar_factory: Callable[..., InProcessSidecar], tokens: Tokens
) -> None:
    sidecar = sidecar_factory(evaluation_token_file=tokens.evaluation)

    assert code_of(lambda: register_call(sidecar.stub, bearer(EVALUATION_TOKEN))) == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert code_of(lambda: register_call(sidecar.stub, bearer(ADMIN_TOKEN))) == (
        grpc.StatusCode.UNAUTHENTICATED
    )


def test_a_short_token_file_stops_startup(
    sidecar_factory: Callable[..., InProcessSidecar], tmp_path: Path
) -> None:
    short = tmp_path / "short-token"
    short.write_text("too-short\n", encoding="utf-8")

    with pytest.raises(Exception, match="fewer than 16 characters"):
        sidecar_factory(admin_token_file=short)


def test_tokens_never_appear_in_logs_or_refusals(
    guarded: InProcessSidecar, caplog: pytest.LogCaptureFixture, upstream: Upstream
) -> None:
    for name in ("sidecar", "grpc", "httpx", "aiohttp"):
        caplog.set_level(logging.DEBUG, logger=name)
    refusals: list[str] = []
    calls = every_rpc(guarded.stub)
    presented = [
        bearer(ADMIN_TOKEN),
        bearer(EVALUATION_TOKEN),
        bearer(ADMIN_TOKEN[:-1]),
        (("authorization", f"Basic {EVALUATION_TOKEN}"),),
    ]
    for metadata in presented:
        for rpc in ["RegisterConnector", *EVALUATION_RPCS, "DeleteConnector"]:
            try:
                calls[rpc](metadata)
            except grpc.RpcError as failure:
                refusals.append(
                    f"{failure.code()} {failure.details()} {failure.debug_error_string()}"
                )
                refusals += [f"{k}={v!r}" for k, v in failure.trailing_metadata() or ()]

    logged = caplog.text + "".join(repr(record.__dict__) for record in caplog.records)
    print(f"{len(caplog.records)} log records, {len(refusals)} refusals searched")
    assert refusals, "some of these calls are refused"
    for token in (ADMIN_TOKEN, EVALUATION_TOKEN, ADMIN_TOKEN[:-1]):
        assert token not in logged
        assert all(token not in refusal for refusal in refusals)


# ---------------------------------------------------------------------------------------------
# TLS and mTLS
# ---------------------------------------------------------------------------------------------


@dataclass
class Pki:
    """A CA, the server's certificate for 127.0.0.1/localhost, and files holding them."""

    ca: trustme.CA
    ca_file: Path
    cert_file: Path
    key_file: Path

    def client_credentials(self, ca: trustme.CA | None = None) -> tuple[bytes, bytes]:
        """(private key, certificate chain) of a client certificate issued by `ca`."""
        issued = (ca or self.ca).issue_cert("client.rules-sidecar.test")
        chain = b"".join(blob.bytes() for blob in issued.cert_chain_pems)
        return issued.private_key_pem.bytes(), chain


@pytest.fixture
def pki(tmp_path: Path) -> Pki:
    ca = trustme.CA()
    server = ca.issue_cert("127.0.0.1", "localhost")
    directory = tmp_path / "tls"
    directory.mkdir()
    ca_file, cert_file, key_file = (directory / n for n in ("ca.pem", "cert.pem", "key.pem"))
    ca.cert_pem.write_to_path(ca_file)
    cert_file.write_bytes(b"".join(blob.bytes() for blob in server.cert_chain_pems))
    server.private_key_pem.write_to_path(key_file)
    return Pki(ca, ca_file, cert_file, key_file)


@pytest.fixture
def channels() -> Iterator[Callable[..., grpc.Channel]]:
    """Open channels to a sidecar; all closed at teardown."""
    opened: list[grpc.Channel] = []

    def open_channel(
        port: int,
        *,
        root: bytes | None = None,
        client: tuple[bytes, bytes] | None = None,
        secure: bool = True,
    ) -> grpc.Channel:
        target = f"127.0.0.1:{port}"
        if not secure:
            channel = grpc.insecure_channel(target)
        else:
            key, chain = client or (None, None)
            credentials = grpc.ssl_channel_credentials(
                root_certificates=root, private_key=key, certificate_chain=chain
            )
            channel = grpc.secure_channel(target, credentials)
        opened.append(channel)
        return channel

    yield open_channel
    for channel in opened:
        channel.close()


def health_code(channel: grpc.Channel) -> grpc.StatusCode:
    stub = health_pb2_grpc.HealthStub(channel)
    return code_of(lambda: stub.Check(health_pb2.HealthCheckRequest(), timeout=5.0))


def test_tls_serves_clients_that_trust_the_ca_and_refuses_plaintext(
    sidecar_factory: Callable[..., InProcessSidecar],
    pki: Pki,
    channels: Callable[..., grpc.Channel],
) -> None:
    sidecar = sidecar_factory(tls_cert_file=pki.cert_file, tls_key_file=pki.key_file)
    trusted = channels(sidecar.port, root=pki.ca.cert_pem.bytes())
    other_ca = channels(sidecar.port, root=trustme.CA().cert_pem.bytes())
    plaintext = channels(sidecar.port, secure=False)

    assert health_code(trusted) == grpc.StatusCode.OK
    response = pb_grpc.RulesSidecarServiceStub(trusted).ListConnectors(
        pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT
    )
    assert list(response.connectors) == []
    assert health_code(other_ca) == grpc.StatusCode.UNAVAILABLE
    assert health_code(plaintext) == grpc.StatusCode.UNAVAILABLE


def test_mtls_refuses_clients_without_a_certificate_from_the_ca(
    sidecar_factory: Callable[..., InProcessSidecar],
    pki: Pki,
    channels: Callable[..., grpc.Channel],
) -> None:
    sidecar = sidecar_factory(
        tls_cert_file=pki.cert_file, tls_key_file=pki.key_file, tls_client_ca_file=pki.ca_file
    )
    root = pki.ca.cert_pem.bytes()
    with_cert = channels(sidecar.port, root=root, client=pki.client_credentials())
    without_cert = channels(sidecar.port, root=root)
    foreign_cert = channels(sidecar.port, root=root, client=pki.client_credentials(trustme.CA()))

    assert health_code(with_cert) == grpc.StatusCode.OK
    assert health_code(without_cert) == grpc.StatusCode.UNAVAILABLE
    assert health_code(foreign_cert) == grpc.StatusCode.UNAVAILABLE


def test_tls_and_tokens_together(
    sidecar_factory: Callable[..., InProcessSidecar],
    pki: Pki,
    tokens: Tokens,
    channels: Callable[..., grpc.Channel],
    upstream: Upstream,
) -> None:
    sidecar = sidecar_factory(
        tls_cert_file=pki.cert_file,
        tls_key_file=pki.key_file,
        admin_token_file=tokens.admin,
        evaluation_token_file=tokens.evaluation,
    )
    stub = pb_grpc.RulesSidecarServiceStub(channels(sidecar.port, root=pki.ca.cert_pem.bytes()))
    register = pb.RegisterConnectorRequest(
        connector=connector_message("json", upstream.url("/json"))
    )

    assert code_of(lambda: stub.RegisterConnector(register, timeout=RPC_TIMEOUT)) == (
        grpc.StatusCode.UNAUTHENTICATED
    )
    stub.RegisterConnector(register, timeout=RPC_TIMEOUT, metadata=bearer(ADMIN_TOKEN))
    response = stub.EvaluateNode(
        evaluate_request("json"), timeout=RPC_TIMEOUT, metadata=bearer(EVALUATION_TOKEN)
    )
    assert verdict(response) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
