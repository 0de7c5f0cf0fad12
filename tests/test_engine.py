"""sidecar.core.engine: the outcome table, auth, masking, the template cache, and a property.

The engine is transport-free: it is given an async `send`, so these tests hand it a fake one that
records every request and answers with a canned response or a SendError.
"""

from __future__ import annotations

import asyncio
import base64
import json
import time
from collections.abc import Callable, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import sidecar.core.engine as engine_module
from sidecar.core.auth import MASK
from sidecar.core.documents import MAX_JSON_DEPTH
from sidecar.core.engine import Engine, compile_node
from sidecar.core.model import (
    Connector,
    ConnectorStatus,
    ExtractionStatus,
    Node,
    Outcome,
    OutcomeKind,
    Reason,
)
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendOptions
from sidecar.core.model.failures import SendError
from sidecar.core.secrets import SecretBindings
from tests.support.conditions import condition

ORIGIN = "https://api.store.example"
# Every secret the tables use, bound to ORIGIN's host: an unbound secret is never sent.
ORIGIN_BINDINGS = SecretBindings(
    {name: ["api.store.example"] for name in ("key", "password", "store_token", "token", "user")}
)
SECRET = "s3cr3t-canary-9f2e"
USERNAME = "basic-user-canary"
PASSWORD = "basic-pass-canary"
SEND_FAILURES = (
    Reason.TIMEOUT,
    Reason.CONNECT_ERROR,
    Reason.DNS_ERROR,
    Reason.TLS_ERROR,
    Reason.PROTOCOL_ERROR,
    Reason.RESPONSE_TOO_LARGE,
    Reason.BLOCKED_DESTINATION,
    Reason.CIRCUIT_OPEN,
)
NOTHING_SENT = (
    Reason.MISSING_VARIABLE,
    Reason.INVALID_VARIABLE,
    Reason.SECRET_NOT_FOUND,
    Reason.CONNECTOR_NOT_FOUND,
    Reason.CONNECTOR_NOT_LIVE,
)
SHIPPED = {"order_number": "A-1", "status": "shipped", "carrier": "UPS"}


# ---------------------------------------------------------------------------------------------
# Fakes and builders
# ---------------------------------------------------------------------------------------------


class Connectors:
    """A ConnectorLookup over a dict; tests swap versions in and out."""

    def __init__(self, *connectors: Connector) -> None:
        self.by_id = {connector.id: connector for connector in connectors}

    def get(self, connector_id: str) -> Connector | None:
        return self.by_id.get(connector_id)


class Secrets:
    """A SecretLookup over a dict."""

    def __init__(self, values: Mapping[str, str] | None = None) -> None:
        self.values = dict(values or {})

    def resolve(self, name: str) -> str | None:
        return self.values.get(name)

    def searched(self, name: str) -> str:
        return f"looked in the test's dict for {name!r}"


class FakeSend:
    """An async `send` that records its calls and answers with a response or a SendError."""

    def __init__(self, answer: HttpResponse | SendError) -> None:
        self.answer = answer
        self.calls: list[tuple[OutboundRequest, SendOptions]] = []

    async def __call__(self, request: OutboundRequest, options: SendOptions) -> HttpResponse:
        self.calls.append((request, options))
        if isinstance(self.answer, SendError):
            raise self.answer
        return self.answer

    @property
    def request(self) -> OutboundRequest:
        assert len(self.calls) == 1, f"expected one request, got {len(self.calls)}"
        return self.calls[0][0]


def json_response(
    body: Any, status: int = 200, headers: Mapping[str, str] | None = None
) -> HttpResponse:
    all_headers = {"content-type": "application/json", **(headers or {})}
    return HttpResponse(status, all_headers, json.dumps(body).encode())


def make_connector(**fields: Any) -> Connector:
    data: dict[str, Any] = {
        "id": "orders",
        "status": "LIVE",
        "url_template": f"{ORIGIN}/orders/{{{{order_number}}}}",
        "version": 1,
    }
    data.update(fields)
    return Connector.model_validate(data)


STATUS_IS_200 = condition("EQUALS", 200, kind="STATUS")
IS_SHIPPED = condition("EQUALS", "shipped", path="status")
IN_CHICAGO = condition("EQUALS", "Chicago", kind="VARIABLE", path="location")


def make_node(*branches: dict[str, Any], **fields: Any) -> Node:
    data: dict[str, Any] = {
        "connector_id": "orders",
        "branches": list(branches),
        "else_target": "else",
        "error_target": "error",
    }
    data.update(fields)
    return Node.model_validate(data)


def branch(target: str, *conditions: dict[str, Any], combinator: str = "ALL") -> dict[str, Any]:
    return {"target": target, "conditions": list(conditions), "combinator": combinator}


