"""The protobuf edge: connectors both ways, enums by name, errors as gRPC statuses, field paths."""

from __future__ import annotations

import json
import math
import re
import urllib.parse
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from google.protobuf import duration_pb2, json_format, struct_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from hypothesis import given, settings
from hypothesis import strategies as st
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.api import wire
from sidecar.core import model
from sidecar.core.auth import mask_secrets
from sidecar.errors import (
    ConfigError,
    ErrorCode,
    FieldViolation,
    InvalidArgumentError,
    SidecarError,
    VersionConflictError,
    field_path,
)

UPDATE_TIME = datetime(2026, 3, 1, 12, 30, 15, 250000, tzinfo=UTC)

FULL_CONNECTORS = {
    "no-auth": {
        "id": "order-status",
        "status": "LIVE",
        "url_template": "https://api.store.com/orders/{{order_number}}",
    },
    "bearer": {
        "id": "crm-contact-lookup",
        "display_name": "Find a CRM contact",
        "status": "DRAFT",
        "method": "POST",
        "url_template": "https://crm.example.com/api/v2/contacts/search",
        "headers": {"Accept": "application/json", "X-Channel": "{{channel}}"},
        "query": {"limit": "{{max_results}}", "sort": "name"},
        "body_template": {
            "filter": {"email": "{{customer.email}}", "tags": ["vip", "{{tier}}"]},
            "limit": 10,
            "ratio": 0.25,
            "strict": True,
            "cursor": None,
            "whole": "{{everything}}",
        },
        "auth": {"bearer": {"token_secret": "crm_token"}},
        "timeout": timedelta(milliseconds=2500),
        "max_response_bytes": 65536,
        "version": 4,
        "update_time": UPDATE_TIME,
        "source": "API",
    },
    "api-key-header": {
        "id": "stock",
        "status": "DISABLED",
        "method": "PUT",
        "url_template": "https://stock.example.com/items/{{sku}}",
        "auth": {"api_key": {"name": "X-API-Key", "value_secret": "stock_key"}},
        "timeout": timedelta(seconds=30),
        "version": 1,
        "update_time": UPDATE_TIME,
        "source": "FILE",
    },
    "api-key-query": {
        "id": "weather",
        "status": "LIVE",
        "method": "DELETE",
        "url_template": "https://weather.example.com/v1/{{city}}",
        "auth": {"api_key": {"name": "appid", "location": "QUERY", "value_secret": "owm.key"}},
        "body_template": [1, 2.5, "{{x}}", [], {}],
        "timeout": timedelta(milliseconds=1),
    },
    "basic": {
        "id": "legacy-erp",
        "status": "LIVE",
        "method": "PATCH",
        "url_template": "http://erp.internal:8080/api/orders/{{id}}",
        "auth": {"basic": {"username_secret": "erp-user", "password_secret": "erp-pass"}},
        "body_template": "{{payload}}",
        "max_response_bytes": 16 * 1024 * 1024,
    },
    "oauth2-client-credentials": {
        "id": "crm-deals",
        "status": "LIVE",
        "url_template": "https://api.crm.example/v3/deals/{{deal_id}}",
        "auth": {
            "oauth2_client_credentials": {
                "token_url": "https://login.crm.example/oauth2/token",
                "client_id_secret": "crm_client_id",
                "client_secret_secret": "crm_client_secret",
                "scopes": ["deals.read", "contacts.read"],
                "audience": "https://api.crm.example",
                "client_auth_method": "CLIENT_SECRET_POST",
            }
        },
    },
}
OUTPUT_ONLY_DEFAULTS = {"version": 0, "update_time": None, "source": model.ConnectorSource.API}


def minimal_message(**fields: Any) -> pb.Connector:
    defaults = {
        "id": "order-status",
        "status": pb.CONNECTOR_STATUS_LIVE,
        "url_template": "https://api.store.com/orders/{{order_number}}",
    }
    return pb.Connector(**{**defaults, **fields})


def violations(error: InvalidArgumentError) -> dict[str, str]:
    return {violation.field: violation.description for violation in error.violations}


# ---------------------------------------------------------------------------------------------
# Connectors both ways
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("definition", FULL_CONNECTORS.values(), ids=FULL_CONNECTORS.keys())
def test_connector_survives_a_trip_through_proto(definition):
    original = model.Connector.model_validate(definition)

    back = wire.connector_from_proto(wire.connector_to_proto(original))

    # Output-only fields are written to proto but never read back from a request.
    assert back == original.model_copy(update=OUTPUT_ONLY_DEFAULTS)


@pytest.mark.parametrize("definition", FULL_CONNECTORS.values(), ids=FULL_CONNECTORS.keys())
def test_proto_connector_survives_a_trip_through_the_model(definition):
    message = wire.connector_to_proto(
        model.Connector.model_validate(definition).model_copy(update=OUTPUT_ONLY_DEFAULTS)
    )

    again = wire.connector_to_proto(wire.connector_from_proto(message))

    assert again == message


