"""The connector registry RPCs over the real wire: an in-process sidecar on 127.0.0.1:0."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2
from grpc_status import rpc_status
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from sidecar.api.interceptors import GENERIC_INTERNAL_MESSAGE, guarded
from sidecar.errors import NotFoundError
from tests.support.calls import bad_requests
from tests.support.sidecars import (
    EXAMPLE_CONNECTORS_FILE,
    InProcessSidecar,
    example_connectors,
    example_secret_hosts,
)

RPC_TIMEOUT = 5.0
ORDERS_URL = "https://api.example.com/orders/{{order_number}}"


def connector(connector_id: str = "orders", **fields: Any) -> pb.Connector:
    """A valid LIVE connector, with `fields` replacing the defaults."""
    definition: dict[str, Any] = {
        "id": connector_id,
        "status": pb.CONNECTOR_STATUS_LIVE,
        "url_template": ORDERS_URL,
    }
    definition.update(fields)
    return pb.Connector(**definition)


def register(
    stub: pb_grpc.RulesSidecarServiceStub,
    definition: pb.Connector,
    expected_version: int | None = None,
) -> pb.RegisterConnectorResponse:
    request = pb.RegisterConnectorRequest(connector=definition)
    if expected_version is not None:
        request.expected_version = expected_version
    response: pb.RegisterConnectorResponse = stub.RegisterConnector(request, timeout=RPC_TIMEOUT)
    return response


def get(stub: pb_grpc.RulesSidecarServiceStub, connector_id: str) -> pb.Connector:
    request = pb.GetConnectorRequest(id=connector_id)
    response: pb.GetConnectorResponse = stub.GetConnector(request, timeout=RPC_TIMEOUT)
    return response.connector


def delete(
    stub: pb_grpc.RulesSidecarServiceStub, connector_id: str, expected_version: int | None = None
) -> pb.DeleteConnectorResponse:
    request = pb.DeleteConnectorRequest(id=connector_id)
    if expected_version is not None:
        request.expected_version = expected_version
    response: pb.DeleteConnectorResponse = stub.DeleteConnector(request, timeout=RPC_TIMEOUT)
    return response


def rpc_error_of(call: Callable[[], object]) -> grpc.RpcError:
    """The RpcError that `call` raises (the test fails if it succeeds)."""
    with pytest.raises(grpc.RpcError) as caught:
        call()
    return caught.value


def violated_fields(error: grpc.RpcError) -> list[str]:
    """The `field` of every google.rpc.BadRequest violation in an INVALID_ARGUMENT status."""
    found = bad_requests(error)
    assert len(found) == 1, found
    return [violation.field for violation in found[0].field_violations]


def json_value(data: Any) -> struct_pb2.Value:
    return json_format.ParseDict(data, struct_pb2.Value())


def list_all_ids(stub: pb_grpc.RulesSidecarServiceStub, **request: Any) -> list[str]:
    response = stub.ListConnectors(pb.ListConnectorsRequest(**request), timeout=RPC_TIMEOUT)
    return [item.id for item in response.connectors]


# ---------------------------------------------------------------------------------------------
# Register, get, versions
# ---------------------------------------------------------------------------------------------


def test_register_creates_version_1_then_replacing_bumps_to_version_2(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub

    first = register(stub, connector(display_name="Orders v1"))
    second = register(stub, connector(display_name="Orders v2"))

    assert (first.created, first.connector.version) == (True, 1)
    assert (second.created, second.connector.version) == (False, 2)
    stored = get(stub, "orders")
    assert (stored.version, stored.display_name) == (2, "Orders v2")
    assert stored.update_time.ToDatetime(UTC) >= first.connector.update_time.ToDatetime(UTC)


def test_get_returns_the_stored_connector_with_defaults_and_output_fields(
    running_sidecar: InProcessSidecar,
) -> None:
    before = datetime.now(UTC).replace(microsecond=0)
    register(running_sidecar.stub, connector(headers={"Accept": "application/json"}))
    after = datetime.now(UTC) + timedelta(seconds=1)

    stored = get(running_sidecar.stub, "orders")

    assert stored.id == "orders"
    assert stored.status == pb.CONNECTOR_STATUS_LIVE
    assert stored.method == pb.HTTP_METHOD_GET
    assert stored.url_template == ORDERS_URL
    assert dict(stored.headers) == {"Accept": "application/json"}
    assert stored.source == pb.CONNECTOR_SOURCE_API
    assert stored.version == 1
    assert stored.HasField("update_time")
    assert before <= stored.update_time.ToDatetime(UTC) <= after
    assert stored.timeout.ToTimedelta() == timedelta(seconds=5)
    assert stored.max_response_bytes == 1048576
    assert not stored.HasField("auth")
    assert not stored.HasField("body_template")


def test_output_only_fields_sent_by_the_caller_are_ignored(
    running_sidecar: InProcessSidecar,
) -> None:
    sent = connector(version=41, source=pb.CONNECTOR_SOURCE_FILE)

    stored = register(running_sidecar.stub, sent).connector

    assert (stored.version, stored.source) == (1, pb.CONNECTOR_SOURCE_API)


@pytest.fixture
def bound_sidecar(sidecar_factory: Callable[..., InProcessSidecar]) -> InProcessSidecar:
    """A sidecar binding the secrets of these round trips to their connectors' hosts."""
    hosts = ["api.example.com", "crm.example.com"]
    names = ("crm_token", "store_api_key", "erp.user", "erp.password")
    return sidecar_factory(secret_hosts=dict.fromkeys(names, hosts))