def evaluate(
    node: Node,
    answer: HttpResponse | SendError,
    variables: Mapping[str, Any] | None = None,
    *,
    connector: Connector | None = None,
    secrets: Mapping[str, str] | None = None,
    explain: bool = False,
    allow_draft: bool = False,
    time_remaining: float | None = None,
    bindings: SecretBindings | None = None,
    clock: Callable[[], float] = time.monotonic,
) -> tuple[Outcome, FakeSend]:
    send = FakeSend(answer)
    connectors = Connectors(connector or make_connector())
    engine = Engine(
        connectors, Secrets(secrets), send, bindings=bindings or ORIGIN_BINDINGS, clock=clock
    )
    outcome = asyncio.run(
        engine.evaluate(
            compile_node(node),
            {"order_number": "A-1"} if variables is None else variables,
            explain=explain,
            allow_draft=allow_draft,
            time_remaining=time_remaining,
        )
    )
    return outcome, send


def assert_error(outcome: Outcome, reason: Reason) -> None:
    assert (outcome.kind, outcome.reason, outcome.target) == (OutcomeKind.ERROR, reason, "error")
    assert outcome.branch_index is None


# ---------------------------------------------------------------------------------------------
# The outcome table
# ---------------------------------------------------------------------------------------------


def test_branch_that_holds_is_matched_with_its_index_and_target() -> None:
    node = make_node(
        branch("not-found", condition("EQUALS", 404, kind="STATUS")),
        branch("show-status", STATUS_IS_200, IS_SHIPPED),
    )

    outcome, send = evaluate(node, json_response(SHIPPED))

    assert (outcome.kind, outcome.reason) == (OutcomeKind.MATCHED, Reason.BRANCH_MATCHED)
    assert (outcome.branch_index, outcome.target) == (1, "show-status")
    assert outcome.http_status == 200
    assert len(send.calls) == 1


def test_first_branch_that_holds_wins_over_later_ones_that_also_hold() -> None:
    node = make_node(branch("first", STATUS_IS_200), branch("second", IS_SHIPPED))

    outcome, _ = evaluate(node, json_response(SHIPPED))

    assert (outcome.branch_index, outcome.target) == (0, "first")


def test_branch_without_conditions_always_holds() -> None:
    outcome, _ = evaluate(make_node(branch("always")), json_response({}, status=404))

    assert (outcome.kind, outcome.target) == (OutcomeKind.MATCHED, "always")


def test_required_extraction_failure_turns_a_match_into_extraction_failed() -> None:
    node = make_node(
        branch("show-status", STATUS_IS_200),
        extractions=[
            {"variable": "carrier", "path": "carrier"},
            {"variable": "eta", "path": "eta", "required": True},
        ],
    )

    outcome, _ = evaluate(node, json_response(SHIPPED))

    assert_error(outcome, Reason.EXTRACTION_FAILED)
    assert "eta" in outcome.message
    assert outcome.http_status == 200
    assert outcome.variables == {"carrier": "UPS"}
    assert [(r.variable, r.status) for r in outcome.extractions] == [
        ("carrier", ExtractionStatus.EXTRACTED),
        ("eta", ExtractionStatus.MISSING),
    ]


def test_optional_extraction_failure_keeps_the_match() -> None:
    node = make_node(
        branch("show-status", STATUS_IS_200), extractions=[{"variable": "eta", "path": "eta"}]
    )

    outcome, _ = evaluate(node, json_response(SHIPPED))

    assert (outcome.kind, outcome.target) == (OutcomeKind.MATCHED, "show-status")
    assert outcome.variables == {}


def test_required_extraction_failure_without_a_match_stays_no_match() -> None:
    node = make_node(
        branch("show-status", STATUS_IS_200),
        extractions=[{"variable": "eta", "path": "eta", "required": True}],
    )

    outcome, _ = evaluate(node, json_response({"error": "no such order"}, status=404))

    assert (outcome.kind, outcome.reason, outcome.target) == (
        OutcomeKind.NO_MATCH,
        Reason.NO_BRANCH_MATCHED,
        "else",
    )


@pytest.mark.parametrize("status", [500, 502, 503, 599])
def test_5xx_that_no_branch_matches_is_upstream_error(status: int) -> None:
    node = make_node(branch("show-status", STATUS_IS_200))

    outcome, _ = evaluate(node, json_response({"error": "down"}, status=status))

    assert_error(outcome, Reason.UPSTREAM_ERROR)
    assert outcome.http_status == status
    assert str(status) in outcome.message


def test_branch_that_explicitly_matches_5xx_wins_over_upstream_error() -> None:
    node = make_node(
        branch("show-status", STATUS_IS_200),
        branch("maintenance", condition("STATUS_CLASS", "5xx", kind="STATUS")),
    )

    outcome, _ = evaluate(node, json_response({"error": "down"}, status=503))

    assert (outcome.kind, outcome.reason) == (OutcomeKind.MATCHED, Reason.BRANCH_MATCHED)
    assert (outcome.branch_index, outcome.target) == (1, "maintenance")