def test_connector_to_proto_writes_every_field():
    connector = model.Connector.model_validate(FULL_CONNECTORS["bearer"])

    message = wire.connector_to_proto(connector)

    assert message.id == "crm-contact-lookup"
    assert message.display_name == "Find a CRM contact"
    assert message.status == pb.CONNECTOR_STATUS_DRAFT
    assert message.method == pb.HTTP_METHOD_POST
    assert message.url_template == "https://crm.example.com/api/v2/contacts/search"
    assert dict(message.headers) == {"Accept": "application/json", "X-Channel": "{{channel}}"}
    assert dict(message.query) == {"limit": "{{max_results}}", "sort": "name"}
    assert message.auth.WhichOneof("scheme") == "bearer"
    assert message.auth.bearer.token_secret == "crm_token"
    assert message.timeout == duration_pb2.Duration(seconds=2, nanos=500_000_000)
    assert message.max_response_bytes == 65536
    assert message.version == 4
    assert message.update_time.ToDatetime(tzinfo=UTC) == UPDATE_TIME
    assert message.source == pb.CONNECTOR_SOURCE_API
    body = message.body_template.struct_value
    assert body["limit"] == 10
    assert body["filter"]["tags"][1] == "{{tier}}"
    assert body.fields["cursor"].WhichOneof("kind") == "null_value"


@pytest.mark.parametrize(
    ("auth", "scheme", "fields"),
    [
        ({"bearer": {"token_secret": "t"}}, "bearer", {"token_secret": "t"}),
        (
            {"api_key": {"name": "X-Key", "value_secret": "k"}},
            "api_key",
            {"name": "X-Key", "location": pb.API_KEY_LOCATION_HEADER, "value_secret": "k"},
        ),
        (
            {"api_key": {"name": "key", "location": "QUERY", "value_secret": "k"}},
            "api_key",
            {"name": "key", "location": pb.API_KEY_LOCATION_QUERY, "value_secret": "k"},
        ),
        (
            {"basic": {"username_secret": "u", "password_secret": "p"}},
            "basic",
            {"username_secret": "u", "password_secret": "p"},
        ),
        (
            {
                "oauth2_client_credentials": {
                    "token_url": "https://login.example.com/token",
                    "client_id_secret": "id",
                    "client_secret_secret": "s",
                }
            },
            "oauth2_client_credentials",
            {
                "token_url": "https://login.example.com/token",
                "client_id_secret": "id",
                "client_secret_secret": "s",
                "client_auth_method": pb.CLIENT_AUTH_METHOD_CLIENT_SECRET_BASIC,
            },
        ),
    ],
)
def test_each_auth_scheme_is_written_as_its_oneof_member(auth, scheme, fields):
    connector = model.Connector.model_validate({**FULL_CONNECTORS["no-auth"], "auth": auth})

    message = wire.connector_to_proto(connector).auth

    assert message.WhichOneof("scheme") == scheme
    assert {name: getattr(getattr(message, scheme), name) for name in fields} == fields


def test_output_only_fields_of_a_request_are_ignored():
    message = minimal_message(version=7, source=pb.CONNECTOR_SOURCE_FILE)
    message.update_time.FromDatetime(UPDATE_TIME)

    connector = wire.connector_from_proto(message)

    assert connector.version == 0
    assert connector.update_time is None
    assert connector.source is model.ConnectorSource.API


def test_unset_proto_fields_take_the_model_defaults():
    message = minimal_message()
    message.auth.api_key.name = "X-Key"
    message.auth.api_key.value_secret = "k"

    connector = wire.connector_from_proto(message)

    assert connector.method is model.HttpMethod.GET
    assert connector.timeout == timedelta(seconds=5)
    assert connector.max_response_bytes == 1024 * 1024
    assert connector.body_template is None
    assert connector.auth.api_key.location is model.ApiKeyLocation.HEADER


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (struct_pb2.Value(number_value=3.0), 3),
        (struct_pb2.Value(number_value=2.5), 2.5),
        (struct_pb2.Value(bool_value=True), True),
        (struct_pb2.Value(string_value="{{x}}"), "{{x}}"),
        (struct_pb2.Value(null_value=struct_pb2.NULL_VALUE), None),
        (
            wire.value_to_proto({"n": 12345, "list": [1.0, [2.0, "a"]]}),
            {"n": 12345, "list": [1, [2, "a"]]},
        ),
    ],
)
def test_body_template_numbers_come_back_with_their_json_type(value, expected):
    message = minimal_message(body_template=value)

    body = wire.connector_from_proto(message).body_template

    # 3 == 3.0 in Python; JSON text tells them apart, so an int must stay an int.
    assert json.dumps(body, sort_keys=True) == json.dumps(expected, sort_keys=True)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**53), max_value=2**53)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(max_size=8),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=6), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=300, deadline=None)
