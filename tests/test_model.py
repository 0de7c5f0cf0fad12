"""Validation of the domain models: what a connector or node may be, and where a mistake is named.

Every refusal is checked with its pydantic `loc`, because that location becomes the field path of
the BadRequest violation (`connector.headers["Cookie"]`) and of the connectors file's problems.
"""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Any

import pytest
from pydantic import BaseModel, ValidationError

from sidecar.core.model import (
    ApiKeyLocation,
    Condition,
    Connector,
    ConnectorSource,
    ConnectorStatus,
    HttpMethod,
    Node,
    Subject,
)
from sidecar.core.model.connector import CREDENTIAL_HEADERS
from sidecar.core.model.exchange import SendOptions
from sidecar.core.model.node import (
    MAX_BRANCHES,
    MAX_CONDITIONS_PER_BRANCH,
    MAX_EXPRESSION_CHARS,
    MAX_EXTRACTIONS,
)
from tests.support.conditions import condition

MINIMAL = {"id": "order-status", "status": "LIVE", "url_template": "https://api.store.com/orders"}


def connector(**fields: Any) -> dict[str, Any]:
    """A minimal valid connector definition with some fields replaced."""
    return {**MINIMAL, **fields}


def only_error(model: type[BaseModel], data: Any) -> tuple[tuple[Any, ...], str]:
    """The (loc, message) of the single validation error `data` must produce."""
    with pytest.raises(ValidationError) as caught:
        model.model_validate(data)
    errors = caught.value.errors()
    assert len(errors) == 1, errors
    return errors[0]["loc"], errors[0]["msg"]


# ---------------------------------------------------------------------------------------------
# Connector: basics and defaults
# ---------------------------------------------------------------------------------------------


def test_minimal_connector_takes_the_documented_defaults():
    result = Connector.model_validate(MINIMAL)

    assert result.method is HttpMethod.GET
    assert result.timeout == timedelta(seconds=5)
    assert result.max_response_bytes == 1024 * 1024
    assert result.display_name == ""
    assert result.headers == {}
    assert result.query == {}
    assert result.body_template is None
    assert result.auth is None
    assert result.version == 0
    assert result.update_time is None
    assert result.source is ConnectorSource.API
    assert result.secret_names() == ()


@pytest.mark.parametrize("field", ["id", "status", "url_template"])
def test_required_connector_field_is_named_when_missing(field):
    data = dict(MINIMAL)
    del data[field]

    loc, message = only_error(Connector, data)

    assert loc == (field,)
    assert message == "Field required"


@pytest.mark.parametrize(
    ("fields", "loc", "message"),
    [
        ({"id": "Order"}, ("id",), "must be a slug"),
        ({"id": "-order"}, ("id",), "must be a slug"),
        ({"id": "order status"}, ("id",), "must be a slug"),
        ({"id": ""}, ("id",), "must be a slug"),
        ({"id": "a" * 65}, ("id",), "must be a slug"),
        ({"display_name": "x" * 201}, ("display_name",), "at most 200 characters"),
        ({"status": "live"}, ("status",), "'DRAFT', 'LIVE' or 'DISABLED'"),
        ({"status": "UNSPECIFIED"}, ("status",), "'DRAFT', 'LIVE' or 'DISABLED'"),
        ({"method": "get"}, ("method",), "'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'"),
        ({"method": "HEAD"}, ("method",), "'GET', 'POST', 'PUT', 'PATCH' or 'DELETE'"),
        ({"max_response_bytes": 0}, ("max_response_bytes",), "greater than or equal to 1"),
        ({"max_response_bytes": 16 * 1024 * 1024 + 1}, ("max_response_bytes",), "less than"),
        ({"version": -1}, ("version",), "greater than or equal to 0"),
        ({"source": "CLI"}, ("source",), "'API' or 'FILE'"),
        ({"url": "https://typo.example"}, ("url",), "Extra inputs are not permitted"),
    ],
)
def test_invalid_connector_field_is_refused_at_its_location(fields, loc, message):
    error_loc, error_message = only_error(Connector, connector(**fields))

    assert error_loc == loc
    assert message in error_message