@pytest.mark.parametrize("status", [100, 204, 302, 400, 401, 404, 499])
def test_non_5xx_that_no_branch_matches_is_no_match_with_the_else_target(status: int) -> None:
    node = make_node(branch("show-status", STATUS_IS_200))

    outcome, _ = evaluate(node, json_response({"error": "x"}, status=status))

    assert (outcome.kind, outcome.reason, outcome.target) == (
        OutcomeKind.NO_MATCH,
        Reason.NO_BRANCH_MATCHED,
        "else",
    )
    assert outcome.branch_index is None
    assert outcome.http_status == status


@pytest.mark.parametrize("reason", SEND_FAILURES)
def test_send_failure_is_an_error_and_no_branch_is_evaluated(reason: Reason) -> None:
    # The first branch looks only at visitor variables and would hold: it must not be reached.
    node = make_node(
        branch("chicago", IN_CHICAGO),
        branch("always"),
        extractions=[{"variable": "carrier", "path": "carrier", "default_value": "unknown"}],
    )
    failure = SendError(reason, f"failed with {reason}", attempts=1)

    outcome, send = evaluate(
        node, failure, {"order_number": "A-1", "location": "Chicago"}, explain=True
    )

    assert_error(outcome, reason)
    assert outcome.message == f"failed with {reason}"
    assert (outcome.http_status, outcome.attempts, outcome.connector_version) == (0, 1, 1)
    assert len(send.calls) == 1
    assert outcome.explanation is not None
    assert outcome.explanation.branches == ()
    assert any("no branch was evaluated" in note for note in outcome.explanation.notes)
    assert [(r.variable, r.status) for r in outcome.extractions] == [
        ("carrier", ExtractionStatus.DEFAULTED)
    ]


def test_unknown_connector_is_connector_not_found_and_nothing_is_sent() -> None:
    node = make_node(branch("always"), connector_id="no-such-connector")

    outcome, send = evaluate(node, json_response(SHIPPED))

    assert_error(outcome, Reason.CONNECTOR_NOT_FOUND)
    assert "no-such-connector" in outcome.message
    assert (send.calls, outcome.connector_version, outcome.attempts) == ([], 0, 0)


@pytest.mark.parametrize("allow_draft", [False, True])
def test_disabled_connector_is_not_live_even_in_test_mode(allow_draft: bool) -> None:
    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(status="DISABLED", version=4),
        allow_draft=allow_draft,
    )

    assert_error(outcome, Reason.CONNECTOR_NOT_LIVE)
    assert send.calls == []
    assert outcome.connector_version == 4


def test_draft_connector_is_not_live_in_production() -> None:
    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(status="DRAFT"),
    )

    assert_error(outcome, Reason.CONNECTOR_NOT_LIVE)
    assert "test mode" in outcome.message
    assert send.calls == []


def test_draft_connector_runs_when_drafts_are_allowed() -> None:
    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(status="DRAFT"),
        allow_draft=True,
    )

    assert (outcome.kind, outcome.target) == (OutcomeKind.MATCHED, "always")
    assert len(send.calls) == 1


def test_missing_variable_is_an_error_naming_it_and_nothing_is_sent() -> None:
    node = make_node(branch("chicago", IN_CHICAGO))

    outcome, send = evaluate(node, json_response(SHIPPED), {"location": "Chicago"})

    assert_error(outcome, Reason.MISSING_VARIABLE)
    assert "order_number" in outcome.message
    assert send.calls == []
    assert outcome.attempts == 0


@pytest.mark.parametrize(
    ("connector_fields", "variables"),
    [
        ({}, {"order_number": {"nested": "object"}}),
        ({}, {"order_number": ".."}),
        ({"headers": {"X-Note": "{{note}}"}}, {"order_number": "A-1", "note": "a\r\nX-Evil: 1"}),
        ({"query": {"q": "{{q}}"}}, {"order_number": "A-1", "q": ["a", "list"]}),
    ],
    ids=["object-in-path", "dot-dot-in-path", "crlf-in-header", "list-in-query"],
)
def test_invalid_variable_is_an_error_and_nothing_is_sent(
    connector_fields: dict[str, Any], variables: dict[str, Any]
) -> None:
    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        variables,
        connector=make_connector(**connector_fields),
    )

    assert_error(outcome, Reason.INVALID_VARIABLE)
    assert send.calls == []


def test_missing_secret_is_secret_not_found_and_nothing_is_sent() -> None:
    connector = make_connector(auth={"bearer": {"token_secret": "store_token"}})

    outcome, send = evaluate(
        make_node(branch("always")), json_response(SHIPPED), connector=connector, explain=True
    )

    assert_error(outcome, Reason.SECRET_NOT_FOUND)
    assert outcome.message == (
        "secret 'store_token' of connector 'orders' is not available: "
        "looked in the test's dict for 'store_token'"
    )
    assert send.calls == []
    assert outcome.explanation is not None
    assert outcome.explanation.request is not None
    assert outcome.explanation.request.headers["Authorization"] == f"Bearer {MASK}"