@given(data=st.dictionaries(st.text(max_size=6), JSON_VALUES, max_size=5))
def test_answer_values_are_the_bytes_json_format_would_build(data: dict[str, Any]) -> None:
    # json_format is the independent oracle; the answer is filled in place for speed.
    answer = wire.extract_answer(data, (), message_limit=4 * 1024 * 1024)
    expected = json_format.ParseDict(data, struct_pb2.Struct())

    assert answer.variables.SerializeToString(deterministic=True) == (
        expected.SerializeToString(deterministic=True)
    )
    # And back: the oracle's reading with integral numbers as ints (JSON text tells them apart).
    back = wire.value_from_proto(answer.variables, "variables")
    assert json.dumps(back, sort_keys=True) == json.dumps(
        _ints(json_format.MessageToDict(expected)), sort_keys=True
    )


@settings(max_examples=300, deadline=None)
@given(data=JSON_VALUES)
def test_a_value_at_the_top_is_the_one_json_format_would_build(data: Any) -> None:
    # An extraction's value sits at the top of a Value: `{}` and `[]` there must be an empty
    # struct and list, not a Value with no kind (which every client reads as null).
    expected = json_format.ParseDict(data, struct_pb2.Value())

    value = wire.value_to_proto(data)

    assert value.WhichOneof("kind") == expected.WhichOneof("kind")
    assert value.SerializeToString(deterministic=True) == (
        expected.SerializeToString(deterministic=True)
    )


@settings(max_examples=300, deadline=None)
@given(
    data=JSON_VALUES | st.dictionaries(st.text(max_size=3), JSON_VALUES, max_size=6),
    roots=st.none() | st.frozensets(st.text(max_size=3), max_size=3),
)
def test_a_document_read_by_its_roots_has_what_reading_it_whole_gives_there(
    data: Any, roots: frozenset[str] | None
) -> None:
    value = json_format.ParseDict(data, struct_pb2.Value())
    whole = wire.value_from_proto(value, "json")

    document, size = wire.document_from_proto(value, "json", roots=roots)

    assert size == value.ByteSize()
    if roots is None or not isinstance(whole, dict):
        assert document == whole
    else:  # the plain paths that start at these roots find what they would in the whole
        # (a document whose bytes may hold a NaN is read whole: more than the roots, then)
        assert {root: document[root] for root in roots if root in document} == {
            root: whole[root] for root in roots if root in whole
        }
        if not wire._may_hold_non_finite(value.SerializeToString()):
            assert set(document) <= roots


@pytest.mark.parametrize("number", [math.nan, -math.nan, math.inf, -math.inf])
@pytest.mark.parametrize("roots", [None, frozenset(), frozenset({"status"})])
def test_a_non_finite_number_anywhere_in_a_document_is_a_violation(number, roots):
    value = json_format.ParseDict(
        {"status": "shipped", "items": [{"price": 1.5}]}, struct_pb2.Value()
    )
    value.struct_value.fields["items"].list_value.values[0].struct_value.fields[
        "price"
    ].number_value = number

    with pytest.raises(InvalidArgumentError) as raised:
        wire.document_from_proto(value, "json", roots=roots)

    assert [violation.field for violation in raised.value.violations] == ["json"]


@settings(max_examples=500, deadline=None)
@given(number=st.floats(), prefix=st.binary(max_size=9), suffix=st.binary(max_size=9))
def test_the_byte_check_never_misses_a_non_finite_double(number, prefix, suffix):
    # A false alarm only costs a whole read; a miss would let NaN through: there must be none.
    value = struct_pb2.Value(number_value=number)
    serialised = prefix + value.SerializeToString() + suffix

    if not math.isfinite(number):
        assert wire._may_hold_non_finite(serialised)


def test_the_byte_check_passes_ordinary_documents_without_a_search():
    value = json_format.ParseDict(
        {"total": 123.45, "price": 15.43, "qty": 1, "name": "Ünïcödé 😀"}, struct_pb2.Value()
    )

    assert not wire._may_hold_non_finite(value.SerializeToString())


def _ints(data: Any) -> Any:
    if isinstance(data, float) and data.is_integer() and abs(data) < 2**53:
        return int(data)
    if isinstance(data, list):
        return [_ints(item) for item in data]
    if isinstance(data, dict):
        return {key: _ints(item) for key, item in data.items()}
    return data


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"big": 10**400}, {"big": str(10**400)}),
        (
            {"nested": [[], {}, [{"big": -(10**400)}]]},
            {"nested": [[], {}, [{"big": str(-(10**400))}]]},
        ),
        ({"tuple": (1, "a")}, {"tuple": [1, "a"]}),
        ({"bool": True, "zero": 0, "none": None}, {"bool": True, "zero": 0, "none": None}),
    ],
    ids=["huge-int", "nested-empty-and-huge", "tuple", "bool-not-number"],
)
def test_answer_values_keep_what_json_cannot_hold_as_text(data, expected):
    outcome = model.Outcome(
        model.OutcomeKind.MATCHED, model.Reason.BRANCH_MATCHED, "t", variables=data
    )

    response = wire.outcome_to_proto(outcome)

    assert response.variables == json_format.ParseDict(expected, struct_pb2.Struct())