@pytest.mark.parametrize(
    ("fields", "attribute", "expected"),
    [
        ({"id": "a"}, "id", "a"),
        ({"id": "0rder_status-2"}, "id", "0rder_status-2"),
        ({"id": "a" * 64}, "id", "a" * 64),
        ({"display_name": "x" * 200}, "display_name", "x" * 200),
        ({"status": "DRAFT"}, "status", ConnectorStatus.DRAFT),
        ({"status": "DISABLED"}, "status", ConnectorStatus.DISABLED),
        ({"method": "PATCH"}, "method", HttpMethod.PATCH),
        ({"max_response_bytes": 1}, "max_response_bytes", 1),
        ({"max_response_bytes": 16 * 1024 * 1024}, "max_response_bytes", 16 * 1024 * 1024),
    ],
)
def test_valid_connector_field_is_kept(fields, attribute, expected):
    assert getattr(Connector.model_validate(connector(**fields)), attribute) == expected


# ---------------------------------------------------------------------------------------------
# Timeout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spelling", "expected"),
    [
        ("5s", timedelta(seconds=5)),
        ("500ms", timedelta(milliseconds=500)),
        ("0.25s", timedelta(milliseconds=250)),
        (" 3 s ", timedelta(seconds=3)),
        ("30s", timedelta(seconds=30)),
        ("30000ms", timedelta(seconds=30)),
        (2.5, timedelta(seconds=2.5)),
        (30, timedelta(seconds=30)),
        (1, timedelta(seconds=1)),
        ("PT10S", timedelta(seconds=10)),
        (timedelta(seconds=7), timedelta(seconds=7)),
    ],
)
def test_timeout_accepts_its_spellings(spelling, expected):
    assert Connector.model_validate(connector(timeout=spelling)).timeout == expected


@pytest.mark.parametrize(
    ("spelling", "message"),
    [
        (0, "more than 0 and at most 30s"),
        ("0s", "more than 0 and at most 30s"),
        ("0ms", "more than 0 and at most 30s"),
        (31, "more than 0 and at most 30s"),
        ("31s", "more than 0 and at most 30s"),
        ("30001ms", "more than 0 and at most 30s"),
        (30.5, "more than 0 and at most 30s"),
        (-1, "more than 0 and at most 30s"),
        (timedelta(minutes=1), "more than 0 and at most 30s"),
        ("-1s", "must be a duration"),
        ("5m", "must be a duration"),
        ("soon", "must be a duration"),
    ],
)
def test_timeout_outside_zero_to_thirty_seconds_is_refused(spelling, message):
    loc, error = only_error(Connector, connector(timeout=spelling))

    assert loc == ("timeout",)
    assert message in error


# ---------------------------------------------------------------------------------------------
# URL template
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url",
    [
        "https://api.store.com/orders/{{order_number}}",
        "http://localhost:8080/status",
        "https://api.store.com",
        "HTTPS://api.store.com/x",
        "https://api.store.com:443/orders/{{ order_number }}/items/{{item.sku}}",
        "https://api.store.com/orders?fields=status&limit=1",
        "https://[::1]:8443/x",
        "https://10.0.0.7/v1/{{id}}.json",
        "https://api.store.com/a/{{x}}{{y}}",
    ],
)
def test_url_template_with_placeholders_in_the_path_is_accepted(url):
    assert Connector.model_validate(connector(url_template=url)).url_template == url


@pytest.mark.parametrize(
    ("url", "message"),
    [
        # The origin must never depend on a variable's value.
        ("https://{{host}}/orders", "placeholders are not allowed in the scheme, host or port"),
        ("https://api.{{region}}.store.com/x", "not allowed in the scheme, host or port"),
        ("https://{{host}}", "not allowed in the scheme, host or port"),
        ("https://api.store.com:{{port}}/x", "placeholders are not allowed"),
        ("{{scheme}}://api.store.com/x", "must be an absolute http(s) URL"),
        ("http{{s}}://api.store.com/x", "must be an absolute http(s) URL"),
        # Credentials belong in auth and a secret.
        ("https://user:pass@api.store.com/x", "credentials in the URL are not allowed"),
        ("https://user@api.store.com/x", "credentials in the URL are not allowed"),
        ("https://{{user}}@api.store.com/x", "not allowed"),
        # Fragments are never sent.
        ("https://api.store.com/x#section", "fragments (#...) are not sent"),
        # Templated query parameters go in `query`.
        ("https://api.store.com/x?email={{email}}", "put templated query parameters in `query`"),
        ("https://api.store.com/x?{{name}}=1", "put templated query parameters in `query`"),
        # Only absolute http(s) URLs.
        ("ftp://files.store.com/x", "must be an absolute http(s) URL"),
        ("file:///etc/passwd", "must be an absolute http(s) URL"),
        ("api.store.com/orders", "must be an absolute http(s) URL"),
        ("/orders/{{id}}", "must be an absolute http(s) URL"),
        ("https:///orders", "the URL has no host"),
        ("https://:443/orders", "the URL has no host"),
        ("https://api.store.com:99999/x", "not a valid URL"),
        ("https://[::1/x", "not a valid URL"),
        # Placeholders must be balanced and well-formed.
        ("https://api.store.com/{{order", "unbalanced placeholder braces"),
        ("https://api.store.com/order}}", "unbalanced placeholder braces"),
        ("https://api.store.com/{{1st}}", "invalid variable path"),
    ],
)
def test_url_template_rule_refuses(url, message):
    loc, error = only_error(Connector, connector(url_template=url))

    assert loc == ("url_template",)
    assert message in error