@pytest.mark.parametrize(
    "auth",
    [
        pb.Auth(bearer=pb.BearerAuth(token_secret="crm_token")),
        pb.Auth(
            api_key=pb.ApiKeyAuth(
                name="X-API-Key",
                location=pb.API_KEY_LOCATION_QUERY,
                value_secret="store_api_key",
            )
        ),
        pb.Auth(basic=pb.BasicAuth(username_secret="erp.user", password_secret="erp.password")),
    ],
    ids=["bearer", "api_key", "basic"],
)
def test_auth_round_trips_as_secret_names(bound_sidecar: InProcessSidecar, auth: pb.Auth) -> None:
    register(bound_sidecar.stub, connector(auth=auth))

    assert get(bound_sidecar.stub, "orders").auth == auth


def test_every_field_round_trips_through_register_and_get(
    bound_sidecar: InProcessSidecar,
) -> None:
    body = {"filter": {"email": "{{customer.email}}", "limit": "{{max_results}}"}, "page": 1}
    sent = connector(
        "crm-lookup",
        display_name="Find a CRM contact",
        status=pb.CONNECTOR_STATUS_DRAFT,
        method=pb.HTTP_METHOD_POST,
        url_template="https://crm.example.com/api/contacts/search",
        headers={"Accept": "application/json", "X-Channel": "{{channel}}"},
        query={"tenant": "{{tenant_id}}", "format": "full"},
        body_template=json_value(body),
        auth=pb.Auth(bearer=pb.BearerAuth(token_secret="crm_token")),
        timeout=duration_pb2.Duration(seconds=2, nanos=500_000_000),
        max_response_bytes=65536,
    )

    register(bound_sidecar.stub, sent)
    stored = get(bound_sidecar.stub, "crm-lookup")

    for name in (
        "id", "display_name", "status", "method", "url_template", "headers", "query", "auth",
        "timeout", "max_response_bytes",
    ):  # fmt: skip
        assert getattr(stored, name) == getattr(sent, name), name
    assert json_format.MessageToDict(stored.body_template) == body


# ---------------------------------------------------------------------------------------------
# Optimistic concurrency
# ---------------------------------------------------------------------------------------------