# ---------------------------------------------------------------------------------------------
# What goes out: auth, options
# ---------------------------------------------------------------------------------------------


AUTH_CASES = {
    "bearer": (
        {"bearer": {"token_secret": "token"}},
        {"token": SECRET},
    ),
    "basic": (
        {"basic": {"username_secret": "user", "password_secret": "password"}},
        {"user": USERNAME, "password": PASSWORD},
    ),
    "api-key-header": (
        {"api_key": {"name": "X-API-Key", "value_secret": "key"}},
        {"key": SECRET},
    ),
    "api-key-query": (
        {"api_key": {"name": "api_key", "location": "QUERY", "value_secret": "key"}},
        {"key": SECRET},
    ),
}


def sent_with_auth(case: str, **connector_fields: Any) -> OutboundRequest:
    auth, secrets = AUTH_CASES[case]
    connector = make_connector(auth=auth, **connector_fields)
    _, send = evaluate(
        make_node(branch("always")), json_response(SHIPPED), connector=connector, secrets=secrets
    )
    return send.request


def test_bearer_auth_sends_the_token_in_authorization() -> None:
    request = sent_with_auth("bearer")

    assert ("Authorization", f"Bearer {SECRET}") in request.headers


def test_basic_auth_sends_base64_of_username_and_password() -> None:
    request = sent_with_auth("basic")

    expected = base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    assert ("Authorization", f"Basic {expected}") in request.headers


def test_api_key_in_a_header_is_sent_under_its_name() -> None:
    request = sent_with_auth("api-key-header")

    assert ("X-API-Key", SECRET) in request.headers
    assert SECRET not in request.url


def test_api_key_in_the_query_is_appended_percent_encoded() -> None:
    auth = {"api_key": {"name": "api key", "location": "QUERY", "value_secret": "key"}}
    connector = make_connector(auth=auth, query={"expand": "items"})

    _, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=connector,
        secrets={"key": "a b&c=d"},
    )

    assert send.request.url == f"{ORIGIN}/orders/A-1?expand=items&api%20key=a%20b%26c%3Dd"
    assert all("a b&c=d" not in value for _, value in send.request.headers)


def test_api_key_in_the_query_starts_the_query_when_there_is_none() -> None:
    request = sent_with_auth("api-key-query")

    assert request.url == f"{ORIGIN}/orders/A-1?api_key={SECRET}"


def sent_options(secrets: Mapping[str, str] | None = None, **connector_fields: Any) -> SendOptions:
    connector = make_connector(**connector_fields)
    _, send = evaluate(
        make_node(branch("always")), json_response(SHIPPED), connector=connector, secrets=secrets
    )
    return send.calls[0][1]


def test_send_gets_the_connector_timeout_size_cap_and_hosts() -> None:
    options = sent_options(
        timeout="1500ms",
        max_response_bytes=4096,
        allowed_hosts=["cdn.store.example"],
        follow_redirects=True,
    )

    assert (options.timeout_seconds, options.max_response_bytes) == (1.5, 4096)
    assert options.allowed_hosts == ("api.store.example", "cdn.store.example")
    assert options.follow_redirects is True


@pytest.mark.parametrize(
    ("fields", "retry"),
    [
        ({"method": "GET"}, True),
        ({"method": "PUT"}, True),
        ({"method": "DELETE"}, True),
        ({"method": "POST"}, False),
        ({"method": "PATCH"}, False),
        (
            {
                "method": "POST",
                "headers": {"Idempotency-Key": "{{order_number}}"},
                "idempotency_key_header": "Idempotency-Key",
            },
            True,
        ),
    ],
    ids=["GET", "PUT", "DELETE", "POST", "PATCH", "POST-with-idempotency-key"],
)
def test_status_retries_only_for_idempotent_requests(fields: dict[str, Any], retry: bool) -> None:
    assert sent_options(**fields).retry_on_status is retry


def test_credential_headers_are_named_for_redirects_to_drop() -> None:
    auth, secrets = AUTH_CASES["api-key-header"]

    options = sent_options(secrets, auth=auth)

    assert options.credential_headers >= {"authorization", "x-api-key"}


def test_budget_is_the_callers_remaining_time_when_that_is_shorter() -> None:
    _, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(timeout="5s"),
        time_remaining=1.0,
        clock=lambda: 100.0,  # no time passes: the figure is the budget's alone
    )

    # A tenth of the caller's second is kept back for the answer's way back.
    assert send.calls[0][1].timeout_seconds == pytest.approx(0.9)


def test_connector_timeout_is_the_budget_when_the_caller_allows_more() -> None:
    _, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(timeout="2s"),
        time_remaining=30.0,
    )

    assert send.calls[0][1].timeout_seconds == 2.0