@pytest.mark.parametrize(
    "url", ["", "https://api.store.com/" + "a" * 2048], ids=["empty", "over-2048"]
)
def test_url_template_length_is_bounded(url):
    loc, _ = only_error(Connector, connector(url_template=url))

    assert loc == ("url_template",)


@pytest.mark.parametrize(
    "url",
    [
        "https://api.store.com/orders\n/{{id}}",
        "https://api.store.com/\tx",
        "https://api.store.com/a\x00b",
        "https://api.store.com/a\x7fb",
    ],
    ids=["LF", "TAB", "NUL", "DEL"],
)
def test_url_template_with_control_characters_is_refused(url):
    with pytest.raises(ValidationError) as caught:
        Connector.model_validate(connector(url_template=url))
    assert caught.value.errors()[0]["loc"] == ("url_template",)


# ---------------------------------------------------------------------------------------------
# Headers, query, body
# ---------------------------------------------------------------------------------------------


def test_headers_with_templated_values_are_accepted():
    headers = {
        "Accept": "application/json",
        "X-Customer": "{{customer.email}}",
        "X-Trace": "chat\t{{ conversation_id }}",
        "x_under.score~": "literal",
    }

    assert Connector.model_validate(connector(headers=headers)).headers == headers


@pytest.mark.parametrize(
    "name",
    sorted(
        {
            spelling
            for header in CREDENTIAL_HEADERS
            for spelling in (header, header.upper(), header.title())
        }
    ),
)
def test_credential_header_is_refused_whatever_its_case(name):
    loc, message = only_error(Connector, connector(headers={name: "literal-secret"}))

    assert loc == ("headers", name, "[key]")
    assert "carries a credential" in message
    assert "auth" in message


@pytest.mark.parametrize(
    "name", ["", "X Key", "X:Key", "X-Key\r\n", "X(Key)", "X-K\u00e9y", "X/Key", '"X"']
)
def test_invalid_header_name_is_refused(name):
    loc, message = only_error(Connector, connector(headers={name: "v"}))

    assert loc == ("headers", name, "[key]")
    assert "is not a valid header name" in message


@pytest.mark.parametrize(
    "value",
    [
        "a\rb",
        "a\nb",
        "line\r\nX-Injected: 1",
        "nul\x00",
        "bell\x07",
        "del\x7f",
        "\x1f",
        "caf\u00e9",  # httpx sends header values as ASCII: this could never be sent
        "a\u2028b",
    ],
)
def test_header_value_that_http_cannot_carry_is_refused(value):
    loc, message = only_error(Connector, connector(headers={"X-Note": value}))

    assert loc == ("headers", "X-Note")
    assert "printable ASCII" in message


@pytest.mark.parametrize(
    ("value", "message"),
    [("{{broken", "unbalanced placeholder braces"), ("{{a b}}", "invalid variable path")],
)
def test_header_value_template_must_parse(value, message):
    loc, error = only_error(Connector, connector(headers={"X-Note": value}))

    assert loc == ("headers", "X-Note")
    assert message in error


def test_query_values_may_be_templated():
    query = {"email": "{{customer.email}}", "limit": "10", "q": "status {{state}}"}

    assert Connector.model_validate(connector(query=query)).query == query


