"""Secrets and control stay in (issue 14, item 5), over the real wire and with real processes.

finding                                              before               now
an upstream echoes the bearer token back: readable   in extractions,      *** everywhere the
in extractions, variables, explanations, messages    subject values ...   answer holds it
CR/LF in node.id, text log format                    a forged log line    escaped: one line
the admin token file emptied at runtime              UNKNOWN + its path   UNAVAILABLE, no path
a second sidecar on a live unix_socket               takes the socket     exit 2, a message;
                                                                          the first keeps it
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format, text_format
from grpc_health.v1 import health_pb2
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar.telemetry.logs import TextFormatter
from tests.support.calls import RPC_TIMEOUT, evaluate_request, register, verdict
from tests.support.sidecars import InProcessSidecar, SidecarProcess
from tests.support.upstreams import Upstream

Factory = Callable[..., InProcessSidecar]
TOKEN = "echoed-secret-5b1f9c3a7e"
SHORT = "k9z"  # shorter than the masking minimum


@pytest.fixture
def secrets_dir(tmp_path: Path) -> Path:
    directory = tmp_path / "secrets"
    directory.mkdir()
    (directory / "api_token").write_text(TOKEN, encoding="utf-8")
    (directory / "short_key").write_text(SHORT, encoding="utf-8")
    return directory


def echo_request(connector_id: str) -> pb.EvaluateNodeRequest:
    """A node whose extractions and explained conditions read back what the upstream echoed."""
    data = {
        "node": {
            "id": "echo-node",
            "connector_id": connector_id,
            "branches": [
                {
                    "target": "ok",
                    "conditions": [
                        {
                            "subject": {"kind": "SUBJECT_KIND_BODY", "path": "headers"},
                            "operator": "OPERATOR_EXISTS",
                        },
                        {
                            "subject": {"kind": "SUBJECT_KIND_BODY", "path": "headers[0][1]"},
                            "operator": "OPERATOR_NOT_EQUALS",
                            "operand": "x",
                        },
                    ],
                }
            ],
            "else_target": "else",
            "error_target": "error",
            "extractions": [
                {"variable": "echoed", "path": "headers"},
                {
                    "variable": "as_number",
                    "path": "headers[?[0]=='Authorization'] | [0][1]",
                    "cast": "CAST_TYPE_NUMBER",
                },
                {"variable": "by_key", "path": "{key: headers[?[0]=='Authorization'] | [0][1]}"},
            ],
        },
        "explain": True,
    }
    return json_format.ParseDict(data, pb.EvaluateNodeRequest())


def test_a_secret_the_upstream_echoes_back_is_masked_in_every_part_of_the_answer(
    sidecar_factory: Factory, upstream: Upstream, secrets_dir: Path
) -> None:
    sidecar = sidecar_factory(secrets_dir=secrets_dir, allow_unbound_secrets=True)
    register(
        sidecar.stub,
        "echo",
        upstream.url("/echo/orders"),
        auth={"bearer": {"token_secret": "api_token"}},
    )

    response = sidecar.stub.EvaluateNode(echo_request("echo"), timeout=RPC_TIMEOUT)

    assert upstream.last("/echo/").header("Authorization") == f"Bearer {TOKEN}"  # it was sent
    assert verdict(response) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    assert TOKEN.encode() not in response.SerializeToString()
    assert TOKEN not in text_format.MessageToString(response)
    echoed = json_format.MessageToDict(response.variables)["echoed"]
    assert ["Authorization", "Bearer ***"] in echoed
    assert json_format.MessageToDict(response.variables)["by_key"] == {"key": "Bearer ***"}
    (number,) = [e for e in response.extractions if e.variable == "as_number"]
    assert pb.ExtractionStatus.Name(number.status) == "EXTRACTION_STATUS_CAST_FAILED"
    subjects = [
        json_format.MessageToDict(condition.subject_value)
        for condition in response.explanation.branches[0].conditions
    ]
    assert "Bearer ***" in str(subjects)


def test_a_secret_shorter_than_the_minimum_is_not_masked_elsewhere(
    sidecar_factory: Factory, upstream: Upstream, secrets_dir: Path
) -> None:
    sidecar = sidecar_factory(secrets_dir=secrets_dir, allow_unbound_secrets=True)
    upstream.respond("/words", json={"text": f"{SHORT} appears in ordinary text"})
    register(
        sidecar.stub,
        "short",
        upstream.url("/words"),
        auth={"api_key": {"name": "X-Key", "value_secret": "short_key"}},
    )
    request = evaluate_request("short")
    request.node.extractions.add(variable="text", path="text")

    response = sidecar.stub.EvaluateNode(request, timeout=RPC_TIMEOUT)

    assert response.variables.fields["text"].string_value == f"{SHORT} appears in ordinary text"


def test_crlf_in_a_node_id_cannot_forge_a_text_log_line(
    sidecar_factory: Factory, upstream: Upstream, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    sidecar = sidecar_factory()
    upstream.respond("/ok", json={})
    register(sidecar.stub, "plain", upstream.url("/ok"))
    request = evaluate_request("plain")
    request.node.id = "n1\r\n2026-05-10 08:00:00,000 INFO sidecar.evaluations: FORGED"

    sidecar.stub.EvaluateNode(request, timeout=RPC_TIMEOUT)

    lines = [
        line
        for record in caplog.records
        if record.name.startswith("sidecar")
        for line in TextFormatter().format(record).splitlines()
    ]
    assert any("FORGED" in line for line in lines)  # the id was logged ...
    assert not any(line.startswith("2026-05-10 08:00:00,000") for line in lines)  # ... escaped


def test_an_emptied_token_file_answers_unavailable_without_its_path(
    sidecar_factory: Factory, upstream: Upstream, tmp_path: Path
) -> None:
    token_file = tmp_path / "admin-token"
    token_file.write_text("admin-token-0123456789abcdef", encoding="utf-8")
    sidecar = sidecar_factory(admin_token_file=token_file)
    metadata = (("authorization", "Bearer admin-token-0123456789abcdef"),)
    sidecar.stub.ListConnectors(pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT, metadata=metadata)

    token_file.write_text("", encoding="utf-8")
    os.utime(token_file, (1, 1))  # a different mtime for sure, whatever the clock's resolution
    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.ListConnectors(
            pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT, metadata=metadata
        )

    assert caught.value.code() is grpc.StatusCode.UNAVAILABLE
    assert str(tmp_path) not in (caught.value.details() or "")
    assert "admin-token" not in (caught.value.details() or "")


def test_a_second_sidecar_refuses_a_live_unix_socket_and_the_first_keeps_it(
    sidecar_process: Callable[..., SidecarProcess], tmp_path: Path
) -> None:
    socket_path = tmp_path / "shared.sock"
    first = sidecar_process(tmp_path / "first", args=["--unix-socket", str(socket_path)])

    second = sidecar_process(
        tmp_path / "second", args=["--unix-socket", str(socket_path)], wait=False
    )
    code = second.process.wait(30)

    assert code == 2
    assert f"unix_socket {socket_path} is in use" in second.stderr_text()
    with grpc.insecure_channel(f"unix:{socket_path}") as channel:
        stub = pb_grpc.RulesSidecarServiceStub(channel)
        register(stub, "still-first", "http://127.0.0.1:9/orders")
    assert (
        first.stub.GetConnector(
            pb.GetConnectorRequest(id="still-first"), timeout=RPC_TIMEOUT
        ).connector.version
        == 1
    )
    assert first.health_status() == health_pb2.HealthCheckResponse.SERVING