@pytest.mark.parametrize("time_remaining", [0.0, 0.01, -1.0])
def test_no_time_left_is_a_timeout_and_nothing_is_sent(time_remaining: float) -> None:
    outcome, send = evaluate(
        make_node(branch("always")), json_response(SHIPPED), time_remaining=time_remaining
    )

    assert_error(outcome, Reason.TIMEOUT)
    assert send.calls == []


def test_secret_bound_to_another_host_is_blocked_and_nothing_is_sent() -> None:
    auth, secrets = AUTH_CASES["api-key-header"]

    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(auth=auth),
        secrets=secrets,
        bindings=SecretBindings({"key": ["api.other.example"]}),
        explain=True,
    )

    assert_error(outcome, Reason.BLOCKED_DESTINATION)
    assert "key" in outcome.message
    assert send.calls == []
    assert SECRET not in repr(outcome)


def test_secret_bound_to_no_host_is_blocked_and_nothing_is_sent() -> None:
    """A connector stored before its secret lost (or never had) a secret_hosts entry."""
    auth, secrets = AUTH_CASES["api-key-header"]

    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(auth=auth),
        secrets=secrets,
        bindings=SecretBindings({"other": ["api.store.example"]}),
    )

    assert_error(outcome, Reason.BLOCKED_DESTINATION)
    assert "secret_hosts" in outcome.message
    assert send.calls == []


def test_secret_bound_to_the_connectors_host_is_sent() -> None:
    auth, secrets = AUTH_CASES["api-key-header"]

    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(auth=auth),
        secrets=secrets,
        bindings=SecretBindings({"key": ["*.store.example"]}),
    )

    assert outcome.kind is OutcomeKind.MATCHED
    assert ("X-API-Key", SECRET) in send.request.headers


def test_outcome_carries_status_attempts_version_and_latency() -> None:
    response = HttpResponse(200, {"content-type": "application/json"}, b"{}", attempts=2)

    outcome, _ = evaluate(
        make_node(branch("always")), response, connector=make_connector(version=7)
    )

    assert (outcome.http_status, outcome.attempts, outcome.connector_version) == (200, 2, 7)
    assert outcome.upstream_latency_seconds >= 0


# ---------------------------------------------------------------------------------------------
# Explanations never show a secret
# ---------------------------------------------------------------------------------------------


def credential_sent(case: str) -> str:
    """The credential as it goes out on the wire (basic: base64 of user:password)."""
    if case == "basic":
        return base64.b64encode(f"{USERNAME}:{PASSWORD}".encode()).decode()
    return SECRET


@pytest.mark.parametrize("case", sorted(AUTH_CASES))
@pytest.mark.parametrize(
    "answer",
    [json_response(SHIPPED), SendError(Reason.TIMEOUT, "no complete response within 5s")],
    ids=["response", "timeout"],
)
def test_explanation_masks_every_secret(case: str, answer: HttpResponse | SendError) -> None:
    auth, secrets = AUTH_CASES[case]
    connector = make_connector(auth=auth)

    outcome, send = evaluate(
        make_node(branch("always", STATUS_IS_200)),
        answer,
        connector=connector,
        secrets=secrets,
        explain=True,
    )

    assert outcome.explanation is not None
    rendered = outcome.explanation.request
    assert rendered is not None
    if case in ("bearer", "basic"):
        scheme = "Bearer" if case == "bearer" else "Basic"
        assert rendered.headers["Authorization"] == f"{scheme} {MASK}"
    elif case == "api-key-header":
        assert rendered.headers["X-API-Key"] == MASK
    else:
        assert rendered.url.startswith(f"{ORIGIN}/orders/A-1?api_key=")
    assert credential_sent(case) in repr(send.request)  # the secret really went out ...
    everything = repr(outcome)
    for text in (credential_sent(case), *secrets.values()):
        assert text not in everything  # ... and is nowhere in the answer


def test_explanation_masks_a_query_api_key_as_three_stars() -> None:
    auth, secrets = AUTH_CASES["api-key-query"]

    outcome, _ = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        connector=make_connector(auth=auth),
        secrets=secrets,
        explain=True,
    )

    assert outcome.explanation is not None
    assert outcome.explanation.request is not None
    assert outcome.explanation.request.url == f"{ORIGIN}/orders/A-1?api_key={MASK}"


def test_explanation_shows_the_rendered_request_as_sent() -> None:
    connector = make_connector(
        method="POST",
        query={"expand": "{{expand}}"},
        headers={"X-Visitor": "{{location}}"},
        body_template={"order": "{{order_number}}", "qty": "{{qty}}"},
    )

    outcome, send = evaluate(
        make_node(branch("always")),
        json_response(SHIPPED),
        {"order_number": "A-1", "expand": "items", "location": "Chicago", "qty": 2.0},
        connector=connector,
        explain=True,
    )

    assert outcome.explanation is not None
    rendered = outcome.explanation.request
    assert rendered is not None
    assert (rendered.method, rendered.url) == ("POST", send.request.url)
    assert rendered.url == f"{ORIGIN}/orders/A-1?expand=items"
    assert rendered.headers == dict(send.request.headers)
    assert json.loads(rendered.body) == {"order": "A-1", "qty": 2}