@pytest.mark.parametrize(
    ("query", "loc", "message"),
    [
        ({"{{field}}": "x"}, ("query", "{{field}}", "[key]"), "never templated"),
        ({"a}}": "x"}, ("query", "a}}", "[key]"), "never templated"),
        ({"": "x"}, ("query", "", "[key]"), "must not be empty"),
        ({"email": "{{email"}, ("query", "email"), "unbalanced placeholder braces"),
        ({"email": "{{e mail}}"}, ("query", "email"), "invalid variable path"),
    ],
)
def test_query_rule_refuses(query, loc, message):
    error_loc, error = only_error(Connector, connector(query=query))

    assert error_loc == loc
    assert message in error


@pytest.mark.parametrize(
    "body",
    [
        {"filter": {"email": "{{customer.email}}", "limit": "{{max}}"}, "source": "chat ({{c}})"},
        ["{{a}}", {"nested": ["{{b.c}}", 1, 2.5, True, None]}],
        "{{whole_body}}",
        {"count": 12345, "ratio": 0.5, "flag": False, "nothing": None, "empty": {}},
        {"{{not_a_placeholder_key}}": 1},  # object keys are never templated
    ],
)
def test_body_template_keeps_any_json_value_with_placeholders(body):
    assert Connector.model_validate(connector(body_template=body)).body_template == body


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"a": ["ok", {"b": "{{broken"}]}, "unbalanced placeholder braces"),
        ("{{a..b}}", "invalid variable path"),
        ([1, 2, "x}}"], "unbalanced placeholder braces"),
    ],
)
def test_body_template_placeholders_anywhere_must_parse(body, message):
    loc, error = only_error(Connector, connector(body_template=body))

    assert loc == ("body_template",)
    assert message in error


# ---------------------------------------------------------------------------------------------
# Auth and secret names
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("auth", "secrets"),
    [
        ({"bearer": {"token_secret": "crm_token"}}, ("crm_token",)),
        ({"api_key": {"name": "X-API-Key", "value_secret": "store_api_key"}}, ("store_api_key",)),
        ({"basic": {"username_secret": "user", "password_secret": "pass"}}, ("user", "pass")),
        ({"bearer": {"token_secret": "t"}, "api_key": None, "basic": None}, ("t",)),
    ],
)
def test_each_auth_scheme_is_accepted_and_names_its_secrets(auth, secrets):
    result = Connector.model_validate(connector(auth=auth))

    assert result.secret_names() == secrets


def test_api_key_goes_in_a_header_by_default():
    auth = {"api_key": {"name": "X-API-Key", "value_secret": "k"}}

    assert Connector.model_validate(connector(auth=auth)).auth.api_key.location is (
        ApiKeyLocation.HEADER
    )


def test_api_key_in_the_query_may_use_any_parameter_name():
    auth = {"api_key": {"name": "api key", "location": "QUERY", "value_secret": "k"}}

    assert Connector.model_validate(connector(auth=auth)).auth.api_key.name == "api key"


@pytest.mark.parametrize(
    "auth",
    [
        {},
        {"bearer": None},
        {
            "bearer": {"token_secret": "t"},
            "basic": {"username_secret": "u", "password_secret": "p"},
        },
        {
            "bearer": {"token_secret": "t"},
            "api_key": {"name": "X-Key", "value_secret": "k"},
            "basic": {"username_secret": "u", "password_secret": "p"},
        },
    ],
    ids=["none", "explicit-null", "two", "three"],
)
def test_auth_needs_exactly_one_scheme(auth):
    loc, message = only_error(Connector, connector(auth=auth))

    assert loc == ("auth",)
    assert "set exactly one of bearer, api_key, basic" in message


@pytest.mark.parametrize(
    ("auth", "loc", "message"),
    [
        (
            {"api_key": {"name": "X Key", "value_secret": "k"}},
            ("auth", "api_key"),
            "is not a valid header name",
        ),
        (
            {"api_key": {"name": "", "value_secret": "k"}},
            ("auth", "api_key", "name"),
            "at least 1 character",
        ),
        (
            {"api_key": {"name": "X-Key", "value_secret": "k", "location": "BODY"}},
            ("auth", "api_key", "location"),
            "'HEADER' or 'QUERY'",
        ),
        ({"bearer": {}}, ("auth", "bearer", "token_secret"), "Field required"),
        ({"oauth": {"client": "x"}}, ("auth", "oauth"), "Extra inputs are not permitted"),
    ],
)
def test_auth_scheme_fields_are_checked(auth, loc, message):
    error_loc, error = only_error(Connector, connector(auth=auth))

    assert error_loc == loc
    assert message in error