def test_expected_version_0_creates_only_when_the_id_is_absent(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub

    created = register(stub, connector(display_name="first"), expected_version=0)
    conflict = rpc_error_of(lambda: register(stub, connector(display_name="second"), 0))

    assert (created.created, created.connector.version) == (True, 1)
    assert conflict.code() == grpc.StatusCode.ABORTED
    assert get(stub, "orders").display_name == "first"


def test_register_with_a_matching_expected_version_replaces(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub
    register(stub, connector())

    replaced = register(stub, connector(display_name="new"), expected_version=1)

    assert (replaced.created, replaced.connector.version) == (False, 2)
    assert get(stub, "orders").display_name == "new"


@pytest.mark.parametrize("expected_version", [1, 3], ids=["behind", "ahead"])
def test_register_with_a_mismatching_expected_version_is_aborted(
    running_sidecar: InProcessSidecar, expected_version: int
) -> None:
    stub = running_sidecar.stub
    register(stub, connector(display_name="v1"))
    register(stub, connector(display_name="v2"))

    error = rpc_error_of(lambda: register(stub, connector(display_name="v3"), expected_version))

    assert error.code() == grpc.StatusCode.ABORTED
    assert "version 2" in error.details()
    stored = get(stub, "orders")
    assert (stored.version, stored.display_name) == (2, "v2")


def test_register_with_expected_version_for_an_absent_id_is_aborted(
    running_sidecar: InProcessSidecar,
) -> None:
    error = rpc_error_of(lambda: register(running_sidecar.stub, connector(), expected_version=1))

    assert error.code() == grpc.StatusCode.ABORTED
    assert rpc_error_of(lambda: get(running_sidecar.stub, "orders")).code() == (
        grpc.StatusCode.NOT_FOUND
    )


def test_delete_with_a_mismatching_expected_version_is_aborted_and_keeps_the_connector(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub
    register(stub, connector())
    register(stub, connector())

    error = rpc_error_of(lambda: delete(stub, "orders", expected_version=1))

    assert error.code() == grpc.StatusCode.ABORTED
    assert get(stub, "orders").version == 2


def test_delete_with_the_matching_expected_version_deletes(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub
    register(stub, connector())
    register(stub, connector())

    deleted = delete(stub, "orders", expected_version=2)

    assert deleted.deleted_version == 2
    assert rpc_error_of(lambda: get(stub, "orders")).code() == grpc.StatusCode.NOT_FOUND


def test_register_with_a_negative_expected_version_is_invalid(
    running_sidecar: InProcessSidecar,
) -> None:
    error = rpc_error_of(lambda: register(running_sidecar.stub, connector(), expected_version=-1))

    assert violated_fields(error) == ["expected_version"]


def test_versions_continue_after_delete_and_re_register(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub
    register(stub, connector())
    register(stub, connector())

    deleted = delete(stub, "orders")
    gone = rpc_error_of(lambda: get(stub, "orders"))
    recreated = register(stub, connector())

    assert deleted.deleted_version == 2
    assert gone.code() == grpc.StatusCode.NOT_FOUND
    assert (recreated.created, recreated.connector.version) == (True, 3)
    assert get(stub, "orders").version == 3


# ---------------------------------------------------------------------------------------------
# NOT_FOUND and missing ids
# ---------------------------------------------------------------------------------------------


def test_get_of_an_unknown_id_is_not_found(running_sidecar: InProcessSidecar) -> None:
    error = rpc_error_of(lambda: get(running_sidecar.stub, "no-such-connector"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert "no-such-connector" in error.details()


def test_delete_of_an_unknown_id_is_not_found(running_sidecar: InProcessSidecar) -> None:
    error = rpc_error_of(lambda: delete(running_sidecar.stub, "no-such-connector"))

    assert error.code() == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("rpc", ["GetConnector", "DeleteConnector"])
def test_an_empty_id_is_invalid(running_sidecar: InProcessSidecar, rpc: str) -> None:
    request_type = getattr(pb, f"{rpc}Request")
    call = getattr(running_sidecar.stub, rpc)

    error = rpc_error_of(lambda: call(request_type(id=""), timeout=RPC_TIMEOUT))

    assert violated_fields(error) == ["id"]


# ---------------------------------------------------------------------------------------------
# Validation: every error names its field
# ---------------------------------------------------------------------------------------------

URL = "connector.url_template"
INVALID_REGISTRATIONS = [
    pytest.param(pb.RegisterConnectorRequest(), ["connector"], id="missing-connector"),
    pytest.param(connector(id="Bad ID!"), ["connector.id"], id="bad-id"),
    pytest.param(connector(id=""), ["connector.id"], id="empty-id"),
    pytest.param(connector(id="x" * 65), ["connector.id"], id="id-too-long"),
    pytest.param(
        connector(status=pb.CONNECTOR_STATUS_UNSPECIFIED),
        ["connector.status"],
        id="status-unspecified",
    ),
    pytest.param(connector(url_template=""), [URL], id="url-empty"),
    pytest.param(connector(url_template="/orders/{{order_number}}"), [URL], id="url-not-absolute"),
    pytest.param(connector(url_template="ftp://files.example.com/x"), [URL], id="url-ftp-scheme"),
    pytest.param(
        connector(url_template="https://{{host}}/orders"), [URL], id="url-placeholder-in-host"
    ),
    pytest.param(
        connector(url_template="https://api.{{tenant}}.com/orders"),
        [URL],
        id="url-placeholder-in-part-of-host",
    ),
    pytest.param(
        connector(url_template="https://api.example.com:{{port}}/orders"),
        [URL],
        id="url-placeholder-in-port",
    ),
    pytest.param(
        connector(url_template="{{scheme}}://api.example.com/orders"),
        [URL],
        id="url-placeholder-in-scheme",
    ),
    pytest.param(
        connector(url_template="https://user:pass@api.example.com/orders"), [URL], id="url-userinfo"
    ),
    pytest.param(
        connector(url_template="https://api.example.com/orders#top"), [URL], id="url-fragment"
    ),
    pytest.param(
        connector(url_template="https://api.example.com/orders?q={{q}}"),
        [URL],
        id="url-templated-query",
    ),
    pytest.param(
        connector(url_template="https://api.example.com/orders/{{order_number"),
        [URL],
        id="url-unbalanced-braces",
    ),
    pytest.param(
        connector(url_template="https://api.example.com/orders/}}x"),
        [URL],
        id="url-stray-closing-braces",
    ),
    pytest.param(
        connector(headers={"X-Thing": "a\r\nX-Injected: yes"}),
        ['connector.headers["X-Thing"]'],
        id="header-value-crlf",
    ),
    pytest.param(
        connector(headers={"X-Thing": "a\nb"}),
        ['connector.headers["X-Thing"]'],
        id="header-value-lf",
    ),
    pytest.param(
        connector(headers={"Authorization": "Bearer sk-live-123"}),
        ['connector.headers["Authorization"]'],
        id="literal-authorization-header",
    ),
    pytest.param(
        connector(headers={"X-API-Key": "sk-live-123"}),
        ['connector.headers["X-API-Key"]'],
        id="literal-x-api-key-header",
    ),
    pytest.param(
        connector(headers={"Bad Header": "x"}),
        ['connector.headers["Bad Header"]'],
        id="invalid-header-name",
    ),
    pytest.param(
        connector(headers={"X-Thing": "{{not valid!}}"}),
        ['connector.headers["X-Thing"]'],
        id="header-bad-placeholder",
    ),
    pytest.param(
        connector(query={"{{name}}": "x"}),
        ['connector.query["{{name}}"]'],
        id="templated-query-name",
    ),
    pytest.param(
        connector(query={"q": "{{a b}}"}),
        ['connector.query["q"]'],
        id="query-value-bad-placeholder",
    ),
    pytest.param(
        connector(body_template=json_value({"filter": ["{{not valid!}}"]})),
        ["connector.body_template"],
        id="body-bad-placeholder",
    ),
    pytest.param(
        connector(timeout=duration_pb2.Duration(seconds=0)), ["connector.timeout"], id="timeout-0"
    ),
    pytest.param(
        connector(timeout=duration_pb2.Duration(seconds=31)),
        ["connector.timeout"],
        id="timeout-31s",
    ),
    pytest.param(
        connector(max_response_bytes=16 * 1024 * 1024 + 1),
        ["connector.max_response_bytes"],
        id="max-response-bytes-over-16mib",
    ),
    pytest.param(
        connector(max_response_bytes=-1),
        ["connector.max_response_bytes"],
        id="max-response-bytes-negative",
    ),
    pytest.param(
        connector(auth=pb.Auth(api_key=pb.ApiKeyAuth(name="X-API-Key"))),
        ["connector.auth.api_key.value_secret"],
        id="api-key-without-value-secret",
    ),
    pytest.param(
        connector(auth=pb.Auth(bearer=pb.BearerAuth(token_secret="sk live 9f8a7b"))),
        ["connector.auth.bearer.token_secret"],
        id="secret-name-looks-like-a-value",
    ),
    pytest.param(
        connector(auth=pb.Auth(basic=pb.BasicAuth(username_secret="user"))),
        ["connector.auth.basic.password_secret"],
        id="basic-without-password-secret",
    ),
    pytest.param(connector(auth=pb.Auth()), ["connector.auth"], id="auth-without-scheme"),
    pytest.param(
        connector(
            id="Not A Slug",
            status=pb.CONNECTOR_STATUS_UNSPECIFIED,
            url_template="ftp://files.example.com/x",
            headers={"Authorization": "Basic abc"},
            timeout=duration_pb2.Duration(seconds=60),
        ),
        [
            "connector.id",
            "connector.status",
            "connector.url_template",
            'connector.headers["Authorization"]',
            "connector.timeout",
        ],
        id="several-bad-fields",
    ),
]


def test_a_secret_bound_to_another_host_is_a_violation_of_connector_auth(
    sidecar_factory: Callable[..., InProcessSidecar],
) -> None:
    sidecar = sidecar_factory(secret_hosts={"store_token": ["api.payments.example"]})
    bearer = pb.Auth(bearer=pb.BearerAuth(token_secret="store_token"))

    error = rpc_error_of(lambda: register(sidecar.stub, connector(auth=bearer)))

    assert violated_fields(error) == ["connector.auth"]
    assert "secret 'store_token' may only be sent to api.payments.example" in error.details()
    missing = rpc_error_of(lambda: get(sidecar.stub, "orders"))
    assert missing.code() == grpc.StatusCode.NOT_FOUND


def test_a_secret_bound_to_no_host_is_a_violation_of_connector_auth_naming_secret_hosts(
    sidecar_factory: Callable[..., InProcessSidecar],
) -> None:
    sidecar = sidecar_factory(secret_hosts={"other_token": ["api.example.com"]})
    bearer = pb.Auth(bearer=pb.BearerAuth(token_secret="store_token"))

    error = rpc_error_of(lambda: register(sidecar.stub, connector(auth=bearer)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert violated_fields(error) == ["connector.auth"]
    assert (
        "secret 'store_token' is bound to no host: add it to the secret_hosts setting, e.g. "
        "secret_hosts: {store_token: [api.example.com]}"
    ) in error.details()


@pytest.mark.parametrize(("request_or_connector", "expected_fields"), INVALID_REGISTRATIONS)
def test_invalid_registration_names_every_bad_field(
    running_sidecar: InProcessSidecar,
    request_or_connector: pb.RegisterConnectorRequest | pb.Connector,
    expected_fields: list[str],
) -> None:
    request = (
        request_or_connector
        if isinstance(request_or_connector, pb.RegisterConnectorRequest)
        else pb.RegisterConnectorRequest(connector=request_or_connector)
    )

    error = rpc_error_of(
        lambda: running_sidecar.stub.RegisterConnector(request, timeout=RPC_TIMEOUT)
    )

    assert sorted(violated_fields(error)) == sorted(expected_fields)
    assert "Traceback" not in error.details()
    assert all(field in error.details() for field in expected_fields), error.details()


def test_literal_credentials_never_come_back_in_the_error(
    running_sidecar: InProcessSidecar,
) -> None:
    literal = "sk-live-4f9a8b7c6d5e"
    definition = connector(headers={"Authorization": f"Bearer {literal}"})

    error = rpc_error_of(lambda: register(running_sidecar.stub, definition))

    assert violated_fields(error) == ['connector.headers["Authorization"]']
    status = rpc_status.from_call(error)
    assert literal not in error.details()
    assert literal.encode() not in status.SerializeToString()


@pytest.mark.parametrize(
    ("fields", "expected_field"),
    [({"status": 99}, "connector.status"), ({"method": 99}, "connector.method")],
    ids=["status-99", "method-99"],
)
def test_an_enum_number_unknown_to_the_proto_is_an_invalid_argument(
    running_sidecar: InProcessSidecar, fields: dict[str, Any], expected_field: str
) -> None:
    error = rpc_error_of(lambda: register(running_sidecar.stub, connector(**fields)))

    assert error.code() == grpc.StatusCode.INVALID_ARGUMENT, error.details()
    assert violated_fields(error) == [expected_field]


def test_a_rejected_registration_changes_nothing(running_sidecar: InProcessSidecar) -> None:
    stub = running_sidecar.stub
    register(stub, connector(display_name="good"))

    replaced = rpc_error_of(
        lambda: register(stub, connector(display_name="bad", url_template="ftp://x/y"))
    )
    new = rpc_error_of(lambda: register(stub, connector("fresh", url_template="ftp://x/y")))

    assert replaced.code() == new.code() == grpc.StatusCode.INVALID_ARGUMENT
    stored = get(stub, "orders")
    assert (stored.version, stored.display_name, stored.url_template) == (1, "good", ORDERS_URL)
    assert rpc_error_of(lambda: get(stub, "fresh")).code() == grpc.StatusCode.NOT_FOUND
    assert list_all_ids(stub) == ["orders"]
    assert register(stub, connector()).connector.version == 2


# ---------------------------------------------------------------------------------------------
# ListConnectors
# ---------------------------------------------------------------------------------------------


def test_list_pages_through_every_connector_in_id_order(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub
    for connector_id in ("echo", "alpha", "delta", "charlie", "bravo"):
        register(stub, connector(connector_id))

    pages: list[list[str]] = []
    tokens: list[str] = []
    token = ""
    while True:
        response = stub.ListConnectors(
            pb.ListConnectorsRequest(page_size=2, page_token=token), timeout=RPC_TIMEOUT
        )
        pages.append([item.id for item in response.connectors])
        tokens.append(response.next_page_token)
        token = response.next_page_token
        if not token or len(pages) > 5:
            break

    assert pages == [["alpha", "bravo"], ["charlie", "delta"], ["echo"]]
    assert all(tokens[:2])
    assert tokens[2] == ""


def test_list_without_page_size_returns_everything_on_one_page(
    running_sidecar: InProcessSidecar,
) -> None:
    for connector_id in ("b", "a", "c"):
        register(running_sidecar.stub, connector(connector_id))

    response = running_sidecar.stub.ListConnectors(pb.ListConnectorsRequest(), timeout=5)

    assert [item.id for item in response.connectors] == ["a", "b", "c"]
    assert response.next_page_token == ""


def test_list_of_an_empty_registry_is_empty(running_sidecar: InProcessSidecar) -> None:
    response = running_sidecar.stub.ListConnectors(pb.ListConnectorsRequest(), timeout=5)

    assert list(response.connectors) == []
    assert response.next_page_token == ""


def test_list_filters_by_status(running_sidecar: InProcessSidecar) -> None:
    stub = running_sidecar.stub
    register(stub, connector("live-1"))
    register(stub, connector("draft-1", status=pb.CONNECTOR_STATUS_DRAFT))
    register(stub, connector("live-2"))
    register(stub, connector("off-1", status=pb.CONNECTOR_STATUS_DISABLED))
    register(stub, connector("draft-2", status=pb.CONNECTOR_STATUS_DRAFT))

    assert list_all_ids(stub, status=pb.CONNECTOR_STATUS_DRAFT) == ["draft-1", "draft-2"]
    assert list_all_ids(stub, status=pb.CONNECTOR_STATUS_LIVE) == ["live-1", "live-2"]
    assert list_all_ids(stub, status=pb.CONNECTOR_STATUS_DISABLED) == ["off-1"]
    assert len(list_all_ids(stub)) == 5


def test_list_status_filter_pages_over_matching_connectors_only(
    running_sidecar: InProcessSidecar,
) -> None:
    stub = running_sidecar.stub
    for index in range(3):
        register(stub, connector(f"draft-{index}", status=pb.CONNECTOR_STATUS_DRAFT))
        register(stub, connector(f"live-{index}"))

    first = stub.ListConnectors(
        pb.ListConnectorsRequest(page_size=2, status=pb.CONNECTOR_STATUS_LIVE), timeout=5
    )
    second = stub.ListConnectors(
        pb.ListConnectorsRequest(
            page_size=2, status=pb.CONNECTOR_STATUS_LIVE, page_token=first.next_page_token
        ),
        timeout=5,
    )

    assert [item.id for item in first.connectors] == ["live-0", "live-1"]
    assert [item.id for item in second.connectors] == ["live-2"]
    assert second.next_page_token == ""


@pytest.mark.parametrize("page_size", [501, -1])
def test_list_page_size_out_of_range_is_invalid(
    running_sidecar: InProcessSidecar, page_size: int
) -> None:
    request = pb.ListConnectorsRequest(page_size=page_size)

    error = rpc_error_of(lambda: running_sidecar.stub.ListConnectors(request, timeout=5))

    assert violated_fields(error) == ["page_size"]


def test_list_page_size_500_is_accepted(running_sidecar: InProcessSidecar) -> None:
    register(running_sidecar.stub, connector())

    assert list_all_ids(running_sidecar.stub, page_size=500) == ["orders"]


def _list_with_page_token(stub: pb_grpc.RulesSidecarServiceStub, page_token: str) -> None:
    register(stub, connector())
    request = pb.ListConnectorsRequest(page_token=page_token)

    error = rpc_error_of(lambda: stub.ListConnectors(request, timeout=RPC_TIMEOUT))

    assert violated_fields(error) == ["page_token"]


@pytest.mark.parametrize("page_token", ["not-a-token", "garbage", "zzzz"])
def test_list_with_a_garbage_page_token_is_invalid(
    running_sidecar: InProcessSidecar, page_token: str
) -> None:
    _list_with_page_token(running_sidecar.stub, page_token)


@pytest.mark.parametrize("page_token", ["!!!!", "%%%%%", "AAAA"])
def test_list_with_a_page_token_that_base64_half_accepts_is_invalid(
    running_sidecar: InProcessSidecar, page_token: str
) -> None:
    _list_with_page_token(running_sidecar.stub, page_token)


def test_list_with_a_status_unknown_to_the_proto_is_invalid(
    running_sidecar: InProcessSidecar,
) -> None:
    request = pb.ListConnectorsRequest(status=99)  # type: ignore[arg-type]

    error = rpc_error_of(lambda: running_sidecar.stub.ListConnectors(request, timeout=5))

    assert violated_fields(error) == ["status"]


# ---------------------------------------------------------------------------------------------
# The connectors file
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def sidecar_with_example_file(
    sidecar_factory: Callable[..., InProcessSidecar],
) -> InProcessSidecar:
    return sidecar_factory(
        connectors_file=EXAMPLE_CONNECTORS_FILE, secret_hosts=example_secret_hosts()
    )


def test_connectors_file_connectors_are_listed_as_file_sourced_version_1(
    sidecar_with_example_file: InProcessSidecar,
) -> None:
    stub = sidecar_with_example_file.stub
    register(stub, connector("api-made"))
    definitions = {definition["id"]: definition for definition in example_connectors()}

    listed = stub.ListConnectors(pb.ListConnectorsRequest(), timeout=RPC_TIMEOUT).connectors

    by_id = {item.id: item for item in listed}
    assert definitions, "examples/connectors.yaml declares no connector"
    assert list(by_id) == sorted([*definitions, "api-made"])
    assert by_id["api-made"].source == pb.CONNECTOR_SOURCE_API
    for file_id, definition in definitions.items():
        from_file = by_id[file_id]
        assert (from_file.source, from_file.version) == (pb.CONNECTOR_SOURCE_FILE, 1), file_id
        assert from_file.HasField("update_time")
        assert from_file.url_template == definition["url_template"]
        assert from_file.display_name == definition.get("display_name", "")
        assert pb.ConnectorStatus.Name(from_file.status) == (
            f"CONNECTOR_STATUS_{definition['status']}"
        )
        assert from_file.HasField("auth") == ("auth" in definition)


FILE_CONNECTOR = example_connectors()[0]


@pytest.mark.parametrize("expected_version", [None, 1])
def test_register_over_a_file_connector_is_a_failed_precondition(
    sidecar_with_example_file: InProcessSidecar, expected_version: int | None
) -> None:
    stub = sidecar_with_example_file.stub
    replacement = connector(FILE_CONNECTOR["id"], display_name="hijacked")

    error = rpc_error_of(lambda: register(stub, replacement, expected_version))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert FILE_CONNECTOR["id"] in error.details()
    stored = get(stub, FILE_CONNECTOR["id"])
    assert (stored.display_name, stored.url_template, stored.source) == (
        FILE_CONNECTOR.get("display_name", ""),
        FILE_CONNECTOR["url_template"],
        pb.CONNECTOR_SOURCE_FILE,
    )


def test_delete_of_a_file_connector_is_a_failed_precondition(
    sidecar_with_example_file: InProcessSidecar,
) -> None:
    stub = sidecar_with_example_file.stub

    error = rpc_error_of(lambda: delete(stub, FILE_CONNECTOR["id"]))

    assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
    stored = get(stub, FILE_CONNECTOR["id"])
    assert (stored.version, stored.source) == (1, pb.CONNECTOR_SOURCE_FILE)


# ---------------------------------------------------------------------------------------------
# The catch-all: unexpected exceptions never leak
# ---------------------------------------------------------------------------------------------

SECRET_DETAIL = "secret internal detail"


async def _explode(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise RuntimeError(SECRET_DETAIL)


async def _not_found(request: bytes, context: grpc.aio.ServicerContext) -> bytes:
    raise NotFoundError("no connector with id 'ghost'")


async def _call_through_error_mapping(method: str) -> grpc.aio.AioRpcError:
    """Serve `_explode`/`_not_found` behind the error mapping (`guarded`), call it."""
    server = grpc.aio.server()
    server.add_generic_rpc_handlers(
        (
            guarded(
                grpc.method_handlers_generic_handler(
                    "test.Faulty",
                    {
                        "Explode": grpc.unary_unary_rpc_method_handler(_explode),
                        "NotFound": grpc.unary_unary_rpc_method_handler(_not_found),
                    },
                )
            ),
        )
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            call = channel.unary_unary(f"/test.Faulty/{method}")
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await call(b"", timeout=RPC_TIMEOUT)
            return caught.value
    finally:
        await server.stop(None)


def test_an_unexpected_exception_becomes_internal_with_a_generic_message() -> None:
    error = asyncio.run(_call_through_error_mapping("Explode"))

    assert error.code() == grpc.StatusCode.INTERNAL
    assert error.details() == GENERIC_INTERNAL_MESSAGE
    leaked = [error.details(), error.debug_error_string() or ""]
    leaked += [f"{key}={value!r}" for key, value in error.trailing_metadata() or ()]
    assert not any(SECRET_DETAIL in text or "RuntimeError" in text for text in leaked)


def test_a_sidecar_error_from_a_handler_maps_to_its_status() -> None:
    error = asyncio.run(_call_through_error_mapping("NotFound"))

    assert error.code() == grpc.StatusCode.NOT_FOUND
    assert error.details() == "no connector with id 'ghost'"