def test_no_explanation_unless_asked() -> None:
    outcome, _ = evaluate(make_node(branch("always")), json_response(SHIPPED))

    assert outcome.explanation is None


# ---------------------------------------------------------------------------------------------
# Response bodies that are not JSON
# ---------------------------------------------------------------------------------------------


def test_html_body_makes_body_subjects_null_with_a_note_and_is_not_an_error() -> None:
    node = make_node(
        branch("shipped", IS_SHIPPED),
        branch("status-only", STATUS_IS_200),
        extractions=[
            {"variable": "status", "path": "status"},
            {"variable": "carrier", "path": "carrier", "default_value": "n/a"},
        ],
    )
    html = HttpResponse(200, {"content-type": "text/html"}, b"<html>maintenance</html>")

    outcome, _ = evaluate(node, html, explain=True)

    assert (outcome.kind, outcome.target) == (OutcomeKind.MATCHED, "status-only")
    assert outcome.explanation is not None
    notes = " ".join(outcome.explanation.notes)
    assert "not valid JSON" in notes
    assert "text/html" in notes
    body_condition = outcome.explanation.branches[0].conditions[0]
    assert (body_condition.subject_present, body_condition.subject_value) == (False, None)
    assert body_condition.result is False
    assert [(r.variable, r.status) for r in outcome.extractions] == [
        ("status", ExtractionStatus.NO_DOCUMENT),
        ("carrier", ExtractionStatus.DEFAULTED),
    ]
    assert outcome.variables == {"carrier": "n/a"}


@pytest.mark.parametrize("constant", ["NaN", "Infinity", "-Infinity"])
def test_nan_or_infinity_in_a_body_makes_it_not_json(constant: str) -> None:
    # JSON has no such numbers: the body is refused as a whole, as ExtractVariables refuses it.
    node = make_node(branch("shipped", IS_SHIPPED), branch("status-only", STATUS_IS_200))
    body = b'{"status": "shipped", "total": ' + constant.encode() + b"}"
    response = HttpResponse(200, {"content-type": "application/json"}, body)

    outcome, _ = evaluate(node, response, explain=True)

    assert (outcome.kind, outcome.target) == (OutcomeKind.MATCHED, "status-only")
    assert outcome.explanation is not None
    assert any("not valid JSON" in note for note in outcome.explanation.notes)


def test_empty_body_is_noted_and_is_not_an_error() -> None:
    node = make_node(branch("shipped", IS_SHIPPED))

    outcome, _ = evaluate(node, HttpResponse(204, {}, b""), explain=True)

    assert (outcome.kind, outcome.target) == (OutcomeKind.NO_MATCH, "else")
    assert outcome.explanation is not None
    assert any("no body" in note for note in outcome.explanation.notes)


def test_json_nested_too_deep_makes_body_subjects_null_and_is_not_an_error() -> None:
    deep: Any = "shipped"
    for _ in range(MAX_JSON_DEPTH + 5):
        deep = {"status": deep}
    node = make_node(branch("shipped", IS_SHIPPED), branch("status-only", STATUS_IS_200))

    outcome, _ = evaluate(node, json_response(deep), explain=True)

    assert (outcome.kind, outcome.target) == (OutcomeKind.MATCHED, "status-only")
    assert outcome.explanation is not None
    assert any("deeper than" in note for note in outcome.explanation.notes)


def test_large_body_is_judged_like_a_small_one() -> None:
    # Bodies over OFF_LOOP_BODY_BYTES are parsed and judged in a worker thread.
    big = {**SHIPPED, "padding": "x" * (engine_module.OFF_LOOP_BODY_BYTES + 1)}
    node = make_node(
        branch("show-status", STATUS_IS_200, IS_SHIPPED),
        extractions=[{"variable": "carrier", "path": "carrier"}],
    )

    outcome, _ = evaluate(node, json_response(big))

    assert (outcome.kind, outcome.target) == (OutcomeKind.MATCHED, "show-status")
    assert outcome.variables == {"carrier": "UPS"}


def test_json_body_has_no_note() -> None:
    outcome, _ = evaluate(make_node(branch("always")), json_response(SHIPPED), explain=True)

    assert outcome.explanation is not None
    assert outcome.explanation.notes == ()


# ---------------------------------------------------------------------------------------------
# The template cache
# ---------------------------------------------------------------------------------------------