@pytest.mark.parametrize(
    ("duration", "expected"),
    [
        (duration_pb2.Duration(seconds=5), timedelta(seconds=5)),
        (duration_pb2.Duration(nanos=500_000_000), timedelta(milliseconds=500)),
        (duration_pb2.Duration(seconds=30), timedelta(seconds=30)),
        (duration_pb2.Duration(seconds=2, nanos=1_000), timedelta(seconds=2, microseconds=1)),
    ],
)
def test_timeout_travels_as_a_duration(duration, expected):
    connector = wire.connector_from_proto(minimal_message(timeout=duration))

    assert connector.timeout == expected
    assert wire.connector_to_proto(connector).timeout == duration


@pytest.mark.parametrize(
    "duration",
    [
        duration_pb2.Duration(),
        duration_pb2.Duration(seconds=30, nanos=1_000),
        duration_pb2.Duration(seconds=-1),
    ],
    ids=["zero", "over-30s", "negative"],
)
def test_timeout_outside_the_limits_is_a_violation(duration):
    with pytest.raises(InvalidArgumentError) as caught:
        wire.connector_from_proto(minimal_message(timeout=duration))

    assert "connector.timeout" in violations(caught.value)


def test_unspecified_status_is_a_required_field():
    message = minimal_message()
    message.status = pb.CONNECTOR_STATUS_UNSPECIFIED

    with pytest.raises(InvalidArgumentError) as caught:
        wire.connector_from_proto(message)

    assert caught.value.violations == (FieldViolation("connector.status", "required"),)


def test_every_invalid_field_of_a_proto_connector_is_named():
    message = pb.Connector(
        id="Not A Slug",
        url_template="https://{{host}}/x",
        headers={"Authorization": "Bearer abc", "X-Ok": "fine"},
        query={"{{name}}": "v"},
        max_response_bytes=-1,
    )
    message.auth.api_key.name = "X-Key"
    message.auth.api_key.value_secret = "../etc/passwd"

    with pytest.raises(InvalidArgumentError) as caught:
        wire.connector_from_proto(message)

    found = violations(caught.value)
    assert set(found) == {
        "connector.id",
        "connector.status",
        "connector.url_template",
        'connector.headers["Authorization"]',
        'connector.query["{{name}}"]',
        "connector.auth.api_key.value_secret",
        "connector.max_response_bytes",
    }
    assert found["connector.status"] == "required"
    assert "carries a credential" in found['connector.headers["Authorization"]']
    assert not any(text.startswith("Value error") for text in found.values())


def test_auth_without_a_scheme_is_a_violation_of_auth():
    message = minimal_message(auth=pb.Auth())

    with pytest.raises(InvalidArgumentError) as caught:
        wire.connector_from_proto(message)

    assert violations(caught.value) == {
        "connector.auth": "set exactly one of bearer, api_key, basic, oauth2_client_credentials"
    }


def test_violations_are_named_under_the_given_prefix():
    message = minimal_message(url_template="ftp://x")

    with pytest.raises(InvalidArgumentError) as caught:
        wire.connector_from_proto(message, prefix="request.connector")

    assert list(violations(caught.value)) == ["request.connector.url_template"]


def _unknown_status() -> pb.Connector:
    message = minimal_message()
    message.status = 99
    return message


def _unknown_method() -> pb.Connector:
    return minimal_message(method=42)


def _unknown_api_key_location() -> pb.Connector:
    message = minimal_message()
    message.auth.api_key.name = "X-Key"
    message.auth.api_key.value_secret = "k"
    message.auth.api_key.location = 7
    return message


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (_unknown_status, "connector.status"),
        (_unknown_method, "connector.method"),
        (_unknown_api_key_location, "connector.auth.api_key.location"),
    ],
    ids=["status", "method", "api-key-location"],
)
def test_unknown_enum_number_is_a_violation_of_its_field(build, field):
    with pytest.raises(InvalidArgumentError) as caught:
        wire.connector_from_proto(build())

    assert violations(caught.value)[field].startswith("Input should be ")  # lists valid values


def test_unknown_operator_number_in_a_node_is_a_violation():
    message = pb.Node(connector_id="order-status")
    branch = message.branches.add(target="t")
    branch.conditions.add(subject=pb.Subject(kind=pb.SUBJECT_KIND_STATUS), operator=99)

    with pytest.raises(InvalidArgumentError) as caught:
        wire.node_from_proto(message)

    assert "node.branches[0].conditions[0].operator" in violations(caught.value)


@pytest.mark.parametrize("number", [math.nan, math.inf, -math.inf], ids=["nan", "inf", "-inf"])
def test_non_finite_number_in_body_template_is_a_violation(number):
    message = minimal_message(body_template=struct_pb2.Value(number_value=number))

    with pytest.raises(InvalidArgumentError) as caught:
        wire.connector_from_proto(message)

    assert "connector.body_template" in violations(caught.value)


# ---------------------------------------------------------------------------------------------
# Enums cross by name
# ---------------------------------------------------------------------------------------------