@pytest.mark.parametrize("name", ["store_api_key", "a", "A.b-c_1", "9", "x" * 128])
def test_valid_secret_name_is_accepted(name):
    auth = {"basic": {"username_secret": name, "password_secret": name}}

    assert Connector.model_validate(connector(auth=auth)).secret_names() == (name, name)


@pytest.mark.parametrize(
    "name",
    ["", "my secret", ".hidden", "../etc/passwd", "a/b", "-a", "_a", "x" * 129, "{{x}}", "s\u00e9"],
)
@pytest.mark.parametrize(
    ("scheme", "field"),
    [
        ("bearer", "token_secret"),
        ("basic", "password_secret"),
        ("api_key", "value_secret"),
    ],
)
def test_invalid_secret_name_is_refused_in_every_scheme(name, scheme, field):
    schemes = {
        "bearer": {"token_secret": "ok"},
        "basic": {"username_secret": "ok", "password_secret": "ok"},
        "api_key": {"name": "X-Key", "value_secret": "ok"},
    }
    auth = {scheme: {**schemes[scheme], field: name}}

    loc, message = only_error(Connector, connector(auth=auth))

    assert loc == ("auth", scheme, field)
    assert "it names a secret, it is not the secret's value" in message


# ---------------------------------------------------------------------------------------------
# Immutability
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("field", "value"),
    [("id", "other"), ("status", ConnectorStatus.DISABLED), ("version", 2), ("headers", {})],
)
def test_validated_connector_cannot_be_changed(field, value):
    result = Connector.model_validate(MINIMAL)

    with pytest.raises(ValidationError, match="frozen"):
        setattr(result, field, value)

    assert getattr(result, field) == getattr(Connector.model_validate(MINIMAL), field)


def test_nested_auth_cannot_be_changed():
    result = Connector.model_validate(connector(auth={"bearer": {"token_secret": "t"}}))

    with pytest.raises(ValidationError, match="frozen"):
        result.auth.bearer.token_secret = "other"  # type: ignore[misc]


def test_a_new_version_is_a_copy_not_a_change():
    original = Connector.model_validate(MINIMAL)

    bumped = original.model_copy(update={"version": 2})

    assert (original.version, bumped.version) == (0, 2)


# ---------------------------------------------------------------------------------------------
# Nodes: subjects, conditions, extractions, limits
# ---------------------------------------------------------------------------------------------

STATUS = {"kind": "STATUS"}


@pytest.mark.parametrize(
    "subject",
    [
        {"kind": "STATUS"},
        {"kind": "STATUS", "path": ""},
        {"kind": "BODY", "path": "items[?price > `10`].sku"},
        {"kind": "HEADER", "path": "Content-Type"},
        {"kind": "VARIABLE", "path": "customer.tier"},
        {"kind": "VARIABLE", "path": "location"},
    ],
)
def test_subject_path_fits_its_kind(subject):
    assert Subject.model_validate(subject).kind == subject["kind"]


@pytest.mark.parametrize(
    ("subject", "message"),
    [
        ({"kind": "STATUS", "path": "code"}, "path must be empty for a STATUS subject"),
        ({"kind": "BODY"}, "path is required for a BODY subject"),
        ({"kind": "HEADER", "path": ""}, "path is required for a HEADER subject"),
        ({"kind": "VARIABLE"}, "path is required for a VARIABLE subject"),
        ({"kind": "VARIABLE", "path": "a..b"}, "invalid variable path"),
        ({"kind": "VARIABLE", "path": "{{a}}"}, "invalid variable path"),
        ({"kind": "VARIABLE", "path": "items[0]"}, "invalid variable path"),
    ],
)
def test_subject_path_that_does_not_fit_its_kind_is_refused(subject, message):
    loc, error = only_error(Subject, subject)

    assert loc == ()
    assert message in error


@pytest.mark.parametrize(
    ("subject", "loc", "message"),
    [
        ({"kind": "COOKIE", "path": "x"}, ("kind",), "'STATUS', 'BODY', 'HEADER' or 'VARIABLE'"),
        ({"kind": "BODY", "path": "a" * 1025}, ("path",), "at most 1024 characters"),
    ],
)
def test_subject_fields_are_checked(subject, loc, message):
    error_loc, error = only_error(Subject, subject)

    assert error_loc == loc
    assert message in error