def test_templates_are_compiled_once_per_connector_version(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    compiled: list[tuple[str, int]] = []
    real_compile = engine_module.compile_request

    def counting(connector: Connector) -> Any:
        compiled.append((connector.id, connector.version))
        return real_compile(connector)

    monkeypatch.setattr(engine_module, "compile_request", counting)
    connectors = Connectors(make_connector(version=1))
    send = FakeSend(json_response(SHIPPED))
    engine = Engine(connectors, Secrets(), send, bindings=SecretBindings({}))
    node = compile_node(make_node(branch("always")))

    async def three_calls() -> None:
        for number in ("A-1", "A-2", "A-3"):
            await engine.evaluate(node, {"order_number": number})

    asyncio.run(three_calls())
    assert compiled == [("orders", 1)]

    connectors.by_id["orders"] = make_connector(
        version=2, url_template=f"{ORIGIN}/v2/orders/{{{{order_number}}}}"
    )
    asyncio.run(three_calls())

    assert compiled == [("orders", 1), ("orders", 2)]
    assert [request.url for request, _ in send.calls] == [
        f"{ORIGIN}/orders/A-1",
        f"{ORIGIN}/orders/A-2",
        f"{ORIGIN}/orders/A-3",
        f"{ORIGIN}/v2/orders/A-1",
        f"{ORIGIN}/v2/orders/A-2",
        f"{ORIGIN}/v2/orders/A-3",
    ]


# ---------------------------------------------------------------------------------------------
# Property: whatever the variables and the upstream, a well-formed answer
# ---------------------------------------------------------------------------------------------

ANY_TEXT = st.text(st.characters(exclude_categories=()), max_size=12)  # with lone surrogates
SCALARS = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**70), max_value=2**70)
    | st.floats()
    | ANY_TEXT
)
JSON_LIKE = st.recursive(
    SCALARS,
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(ANY_TEXT, children, max_size=4)
    ),
    max_leaves=12,
)
ASCII_TEXT = st.text(st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=12)
PLACEABLE = st.sampled_from(["A-1", "Chicago", "a/b?c#d%", ".."]) | st.integers() | ANY_TEXT
ARBITRARY_VARIABLES = st.dictionaries(
    st.sampled_from(["order_number", "location", "customer", "qty", "note"]) | ANY_TEXT,
    JSON_LIKE,
    max_size=6,
)
# Most examples carry every variable the connector needs, mostly with values that fit, so that
# most of them reach `send`; the others exercise MISSING_VARIABLE and INVALID_VARIABLE.
FITTING_VARIABLES = st.fixed_dictionaries(
    {
        "order_number": st.sampled_from(["A-1", "a/b?c#d%"]) | st.integers() | ASCII_TEXT,
        "customer": st.fixed_dictionaries({"email": ASCII_TEXT | st.integers()}),
        "location": st.sampled_from(["Chicago", "Boston", "Austin"]),
        "qty": st.integers() | ASCII_TEXT | st.lists(st.integers(), max_size=3),
        "note": st.none() | st.booleans() | ASCII_TEXT,
    }
)
COMPLETE_VARIABLES = st.fixed_dictionaries(
    {
        "order_number": PLACEABLE,
        "customer": st.fixed_dictionaries({"email": PLACEABLE}),
        "location": PLACEABLE | JSON_LIKE,
        "qty": JSON_LIKE,
        "note": JSON_LIKE,
    }
)
VARIABLES = st.one_of(
    FITTING_VARIABLES,
    FITTING_VARIABLES,
    FITTING_VARIABLES,
    COMPLETE_VARIABLES,
    ARBITRARY_VARIABLES,
    st.tuples(FITTING_VARIABLES, ARBITRARY_VARIABLES).map(lambda pair: {**pair[0], **pair[1]}),
)
ORDERISH_BODIES = st.fixed_dictionaries(
    {},
    optional={
        "status": st.sampled_from(["shipped", "shipped", "pending"]) | JSON_LIKE,
        "carrier": JSON_LIKE,
        "items": st.lists(st.fixed_dictionaries({}, optional={"qty": JSON_LIKE}), max_size=3),
        "name": JSON_LIKE,
    },
)
BODIES = st.one_of(
    st.binary(max_size=64),
    JSON_LIKE.map(lambda value: json.dumps(value).encode()),
    ORDERISH_BODIES.map(lambda value: json.dumps(value).encode()),
    ORDERISH_BODIES.map(lambda value: json.dumps(value).encode()),
)
HEADERS = st.dictionaries(
    st.sampled_from(["content-type", "x-flag", "x-request-id"]) | st.text(max_size=8),
    st.text(max_size=16),
    max_size=4,
)
RESPONSES = st.builds(
    HttpResponse,
    status=st.sampled_from([200, 200, 404, 500, 503]) | st.integers(min_value=100, max_value=599),
    headers=HEADERS,
    body=BODIES,
    attempts=st.integers(min_value=1, max_value=3),
)
FAILURES = st.builds(
    SendError,
    st.sampled_from(SEND_FAILURES),
    st.text(max_size=20),
    attempts=st.integers(min_value=1, max_value=3),
)