ENUM_PAIRS = [
    (pb.ConnectorStatus, model.ConnectorStatus, "CONNECTOR_STATUS_"),
    (pb.HttpMethod, model.HttpMethod, "HTTP_METHOD_"),
    (pb.ApiKeyLocation, model.ApiKeyLocation, "API_KEY_LOCATION_"),
    (pb.ConnectorSource, model.ConnectorSource, "CONNECTOR_SOURCE_"),
    (pb.Combinator, model.Combinator, "COMBINATOR_"),
    (pb.SubjectKind, model.SubjectKind, "SUBJECT_KIND_"),
    (pb.Operator, model.Operator, "OPERATOR_"),
    (pb.Quantifier, model.Quantifier, "QUANTIFIER_"),
    (pb.CastType, model.CastType, "CAST_TYPE_"),
    (pb.Outcome, model.OutcomeKind, "OUTCOME_"),
    (pb.Reason, model.Reason, "REASON_"),
    (pb.ExtractionStatus, model.ExtractionStatus, "EXTRACTION_STATUS_"),
]


def _proto_values(proto_enum: Any, prefix: str) -> list[tuple[str, int]]:
    return [
        (value.name, value.number)
        for value in proto_enum.DESCRIPTOR.values
        if value.name != f"{prefix}UNSPECIFIED"
    ]


@pytest.mark.parametrize(
    ("proto_enum", "model_enum", "prefix", "name", "number"),
    [
        (proto_enum, model_enum, prefix, name, number)
        for proto_enum, model_enum, prefix in ENUM_PAIRS
        for name, number in _proto_values(proto_enum, prefix)
    ],
)
def test_every_proto_enum_value_maps_to_a_model_member_and_back(
    proto_enum, model_enum, prefix, name, number
):
    value = wire.enum_from_proto(model_enum, proto_enum, number, prefix)

    assert value == name.removeprefix(prefix)
    assert wire.enum_to_proto(proto_enum, model_enum(value), prefix) == number


@pytest.mark.parametrize(
    ("proto_enum", "model_enum", "prefix"), ENUM_PAIRS, ids=[p[1].__name__ for p in ENUM_PAIRS]
)
def test_model_enum_has_no_member_the_proto_lacks(proto_enum, model_enum, prefix):
    proto_names = {name.removeprefix(prefix) for name, _ in _proto_values(proto_enum, prefix)}

    assert set(model_enum.__members__) == proto_names


@pytest.mark.parametrize(
    ("proto_enum", "model_enum", "prefix"), ENUM_PAIRS, ids=[p[1].__name__ for p in ENUM_PAIRS]
)
def test_unspecified_zero_value_maps_to_none_and_back(proto_enum, model_enum, prefix):
    assert wire.enum_from_proto(model_enum, proto_enum, 0, prefix) is None
    assert wire.enum_to_proto(proto_enum, None, prefix) == 0


# ---------------------------------------------------------------------------------------------
# Errors as gRPC statuses
# ---------------------------------------------------------------------------------------------

ERROR_CLASSES = {cls.code: cls for cls in SidecarError.__subclasses__()}


def _error_for(code: ErrorCode) -> SidecarError:
    cls = ERROR_CLASSES[code]
    if cls is InvalidArgumentError:
        return InvalidArgumentError(
            [
                FieldViolation("connector.id", "must be a slug"),
                FieldViolation('connector.headers["Cookie"]', "carries a credential"),
            ]
        )
    if cls is ConfigError:
        return ConfigError("invalid connectors file", ["f.yaml:3: connectors[0].id: bad"])
    return cls(f"something about {code.value}")


def _details_of(status: grpc.Status) -> status_pb2.Status:
    metadata = dict(status.trailing_metadata)
    return status_pb2.Status.FromString(metadata["grpc-status-details-bin"])


def test_every_error_code_has_an_error_class_and_a_grpc_status():
    assert set(ERROR_CLASSES) == set(ErrorCode)
    assert set(wire.STATUS_BY_ERROR_CODE) == set(ErrorCode)


@pytest.mark.parametrize("code", list(ErrorCode), ids=[code.name for code in ErrorCode])
def test_rpc_status_of_uses_the_one_mapping_table(code):
    error = _error_for(code)

    status = wire.rpc_status_of(error)

    assert status.code is wire.STATUS_BY_ERROR_CODE[code]
    assert status.details == error.message
    details = _details_of(status)
    assert details.code == getattr(code_pb2, status.code.name)
    assert details.message == error.message


@pytest.mark.parametrize(
    ("code", "grpc_code"),
    [
        (ErrorCode.INVALID_ARGUMENT, grpc.StatusCode.INVALID_ARGUMENT),
        (ErrorCode.UNAUTHENTICATED, grpc.StatusCode.UNAUTHENTICATED),
        (ErrorCode.PERMISSION_DENIED, grpc.StatusCode.PERMISSION_DENIED),
        (ErrorCode.NOT_FOUND, grpc.StatusCode.NOT_FOUND),
        (ErrorCode.VERSION_CONFLICT, grpc.StatusCode.ABORTED),
        (ErrorCode.READ_ONLY, grpc.StatusCode.FAILED_PRECONDITION),
        (ErrorCode.NOT_READY, grpc.StatusCode.UNAVAILABLE),
        (ErrorCode.STORE, grpc.StatusCode.UNAVAILABLE),
        (ErrorCode.CONFIG, grpc.StatusCode.FAILED_PRECONDITION),
    ],
)
def test_error_code_maps_to_the_documented_grpc_status(code, grpc_code):
    assert wire.STATUS_BY_ERROR_CODE[code] is grpc_code