@pytest.mark.parametrize(
    "data",
    [
        condition("EXISTS"),
        condition("NOT_EXISTS"),
        condition("IS_EMPTY", operand=None),
        condition("IS_NOT_EMPTY"),
        condition("EQUALS"),  # compares with null
        condition("EQUALS", operand="shipped", ignore_case=True),
        condition("NOT_EQUALS", operand=3),
        condition("GREATER_THAN", operand=10),
        condition("LESS_THAN_OR_EQUAL", operand="2024-01-01"),
        condition("CONTAINS", operand="x", quantifier="ANY"),
        condition("STARTS_WITH", operand="A-"),
        condition("MATCHES", operand="^A-[0-9]+$"),
        condition("MATCHES", operand="a" * MAX_EXPRESSION_CHARS),
        condition("IN", operand=["shipped", "delivered"]),
        condition("IN", operand=[]),
        condition("NOT_IN", operand=[1, "1", None]),
        condition("BETWEEN", operand=[1, 10]),
        condition("BETWEEN", operand=[0.5, 2.5]),
        condition("STATUS_CLASS", subject=STATUS, operand="2xx"),
        condition("STATUS_CLASS", subject=STATUS, operand="5XX"),
    ],
)
def test_operand_that_fits_its_operator_is_accepted(data):
    assert Condition.model_validate(data).operator == data["operator"]


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (condition("EXISTS", operand=1), "operand must be unset for EXISTS"),
        (condition("NOT_EXISTS", operand="x"), "operand must be unset for NOT_EXISTS"),
        (condition("IS_EMPTY", operand=[]), "operand must be unset for IS_EMPTY"),
        (condition("IS_NOT_EMPTY", operand=False), "operand must be unset for IS_NOT_EMPTY"),
        (condition("IN", operand="shipped"), "operand must be a list for IN"),
        (condition("IN"), "operand must be a list for IN"),
        (condition("NOT_IN", operand={"a": 1}), "operand must be a list for NOT_IN"),
        (condition("BETWEEN", operand=[1]), "[low, high] pair of numbers"),
        (condition("BETWEEN", operand=[1, 2, 3]), "[low, high] pair of numbers"),
        (condition("BETWEEN", operand=[1, "10"]), "[low, high] pair of numbers"),
        (condition("BETWEEN", operand=[10, 1]), "low <= high"),
        (condition("BETWEEN", operand=[True, 10]), "[low, high] pair of numbers"),
        (condition("BETWEEN", operand=5), "[low, high] pair of numbers"),
        (condition("STATUS_CLASS", subject=STATUS, operand="6xx"), 'status class "1xx" ... "5xx"'),
        (condition("STATUS_CLASS", subject=STATUS, operand="20x"), 'status class "1xx" ... "5xx"'),
        (condition("STATUS_CLASS", subject=STATUS, operand=200), 'status class "1xx" ... "5xx"'),
        (condition("STATUS_CLASS", subject=STATUS), 'status class "1xx" ... "5xx"'),
        (condition("MATCHES", operand=1), "regular expression of at most 1024 characters"),
        (condition("MATCHES"), "regular expression of at most 1024 characters"),
        (condition("MATCHES", operand="a" * 1025), "regular expression of at most 1024"),
        (condition("GREATER_THAN"), "operand is required for GREATER_THAN"),
        (condition("CONTAINS"), "operand is required for CONTAINS"),
        (condition("ENDS_WITH"), "operand is required for ENDS_WITH"),
    ],
)
def test_operand_that_does_not_fit_its_operator_is_refused(data, message):
    loc, error = only_error(Condition, data)

    assert loc == ("operand",)
    assert message in error


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        (condition("LIKE", operand="x"), ("operator",), "Input should be 'EQUALS'"),
        (condition("EQUALS", operand=1, quantifier="SOME"), ("quantifier",), "'ANY', 'ALL'"),
        (condition("EQUALS", operand=1, negate=True), ("negate",), "Extra inputs"),
        (condition("EXISTS", subject={"kind": "BODY"}), ("subject",), "path is required"),
    ],
)
def test_condition_fields_are_checked(data, loc, message):
    error_loc, error = only_error(Condition, data)

    assert error_loc == loc
    assert message in error