PROPERTY_CONNECTOR = make_connector(
    method="POST",
    query={"email": "{{customer.email}}"},
    headers={"X-Location": "{{location}}"},
    body_template={"qty": "{{qty}}", "note": "note: {{note}}", "fixed": [1, "two"]},
    auth={"api_key": {"name": "X-API-Key", "value_secret": "key"}},
    version=3,
)
PROPERTY_NODE = make_node(
    branch("shipped", STATUS_IS_200, IS_SHIPPED),
    branch(
        "flagged-or-chicago",
        condition("EXISTS", kind="HEADER", path="X-Flag"),
        IN_CHICAGO,
        combinator="ANY",
    ),
    branch("maintenance", condition("EQUALS", 503, kind="STATUS")),
    branch(
        "all-positive",
        {
            "subject": {"kind": "BODY", "path": "items[*].qty"},
            "operator": "GREATER_THAN",
            "operand": 0,
            "quantifier": "ALL",
        },
    ),
    branch("named", condition("MATCHES", "^[A-Z][a-z]+$", path="name")),
    extractions=[
        {"variable": "status", "path": "status", "required": True, "cast": "STRING"},
        {"variable": "carrier", "path": "carrier", "default_value": "n/a"},
        {"variable": "quantity", "path": "items[0].qty", "cast": "INTEGER"},
    ],
)
ERROR_REASONS_AFTER_A_RESPONSE = {Reason.UPSTREAM_ERROR, Reason.EXTRACTION_FAILED}


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    variables=VARIABLES,
    answer=RESPONSES | FAILURES,
    status=st.sampled_from([*[ConnectorStatus.LIVE] * 4, *ConnectorStatus]),
    explain=st.booleans(),
    allow_draft=st.booleans(),
    secret_known=st.sampled_from([True, True, True, False]),
)
def test_any_variables_and_upstream_give_a_consistent_outcome(
    variables: dict[str, Any],
    answer: HttpResponse | SendError,
    status: ConnectorStatus,
    explain: bool,
    allow_draft: bool,
    secret_known: bool,
) -> None:
    connector = PROPERTY_CONNECTOR.model_copy(update={"status": status})

    outcome, send = evaluate(
        PROPERTY_NODE,
        answer,
        variables,
        connector=connector,
        secrets={"key": SECRET} if secret_known else {},
        explain=explain,
        allow_draft=allow_draft,
    )

    assert isinstance(outcome, Outcome)
    assert (outcome.explanation is not None) == explain
    assert SECRET not in repr(outcome)
    assert len(send.calls) <= 1
    runs = status is ConnectorStatus.LIVE or (status is ConnectorStatus.DRAFT and allow_draft)
    if not runs:
        assert_error(outcome, Reason.CONNECTOR_NOT_LIVE)
    if not send.calls:
        assert_error(outcome, outcome.reason)
        assert outcome.reason in NOTHING_SENT
        assert (outcome.http_status, outcome.attempts) == (0, 0)
        return
    assert runs
    assert secret_known
    assert outcome.connector_version == 3
    if isinstance(answer, SendError):
        assert_error(outcome, answer.reason)
        assert (outcome.http_status, outcome.attempts) == (0, answer.attempts)
        assert not explain or outcome.explanation.branches == ()  # type: ignore[union-attr]
        return
    assert (outcome.http_status, outcome.attempts) == (answer.status, answer.attempts)
    assert len(outcome.extractions) == len(PROPERTY_NODE.extractions)
    if outcome.kind is OutcomeKind.MATCHED:
        index = outcome.branch_index
        assert index is not None
        assert 0 <= index < len(PROPERTY_NODE.branches)
        assert outcome.reason is Reason.BRANCH_MATCHED
        assert outcome.target == PROPERTY_NODE.branches[index].target
        assert outcome.extractions[0].status in (ExtractionStatus.EXTRACTED,)
    elif outcome.kind is OutcomeKind.NO_MATCH:
        assert (outcome.reason, outcome.target, outcome.branch_index) == (
            Reason.NO_BRANCH_MATCHED,
            "else",
            None,
        )
        assert answer.status < 500
    else:
        assert_error(outcome, outcome.reason)
        assert outcome.reason in ERROR_REASONS_AFTER_A_RESPONSE
        if outcome.reason is Reason.UPSTREAM_ERROR:
            assert answer.status >= 500
        else:
            assert not outcome.extractions[0].succeeded
    if answer.status >= 500:
        assert outcome.kind is not OutcomeKind.NO_MATCH
    if outcome.kind is OutcomeKind.MATCHED and explain:
        branches = outcome.explanation.branches  # type: ignore[union-attr]
        assert [b.index for b in branches] == list(range(len(PROPERTY_NODE.branches)))
        assert branches[outcome.branch_index].matched  # type: ignore[index]
        assert all(not b.evaluated for b in branches[outcome.branch_index + 1 :])  # type: ignore[operator]