def _detail_types(status: grpc.Status) -> list[str]:
    return [detail.type_url.rsplit("/", 1)[-1] for detail in _details_of(status).details]


def _unpacked(status: grpc.Status, kind: type[Any]) -> Any:
    """The one detail of `kind` in the status (fails if there is none or several)."""
    found = []
    for detail in _details_of(status).details:
        message = kind()
        if detail.Unpack(message):
            found.append(message)
    assert len(found) == 1, _detail_types(status)
    return found[0]


def test_invalid_argument_carries_a_bad_request_with_every_violation():
    status = wire.rpc_status_of(_error_for(ErrorCode.INVALID_ARGUMENT))

    assert _detail_types(status) == ["google.rpc.ErrorInfo", "google.rpc.BadRequest"]
    bad_request = _unpacked(status, error_details_pb2.BadRequest)
    assert [(v.field, v.description) for v in bad_request.field_violations] == [
        ("connector.id", "must be a slug"),
        ('connector.headers["Cookie"]', "carries a credential"),
    ]


@pytest.mark.parametrize(
    ("code", "details"),
    [
        (ErrorCode.UNAUTHENTICATED, ["google.rpc.ErrorInfo"]),
        (ErrorCode.PERMISSION_DENIED, ["google.rpc.ErrorInfo"]),
        (ErrorCode.NOT_FOUND, ["google.rpc.ErrorInfo"]),
        (ErrorCode.VERSION_CONFLICT, ["google.rpc.ErrorInfo"]),
        (ErrorCode.READ_ONLY, ["google.rpc.ErrorInfo"]),
        (ErrorCode.NOT_READY, ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]),
        (ErrorCode.OVERLOADED, ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]),
        (ErrorCode.STORE, ["google.rpc.ErrorInfo", "google.rpc.RetryInfo"]),
        (ErrorCode.CONFIG, ["google.rpc.ErrorInfo"]),
    ],
)
def test_other_errors_carry_error_info_and_a_retry_hint_only_when_retrying_helps(code, details):
    """No BadRequest outside INVALID_ARGUMENT; RetryInfo on every RESOURCE_EXHAUSTED and
    UNAVAILABLE (the codes callers retry), never on the others."""
    status = wire.rpc_status_of(_error_for(code))

    assert _detail_types(status) == details
    retryable = status.code in (grpc.StatusCode.RESOURCE_EXHAUSTED, grpc.StatusCode.UNAVAILABLE)
    assert ("google.rpc.RetryInfo" in details) is retryable


@pytest.mark.parametrize(
    ("code", "reason"),
    [
        (ErrorCode.INVALID_ARGUMENT, "INVALID_REQUEST"),
        (ErrorCode.UNAUTHENTICATED, "TOKEN_INVALID"),
        (ErrorCode.PERMISSION_DENIED, "ROLE_NOT_ALLOWED"),
        (ErrorCode.NOT_FOUND, "CONNECTOR_NOT_FOUND"),
        (ErrorCode.VERSION_CONFLICT, "VERSION_CONFLICT"),
        (ErrorCode.READ_ONLY, "CONNECTOR_READ_ONLY"),
        (ErrorCode.NOT_READY, "NOT_READY"),
        (ErrorCode.OVERLOADED, "OVERLOADED"),
        (ErrorCode.STORE, "STORE_UNAVAILABLE"),
        (ErrorCode.CONFIG, "CONFIG_INVALID"),
    ],
)
def test_every_error_carries_error_info_with_its_documented_reason(code, reason):
    info = _unpacked(wire.rpc_status_of(_error_for(code)), error_details_pb2.ErrorInfo)

    assert (info.reason, info.domain) == (reason, "rules-sidecar")
    assert re.fullmatch(r"[A-Z][A-Z0-9_]*[A-Z0-9]", info.reason)


def test_every_error_code_has_a_reason():
    assert set(wire.REASON_BY_ERROR_CODE) == set(ErrorCode)
    assert len(set(wire.REASON_BY_ERROR_CODE.values())) == len(ErrorCode)
    assert wire.INTERNAL_REASON not in wire.REASON_BY_ERROR_CODE.values()


def test_error_info_metadata_carries_the_errors_dynamic_values():
    error = VersionConflictError(
        "connector 'orders' is at version 3, but expected_version was 2",
        metadata={"connector_id": "orders", "expected_version": "2", "current_version": "3"},
    )

    info = _unpacked(wire.rpc_status_of(error), error_details_pb2.ErrorInfo)

    assert dict(info.metadata) == {
        "connector_id": "orders",
        "expected_version": "2",
        "current_version": "3",
    }