def node(**fields: Any) -> dict[str, Any]:
    return {"connector_id": "order-status", **fields}


def test_minimal_node_takes_the_defaults():
    result = Node.model_validate(node())

    assert (result.id, result.branches, result.extractions) == ("", (), ())
    assert (result.else_target, result.error_target) == ("", "")


@pytest.mark.parametrize(
    ("data", "loc", "message"),
    [
        ({}, ("connector_id",), "Field required"),
        (node(connector_id=""), ("connector_id",), "at least 1 character"),
        (node(connector_id="c" * 65), ("connector_id",), "at most 64 characters"),
        (node(id="n" * 257), ("id",), "at most 256 characters"),
        (node(else_target="t" * 257), ("else_target",), "at most 256 characters"),
        (
            node(branches=[{"target": "a", "combinator": "XOR"}]),
            ("branches", 0, "combinator"),
            "'ALL' or 'ANY'",
        ),
        (
            node(branches=[{"target": "a"}, {"target": "b", "conditions": [condition("IN")]}]),
            ("branches", 1, "conditions", 0, "operand"),
            "operand must be a list for IN",
        ),
        (
            node(branches=[{"target": "a", "conditions": [condition("EXISTS", subject={})]}]),
            ("branches", 0, "conditions", 0, "subject", "kind"),
            "Field required",
        ),
        (
            node(extractions=[{"variable": "1st", "path": "a"}]),
            ("extractions", 0, "variable"),
            "should match pattern",
        ),
        (
            node(extractions=[{"variable": "ok", "path": "a"}, {"variable": "a-b", "path": "b"}]),
            ("extractions", 1, "variable"),
            "should match pattern",
        ),
        (
            node(extractions=[{"variable": "v", "path": ""}]),
            ("extractions", 0, "path"),
            "at least 1 character",
        ),
        (
            node(extractions=[{"variable": "v", "path": "a", "cast": "DATE"}]),
            ("extractions", 0, "cast"),
            "'STRING', 'NUMBER', 'INTEGER', 'BOOLEAN' or 'JSON'",
        ),
        (
            node(branches=[{"target": "t"}] * (MAX_BRANCHES + 1)),
            ("branches",),
            f"at most {MAX_BRANCHES} items",
        ),
        (
            node(
                branches=[
                    {"target": "t", "conditions": [condition("EXISTS")] * 65},
                ]
            ),
            ("branches", 0, "conditions"),
            f"at most {MAX_CONDITIONS_PER_BRANCH} items",
        ),
        (
            node(extractions=[{"variable": f"v{i}", "path": "a"} for i in range(129)]),
            ("extractions",),
            f"at most {MAX_EXTRACTIONS} items",
        ),
    ],
)
def test_node_rule_refuses(data, loc, message):
    error_loc, error = only_error(Node, data)

    assert error_loc == loc
    assert message in error


def test_node_at_every_limit_is_accepted():
    data = node(
        branches=[
            {"target": f"t{i}", "conditions": [condition("EXISTS")] * MAX_CONDITIONS_PER_BRANCH}
            for i in range(MAX_BRANCHES)
        ],
        extractions=[{"variable": f"v{i}", "path": "a"} for i in range(MAX_EXTRACTIONS)],
    )

    result = Node.model_validate(data)

    assert len(result.branches) == MAX_BRANCHES
    assert len(result.branches[-1].conditions) == MAX_CONDITIONS_PER_BRANCH
    assert len(result.extractions) == MAX_EXTRACTIONS


def test_node_is_immutable():
    result = Node.model_validate(node(branches=[{"target": "a"}]))

    with pytest.raises(ValidationError, match="frozen"):
        result.branches[0].target = "b"  # type: ignore[misc]


def test_send_options_with_a_timeout_keep_every_other_field() -> None:
    # with_timeout names each field (dataclasses.replace is slow on the hot path): a field added
    # to SendOptions and not carried there fails here.
    fields = dataclasses.fields(SendOptions)
    distinct = {
        field.name: f"value of {field.name}" for field in fields if field.name != "timeout_seconds"
    }
    options = SendOptions(timeout_seconds=9.0, **distinct)  # type: ignore[arg-type]

    shortened = options.with_timeout(0.25)

    assert shortened.timeout_seconds == 0.25
    assert {name: getattr(shortened, name) for name in distinct} == distinct
