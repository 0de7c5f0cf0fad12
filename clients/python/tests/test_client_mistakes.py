"""Short enum names, and every mistake the client can catch before sending, as its own error.

The connectors file and the README write enums short (`LIVE`, `GET`, `EQUALS`); dicts given to the
client may too. A wrong name, an unknown field, a value that is not JSON or an unreadable TLS file
is a `ClientError` (a `SidecarError` with INVALID_ARGUMENT and the field, and a ValueError), never a
protobuf ParseError or an OSError traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import pytest
from conftest import Harness
from rulesidecar.client import TLS, Client, ClientError, SidecarError, TokenFile
from rulesidecar.v1 import rules_sidecar_pb2 as pb

SHIPPED = "shipped-order-matches"  # a vector whose upstream answers 200 {"status": "shipped"}


def short_named_connector(harness: Harness, connector_id: str) -> dict[str, Any]:
    return {
        "id": connector_id,
        "status": "DRAFT",
        "method": "GET",
        "urlTemplate": f"{harness.upstream}/vectors/{SHIPPED}/orders/{{{{order_number}}}}",
        "auth": {
            "apiKey": {"name": "X-Api-Key", "location": "HEADER", "valueSecret": "vector_api_key"}
        },
    }


def short_named_node(connector_id: str) -> dict[str, Any]:
    return {
        "id": "where-is-my-order",
        "connectorId": connector_id,
        "branches": [
            {
                "target": "show-status",
                "combinator": "ALL",
                "conditions": [
                    {"subject": {"kind": "STATUS"}, "operator": "STATUS_CLASS", "operand": "2xx"},
                    {
                        "subject": {"kind": "BODY", "path": "status"},
                        "operator": "EQUALS",
                        "operand": "shipped",
                    },
                ],
            }
        ],
        "elseTarget": "ask-again",
        "errorTarget": "agent",
        "extractions": [{"variable": "order_status", "path": "status", "cast": "STRING"}],
    }


def test_short_enum_names_work_as_the_connectors_file_writes_them(harness: Harness) -> None:
    with Client(harness.sidecar) as sidecar:
        registered = sidecar.register_connector(short_named_connector(harness, "py-short-names"))
        drafts = [c.id for c in sidecar.list_connectors(status="DRAFT")]
        evaluation = sidecar.evaluate_node(
            short_named_node("py-short-names"), {"order_number": "A-10023"}, mode="TEST"
        )
        sidecar.delete_connector("py-short-names")
    stored = registered.connector
    assert (stored.status, stored.method) == (pb.CONNECTOR_STATUS_DRAFT, pb.HTTP_METHOD_GET)
    assert stored.auth.api_key.location == pb.API_KEY_LOCATION_HEADER
    assert "py-short-names" in drafts
    assert (evaluation.outcome_name, evaluation.target) == ("OUTCOME_MATCHED", "show-status")
    assert evaluation.variables == {"order_status": "shipped"}


def test_full_enum_names_and_numbers_still_work(harness: Harness) -> None:
    connector = short_named_connector(harness, "py-full-names")
    connector.update(status="CONNECTOR_STATUS_LIVE", method=1)
    with Client(harness.sidecar) as sidecar:
        stored = sidecar.register_connector(connector).connector
        listed = [c.id for c in sidecar.list_connectors(status=pb.CONNECTOR_STATUS_LIVE)]
        sidecar.delete_connector("py-full-names")
    assert (stored.status, stored.method) == (pb.CONNECTOR_STATUS_LIVE, pb.HTTP_METHOD_GET)
    assert "py-full-names" in listed


def node_with(**condition: Any) -> dict[str, Any]:
    return {"connectorId": "c", "branches": [{"target": "t", "conditions": [condition]}]}


MISTAKES: list[tuple[str, Callable[[Client], object], str, str]] = [
    (
        "unknown enum name",
        lambda c: c.register_connector({"id": "x", "status": "ON"}),
        "connector.status",
        "'ON' is not a valid ConnectorStatus; use one of DRAFT, LIVE, DISABLED",
    ),
    (
        "unknown enum name deep in a node",
        lambda c: c.evaluate_node(node_with(subject={"kind": "STATUS"}, operator="EQUAL")),
        "node.branches[0].conditions[0].operator",
        "'EQUAL' is not a valid Operator; use one of EQUALS, NOT_EQUALS",
    ),
    (
        "unknown enum name in a map-free nested message",
        lambda c: c.register_connector({"id": "x", "auth": {"apiKey": {"location": "BODY"}}}),
        "connector.auth.api_key.location",
        "use one of HEADER, QUERY",
    ),
    (
        "unknown enum name in an extraction",
        lambda c: c.extract_variables([{"variable": "a", "path": "b", "cast": "NUM"}], {}),
        "extractions[0].cast",
        "'NUM' is not a valid CastType",
    ),
    (
        "unknown enum name as a keyword",
        lambda c: list(c.list_connectors(status="ALIVE")),
        "status",
        "'ALIVE' is not a valid ConnectorStatus",
    ),
    (
        "unknown mode",
        lambda c: c.evaluate_node(node_with(), mode="DRY_RUN"),
        "mode",
        "use one of PRODUCTION, TEST",
    ),
    (
        "unknown field",
        lambda c: c.register_connector({"id": "x", "urlTemplat": "https://a.example/"}),
        "connector",
        'has no field named "urlTemplat"',
    ),
    (
        "a field of the wrong type",
        lambda c: c.evaluate_node({"connectorId": "c", "branches": "all"}),
        "node",
        "Failed to parse branches field",
    ),
    (
        "a variable that is not JSON",
        lambda c: c.evaluate_node(node_with(), {"when": object()}),
        "variables",
        "the values must be JSON-like",
    ),
    (
        "a document that is not JSON",
        lambda c: c.extract_variables([], {"when": {1, 2}}),
        "json",
        "the document must be JSON-like",
    ),
    (
        "a message of the wrong type",
        lambda c: c.evaluate_node(pb.Connector(id="x")),  # type: ignore[arg-type]
        "node",
        "expected a Node message or a dict, not Connector",
    ),
]


@pytest.mark.parametrize(
    ("call", "field", "description"),
    [pytest.param(call, field, text, id=name) for name, call, field, text in MISTAKES],
)
def test_a_mistake_is_a_client_error_naming_the_field(
    harness: Harness, call: Callable[[Client], object], field: str, description: str
) -> None:
    with Client(harness.sidecar) as sidecar, pytest.raises(ClientError) as caught:
        call(sidecar)
    error = caught.value
    assert isinstance(error, SidecarError)
    assert isinstance(error, ValueError)
    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert [v.field for v in error.violations] == [field]
    assert description in error.violations[0].description
    assert str(error).startswith(f"INVALID_ARGUMENT: {field}: ")
    assert not isinstance(error.__cause__, grpc.RpcError)  # caught here, nothing was sent


def test_an_unreadable_tls_file_is_a_client_error(tmp_path: Any) -> None:
    missing = tmp_path / "ca.pem"
    with pytest.raises(ClientError) as caught:
        Client("127.0.0.1:50051", tls=TLS(ca_file=missing))
    assert [v.field for v in caught.value.violations] == ["tls.ca_file"]
    assert f"cannot read {missing}: No such file or directory" in str(caught.value)


def test_a_token_file_that_cannot_be_read_fails_the_call_as_a_sidecar_error(
    harness: Harness, tmp_path: Any
) -> None:
    token = TokenFile(tmp_path / "missing-token")
    plaintext = Client(harness.sidecar, token=token)
    over_tls = Client(harness.secure_sidecar, token=token, tls=TLS(ca_file=harness.ca_file))
    for sidecar in (plaintext, over_tls):
        with sidecar, pytest.raises(SidecarError) as caught:
            sidecar.get_connector("anything")
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "missing-token" in caught.value.details()