def test_invalid_argument_error_info_names_the_first_field_and_counts_them():
    info = _unpacked(
        wire.rpc_status_of(_error_for(ErrorCode.INVALID_ARGUMENT)), error_details_pb2.ErrorInfo
    )

    assert dict(info.metadata) == {"field": "connector.id", "violations": "2"}


@pytest.mark.parametrize(
    ("code", "seconds"), [(ErrorCode.OVERLOADED, 1), (ErrorCode.NOT_READY, 1), (ErrorCode.STORE, 5)]
)
def test_retry_info_carries_a_delay(code, seconds):
    info = _unpacked(wire.rpc_status_of(_error_for(code)), error_details_pb2.RetryInfo)

    assert info.retry_delay.ToTimedelta() == timedelta(seconds=seconds)


def test_internal_status_carries_error_info_and_no_retry_hint():
    status = wire.internal_status("internal error")

    assert status.code is grpc.StatusCode.INTERNAL
    assert _detail_types(status) == ["google.rpc.ErrorInfo"]
    info = _unpacked(status, error_details_pb2.ErrorInfo)
    assert (info.reason, info.domain) == ("INTERNAL_ERROR", "rules-sidecar")


def _trailer_bytes(status: grpc.Status) -> int:
    """What the status costs in trailers: grpc-message percent-encoded, the details base64."""
    details = dict(status.trailing_metadata)["grpc-status-details-bin"]
    return len(urllib.parse.quote(status.details, safe=" ")) + math.ceil(len(details) / 3) * 4


@pytest.mark.parametrize(
    ("count", "field_chars", "description_chars"),
    [(10_000, 20, 20), (300, 20, 500), (50, 10_000, 10_000), (3, 100_000, 100_000)],
)
def test_many_or_long_violations_stay_within_the_trailers(count, field_chars, description_chars):
    """The issue's finding: over ~16 KiB of violations, clients saw RESOURCE_EXHAUSTED (which
    they retry) instead of INVALID_ARGUMENT. 8 KiB is grpc's default soft metadata limit."""
    violations = [
        FieldViolation(f"node.branches[{i}]." + "f" * field_chars, "d" * description_chars)
        for i in range(count)
    ]

    status = wire.rpc_status_of(InvalidArgumentError(violations))

    assert _trailer_bytes(status) < 6 * 1024
    assert len(status.details) <= wire.MAX_MESSAGE_CHARS


def test_capped_violations_end_with_and_n_more_naming_the_first_left_out():
    violations = [FieldViolation(f"extractions[{i}].path", "required") for i in range(500)]

    status = wire.rpc_status_of(InvalidArgumentError(violations))

    listed = _unpacked(status, error_details_pb2.BadRequest).field_violations
    assert len(listed) == wire.MAX_FIELD_VIOLATIONS + 1
    assert [v.field for v in listed[:-1]] == [f"extractions[{i}].path" for i in range(20)]
    assert listed[-1].field == "extractions[20].path"
    assert listed[-1].description.startswith("and 480 more invalid fields")
    assert status.details.endswith("; and 490 more")  # the message lists 10
    info = _unpacked(status, error_details_pb2.ErrorInfo)
    assert info.metadata["violations"] == "500"


def test_violations_under_the_cap_are_all_listed_unchanged():
    violations = [FieldViolation(f"f{i}", "bad") for i in range(wire.MAX_FIELD_VIOLATIONS)]

    assert wire.capped_violations(violations) == violations


def test_invalid_argument_message_summarises_its_violations():
    error = InvalidArgumentError([FieldViolation("a", "x"), FieldViolation("b.c", "y")])

    assert error.message == "invalid request: a: x; b.c: y"


# ---------------------------------------------------------------------------------------------
# Field paths
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("location", "path"),
    [
        ((), ""),
        (("connector",), "connector"),
        (("connector", "url_template"), "connector.url_template"),
        (("connector", "auth", "api_key", "name"), "connector.auth.api_key.name"),
        (("connector", "headers", "X-Key"), 'connector.headers["X-Key"]'),
        (("connector", "headers", "X-Key", "[key]"), 'connector.headers["X-Key"]'),
        (("connector", "query", "email"), 'connector.query["email"]'),
        (("connector", "query", "{{name}}", "[key]"), 'connector.query["{{name}}"]'),
        (("headers", "Accept"), 'headers["Accept"]'),
        (("node", "branches", 0, "target"), "node.branches[0].target"),
        (
            ("node", "branches", 2, "conditions", 10, "subject", "path"),
            "node.branches[2].conditions[10].subject.path",
        ),
        (("node", "extractions", 0), "node.extractions[0]"),
        (("connectors", 3, "headers", "X-A", "[key]"), 'connectors[3].headers["X-A"]'),
        (("connectors", 0, "query", "headers"), 'connectors[0].query["headers"]'),
        ((0, "id"), "[0].id"),
    ],
)
def test_field_path_spells_validation_locations_as_request_paths(location, path):
    assert field_path(location) == path


# ---------------------------------------------------------------------------------------------
# Secrets in the answer (masked only where the answer's bytes hold one)
# ---------------------------------------------------------------------------------------------


