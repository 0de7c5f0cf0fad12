"""Connectors, nodes and RPCs to a running sidecar, built from plain data.

For one-line tests over the real wire: `register` a connector, `evaluate` a node on it (2xx ->
"ok", else "else", errors "error"), compare `verdict(response)` with `error("REASON")`; read an
INVALID_ARGUMENT's `field_violations`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

RPC_TIMEOUT = 10.0
OK_WHEN_2XX = {
    "target": "ok",
    "conditions": [
        {
            "subject": {"kind": "SUBJECT_KIND_STATUS"},
            "operator": "OPERATOR_STATUS_CLASS",
            "operand": "2xx",
        }
    ],
}


def connector_message(connector_id: str, url: str, **fields: Any) -> pb.Connector:
    """A LIVE connector as the proto message (fields as ParseDict data)."""
    data = {"id": connector_id, "status": "CONNECTOR_STATUS_LIVE", "url_template": url, **fields}
    return json_format.ParseDict(data, pb.Connector())


def register(
    stub: pb_grpc.RulesSidecarServiceStub,
    connector_id: str,
    url: str,
    *,
    metadata: Sequence[tuple[str, str]] | None = None,
    **fields: Any,
) -> pb.Connector:
    """RegisterConnector; the stored connector."""
    request = pb.RegisterConnectorRequest(connector=connector_message(connector_id, url, **fields))
    response: pb.RegisterConnectorResponse = stub.RegisterConnector(
        request, timeout=RPC_TIMEOUT, metadata=metadata
    )
    return response.connector


def connector_version(stub: pb_grpc.RulesSidecarServiceStub, connector_id: str) -> int:
    """The version a sidecar answers for the id; 0 for NOT_FOUND (other failures raise)."""
    try:
        response = stub.GetConnector(pb.GetConnectorRequest(id=connector_id), timeout=RPC_TIMEOUT)
    except grpc.RpcError as exc:
        if exc.code() is grpc.StatusCode.NOT_FOUND:
            return 0
        raise
    return int(response.connector.version)


def evaluate_request(
    connector_id: str, variables: Mapping[str, Any] | None = None, *, explain: bool = False
) -> pb.EvaluateNodeRequest:
    """A node on `connector_id`: 2xx -> "ok", else "else", errors "error"."""
    data = {
        "node": {
            "id": "security-node",
            "connector_id": connector_id,
            "branches": [OK_WHEN_2XX],
            "else_target": "else",
            "error_target": "error",
        },
        "variables": dict(variables or {}),
        "explain": explain,
    }
    return json_format.ParseDict(data, pb.EvaluateNodeRequest())


def evaluate(
    stub: pb_grpc.RulesSidecarServiceStub,
    connector_id: str,
    variables: Mapping[str, Any] | None = None,
    *,
    explain: bool = False,
    timeout: float = RPC_TIMEOUT,
    metadata: Sequence[tuple[str, str]] | None = None,
) -> pb.EvaluateNodeResponse:
    """EvaluateNode over the wire."""
    request = evaluate_request(connector_id, variables, explain=explain)
    response: pb.EvaluateNodeResponse = stub.EvaluateNode(
        request, timeout=timeout, metadata=metadata
    )
    return response


def verdict(response: pb.EvaluateNodeResponse) -> tuple[str, str]:
    """(outcome, reason) by enum name, for one-line assertions."""
    return pb.Outcome.Name(response.outcome), pb.Reason.Name(response.reason)


def error(reason: str) -> tuple[str, str]:
    return "OUTCOME_ERROR", f"REASON_{reason}"


def bad_requests(error: grpc.RpcError) -> list[error_details_pb2.BadRequest]:
    """The google.rpc.BadRequest details of an INVALID_ARGUMENT status (any other code fails)."""
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    status = rpc_status.from_call(error)
    assert status is not None, "INVALID_ARGUMENT without a google.rpc.Status"
    found = []
    for detail in status.details:
        bad_request = error_details_pb2.BadRequest()
        if detail.Unpack(bad_request):
            found.append(bad_request)
    return found


def field_violations(error: grpc.RpcError) -> dict[str, str]:
    """field -> description of every BadRequest violation in an INVALID_ARGUMENT status."""
    return {
        violation.field: violation.description
        for bad_request in bad_requests(error)
        for violation in bad_request.field_violations
    }