# Secrets that overlap, contain each other, are too short to mask, or are not ASCII; texts
# made of their pieces, so that generated outcomes hold them often, whole and in part.
SECRETS = ("s3cr3t", "s3cr3t-token", "key", "pässwörd", "Bearer s3cr3t", "tok€n-42")
PIECES = ("s3c", "r3t", "-token", "ke", "y", "pä", "sswörd", "Bearer ", "tok€", "n-42", "x", "")
TEXTS = st.lists(st.sampled_from((*SECRETS, *PIECES)), max_size=4).map("".join)
VALUES = st.recursive(
    st.none() | st.booleans() | st.integers(-5, 5) | TEXTS,
    lambda children: st.lists(children, max_size=3) | st.dictionaries(TEXTS, children, max_size=3),
    max_leaves=8,
)
EXTRACTION_RESULTS = st.builds(
    model.ExtractionResult,
    variable=TEXTS,
    status=st.sampled_from(model.ExtractionStatus),
    value=VALUES,
    required=st.booleans(),
    message=TEXTS,
)
CONDITIONS = st.builds(
    model.ConditionExplanation,
    subject=st.builds(model.Subject, kind=st.just(model.SubjectKind.BODY), path=st.just("a.b")),
    operator=st.sampled_from(model.Operator),
    operand=VALUES,
    subject_value=VALUES,
    subject_present=st.booleans(),
    result=st.booleans(),
    note=TEXTS,
)
EXPLANATIONS = st.builds(
    model.Explanation,
    request=st.none()
    | st.builds(
        model.RenderedRequest,
        method=st.just("GET"),
        url=TEXTS,
        headers=st.dictionaries(TEXTS, TEXTS, max_size=2),
        body=TEXTS,
    ),
    branches=st.lists(
        st.builds(
            model.BranchExplanation,
            index=st.integers(0, 3),
            target=TEXTS,
            evaluated=st.booleans(),
            matched=st.booleans(),
            conditions=st.lists(CONDITIONS, max_size=2).map(tuple),
        ),
        max_size=2,
    ).map(tuple),
    notes=st.lists(TEXTS, max_size=2).map(tuple),
)
OUTCOMES = st.builds(
    model.Outcome,
    kind=st.sampled_from(model.OutcomeKind),
    reason=st.sampled_from(model.Reason),
    target=TEXTS,
    message=TEXTS,
    variables=st.dictionaries(TEXTS, VALUES, max_size=3),
    extractions=st.lists(EXTRACTION_RESULTS, max_size=3).map(tuple),
    http_status=st.integers(0, 599),
    explanation=st.none() | EXPLANATIONS,
    secret_values=st.lists(st.sampled_from(SECRETS), max_size=3).map(tuple),
)


def _answered_the_old_way(outcome: model.Outcome) -> bytes:
    """The oracle: every outcome with secrets walked and masked, then built."""
    masked = mask_secrets(outcome, outcome.secret_values) if outcome.secret_values else outcome
    return wire.outcome_to_proto(masked).SerializeToString()


@settings(max_examples=500, deadline=None)
@given(outcome=OUTCOMES)
def test_an_answer_is_what_masking_the_whole_outcome_first_would_answer(outcome):
    answered, response = wire.evaluate_answer(outcome, error_target="e", message_limit=4 << 20)

    assert response.SerializeToString() == _answered_the_old_way(outcome)
    assert wire.outcome_to_proto(answered).SerializeToString() == response.SerializeToString()


def _matched(variables: dict[str, Any], secret: str) -> model.Outcome:
    """A MATCHED outcome with these variables, whose request carried `secret`."""
    return model.Outcome(
        model.OutcomeKind.MATCHED,
        model.Reason.BRANCH_MATCHED,
        "done",
        variables=variables,
        secret_values=(secret,),
    )


def test_an_echoed_secret_is_masked_wherever_it_is_and_an_answer_without_one_is_not_copied():
    secret = "s3cr3t-token"
    echoed = _matched({"echo": {f"k-{secret}": [f"Bearer {secret}"]}}, secret)
    quiet = _matched({"echo": "nothing"}, secret)

    masked, response = wire.evaluate_answer(echoed, error_target="e", message_limit=4 << 20)
    kept, _ = wire.evaluate_answer(quiet, error_target="e", message_limit=4 << 20)

    assert secret.encode() not in response.SerializeToString()
    assert masked.variables == {"echo": {"k-***": ["Bearer ***"]}}
    assert kept is quiet


def test_a_secret_without_a_utf8_form_is_masked_before_the_answer_is_built():
    # An environment variable may hold undecodable bytes (a lone surrogate, by surrogateescape):
    # unmasked, protobuf could not even hold the text.
    secret = "abc\udc80def"
    outcome = _matched({"echo": f"<{secret}>"}, secret)

    answered, response = wire.evaluate_answer(outcome, error_target="e", message_limit=4 << 20)

    assert answered.variables == {"echo": "<***>"}
    assert response.variables["echo"] == "<***>"
