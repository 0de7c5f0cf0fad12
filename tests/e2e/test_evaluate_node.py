"""EvaluateNode over the real wire: an in-process sidecar on 127.0.0.1:0, generated stubs, and
real loopback HTTP upstreams (tests/upstreams.py) standing in for the business API.

`harness` is a fresh sidecar and upstream per test; `shared` is one per module, for the tables
of calls against healthy endpoints (a shared sidecar keeps its circuit breakers and versions).
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb
from rulesidecar.v1 import rules_sidecar_pb2_grpc as pb_grpc

from tests.support.calls import RPC_TIMEOUT, field_violations, register
from tests.support.conditions import NO_OPERAND, condition, on_the_wire
from tests.support.loopback import LOOPBACK_ALLOW
from tests.support.sidecars import InProcessSidecar
from tests.support.upstreams import ORDER_API_KEY, Upstream

SECRET_NAME = "store_api_key"

# ---------------------------------------------------------------------------------------------
# Building requests and reading answers
# ---------------------------------------------------------------------------------------------


def body(path: str, operator: str, operand: Any = NO_OPERAND, **options: Any) -> dict[str, Any]:
    return on_the_wire(condition(operator, operand, path=path, **options))


def status(operator: str, operand: Any) -> dict[str, Any]:
    return on_the_wire(condition(operator, operand, kind="STATUS"))


def header(name: str, operator: str, operand: Any = NO_OPERAND) -> dict[str, Any]:
    return on_the_wire(condition(operator, operand, kind="HEADER", path=name))


def variable(path: str, operator: str, operand: Any = NO_OPERAND) -> dict[str, Any]:
    return on_the_wire(condition(operator, operand, kind="VARIABLE", path=path))


def branch(target: str, *conditions: dict[str, Any], combinator: str = "ALL") -> dict[str, Any]:
    return {
        "target": target,
        "combinator": f"COMBINATOR_{combinator}",
        "conditions": list(conditions),
    }


def extraction(name: str, path: str, *, cast: str | None = None, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"variable": name, "path": path, **fields}
    if cast:
        data["cast"] = f"CAST_TYPE_{cast}"
    return data


def node(connector_id: str, *branches: dict[str, Any], **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {
        "id": "node-under-test",
        "connector_id": connector_id,
        "branches": list(branches),
        "else_target": "else",
        "error_target": "error",
    }
    data.update(fields)
    return data


@dataclass
class Harness:
    """A loaded sidecar (secrets_dir holds `store_api_key`) and the loopback upstreams."""

    sidecar: InProcessSidecar
    upstream: Upstream

    @property
    def stub(self) -> pb_grpc.RulesSidecarServiceStub:
        return self.sidecar.stub

    def register(self, connector_id: str, url: str, **fields: Any) -> pb.Connector:
        return register(self.stub, connector_id, url, **fields)

    def register_orders(self, connector_id: str = "order-status", **fields: Any) -> pb.Connector:
        """The seed connector: GET /orders/{{order_number}} with the API key from a secret."""
        defaults: dict[str, Any] = {
            "display_name": "Where is my order?",
            "headers": {"Accept": "application/json"},
            "auth": {"api_key": {"name": "X-API-Key", "value_secret": SECRET_NAME}},
        }
        url = self.upstream.url("/orders/{{order_number}}")
        return self.register(connector_id, url, **{**defaults, **fields})

    def evaluate(
        self,
        node_data: dict[str, Any],
        variables: dict[str, Any] | None = None,
        *,
        explain: bool = False,
        mode: str | None = None,
    ) -> pb.EvaluateNodeResponse:
        data: dict[str, Any] = {"node": node_data, "variables": variables or {}, "explain": explain}
        if mode:
            data["mode"] = f"EVALUATION_MODE_{mode}"
        request = json_format.ParseDict(data, pb.EvaluateNodeRequest())
        response: pb.EvaluateNodeResponse = self.stub.EvaluateNode(request, timeout=RPC_TIMEOUT)
        return response


@pytest.fixture
def harness(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream, tmp_path: Path
) -> Harness:
    secrets = tmp_path / "secrets"
    secrets.mkdir()
    (secrets / SECRET_NAME).write_text(ORDER_API_KEY + "\n", encoding="utf-8")
    sidecar = sidecar_factory(secrets_dir=secrets, **LOOPBACK_ALLOW)
    return Harness(sidecar, upstream)


@pytest.fixture(scope="module")
def module_harness(
    module_sidecar_factory: Callable[..., InProcessSidecar],
    module_upstream: Upstream,
    tmp_path_factory: pytest.TempPathFactory,
) -> Harness:
    secrets = tmp_path_factory.mktemp("secrets")
    (secrets / SECRET_NAME).write_text(ORDER_API_KEY + "\n", encoding="utf-8")
    sidecar = module_sidecar_factory(secrets_dir=secrets, **LOOPBACK_ALLOW)
    harness = Harness(sidecar, module_upstream)
    harness.register("document", module_upstream.url("/json"))
    return harness


@pytest.fixture
def shared(module_harness: Harness) -> Harness:
    """The module's sidecar and upstreams (connector `document` -> /json), record cleared.

    For tables of evaluations against healthy endpoints only: a shared sidecar keeps its
    circuit breakers, so tests that make calls fail use their own `harness`.
    """
    module_harness.upstream.reset()
    return module_harness


def verdict(response: pb.EvaluateNodeResponse) -> tuple[str, str, str]:
    """(outcome, reason, target) with enum names, for one-line assertions."""
    return (
        pb.Outcome.Name(response.outcome),
        pb.Reason.Name(response.reason),
        response.target,
    )


def matched(target: str) -> tuple[str, str, str]:
    return ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED", target)


NO_MATCH = ("OUTCOME_NO_MATCH", "REASON_NO_BRANCH_MATCHED", "else")


def error(reason: str) -> tuple[str, str, str]:
    return ("OUTCOME_ERROR", f"REASON_{reason}", "error")


def variables_of(response: pb.EvaluateNodeResponse) -> dict[str, Any]:
    return json_format.MessageToDict(response.variables)


def extraction_statuses(response: Any) -> dict[str, str]:
    return {
        result.variable: pb.ExtractionStatus.Name(result.status).removeprefix("EXTRACTION_STATUS_")
        for result in response.extractions
    }


def echoed(upstream: Upstream) -> dict[str, Any]:
    """The last request that reached /echo/..., with header names lower-cased."""
    request = upstream.last("/echo/")
    return {
        "method": request.method,
        "raw_path": request.raw_path.partition("?")[0],
        "query": request.query,
        "headers": {name.lower(): value for name, value in request.headers},
        "body": request.body.decode(),
    }


# ---------------------------------------------------------------------------------------------
# The seed scenario: "Where is my order?"
# ---------------------------------------------------------------------------------------------

WHERE_IS_MY_ORDER = node(
    "order-status",
    branch("show-status", status("STATUS_CLASS", "2xx"), body("status", "IS_NOT_EMPTY")),
    id="where-is-my-order",
    else_target="ask-for-the-number-again",
    error_target="hand-off-to-an-agent",
    extractions=[
        extraction("order_status", "status", required=True),
        extraction("carrier", "carrier", default_value="not yet assigned"),
    ],
)


def test_shipped_order_matches_show_status_with_the_status_extracted(harness: Harness) -> None:
    harness.register_orders()

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "A-10023"})

    assert verdict(response) == matched("show-status")
    assert response.branch_index == 0
    assert variables_of(response) == {"order_status": "shipped", "carrier": "UPS"}
    assert response.http_status == 200


def test_unknown_order_is_no_match_with_the_else_target(harness: Harness) -> None:
    harness.register_orders()

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "Z-1"})

    assert verdict(response) == (
        "OUTCOME_NO_MATCH",
        "REASON_NO_BRANCH_MATCHED",
        "ask-for-the-number-again",
    )
    assert not response.HasField("branch_index")
    assert response.http_status == 404
    assert variables_of(response) == {"carrier": "not yet assigned"}
    assert extraction_statuses(response) == {"order_status": "MISSING", "carrier": "DEFAULTED"}


def test_order_api_down_is_an_error_to_the_agent_hand_off(
    harness: Harness, refused_url: str
) -> None:
    harness.register("order-status", refused_url.replace("A-10023", "{{order_number}}"))

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "A-10023"})

    assert verdict(response) == (
        "OUTCOME_ERROR",
        "REASON_CONNECT_ERROR",
        "hand-off-to-an-agent",
    )
    assert response.http_status == 0
    assert not variables_of(response).get("order_status")


def test_refused_call_reports_every_attempt(harness: Harness, refused_url: str) -> None:
    harness.register("api", refused_url)

    response = harness.evaluate(node("api", branch("always")))

    assert verdict(response) == error("CONNECT_ERROR")
    assert response.attempts == 3


@pytest.mark.parametrize(
    ("location", "target"),
    [("Chicago", "chicago-pickup"), ("Boston", "show-status"), (None, "show-status")],
)
def test_visitor_attribute_branch_matches_only_for_chicago_visitors(
    harness: Harness, location: str | None, target: str
) -> None:
    harness.register_orders()
    chicago_first = {
        **WHERE_IS_MY_ORDER,
        "branches": [
            branch(
                "chicago-pickup",
                variable("location", "EQUALS", "Chicago"),
                status("EQUALS", 200),
            ),
            *WHERE_IS_MY_ORDER["branches"],
        ],
    }
    visitor = {"order_number": "A-10023"}
    if location is not None:
        visitor["location"] = location

    response = harness.evaluate(chicago_first, visitor)

    assert verdict(response) == matched(target)


def test_chicago_branch_does_not_match_when_the_order_is_unknown(harness: Harness) -> None:
    harness.register_orders()
    chicago = node(
        "order-status",
        branch("chicago-pickup", variable("location", "EQUALS", "Chicago"), status("EQUALS", 200)),
    )

    response = harness.evaluate(chicago, {"order_number": "Z-1", "location": "Chicago"})

    assert verdict(response) == NO_MATCH


def test_upstream_receives_the_api_key_and_the_answer_never_contains_it(
    harness: Harness,
) -> None:
    harness.register_orders()

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "A-10023"}, explain=True)

    assert verdict(response) == matched("show-status")
    sent = harness.upstream.last("/orders/A-10023")
    assert sent.header("X-API-Key") == ORDER_API_KEY
    assert sent.header("Accept") == "application/json"
    assert ORDER_API_KEY.encode() not in response.SerializeToString()
    assert ORDER_API_KEY not in str(response)


def test_wrong_api_key_gets_401_and_no_match(harness: Harness, tmp_path: Path) -> None:
    (tmp_path / "secrets" / "other_key").write_text("not-the-key", encoding="utf-8")
    harness.register_orders(auth={"api_key": {"name": "X-API-Key", "value_secret": "other_key"}})

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "A-10023"})

    assert verdict(response) == (
        "OUTCOME_NO_MATCH",
        "REASON_NO_BRANCH_MATCHED",
        "ask-for-the-number-again",
    )
    assert response.http_status == 401


def test_missing_secret_is_secret_not_found_and_nothing_is_sent(harness: Harness) -> None:
    harness.register_orders(auth={"bearer": {"token_secret": "not_provisioned"}})

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "A-10023"})

    assert verdict(response) == ("OUTCOME_ERROR", "REASON_SECRET_NOT_FOUND", "hand-off-to-an-agent")
    secrets_dir = harness.sidecar.settings.secrets_dir
    assert response.message == (
        "secret 'not_provisioned' of connector 'order-status' is not available: looked for the "
        "file "
        f"{secrets_dir}/not_provisioned (secrets_dir) and the environment variables "
        "RULES_SECRET_not_provisioned, RULES_SECRET_NOT_PROVISIONED"
    )
    assert harness.upstream.hits() == 0


def test_missing_order_number_is_missing_variable_and_nothing_is_sent(harness: Harness) -> None:
    harness.register_orders()

    response = harness.evaluate(WHERE_IS_MY_ORDER, {})

    assert verdict(response) == ("OUTCOME_ERROR", "REASON_MISSING_VARIABLE", "hand-off-to-an-agent")
    assert "order_number" in response.message
    assert (response.http_status, response.attempts) == (0, 0)
    assert harness.upstream.hits() == 0


def test_unknown_connector_is_connector_not_found(harness: Harness) -> None:
    response = harness.evaluate(node("no-such-connector", branch("always")))

    assert verdict(response) == error("CONNECTOR_NOT_FOUND")
    assert "no-such-connector" in response.message
    assert response.connector_version == 0


# ---------------------------------------------------------------------------------------------
# Operators and coercions, over the wire, against a fixed JSON document (upstreams.FIXED_DOCUMENT)
# ---------------------------------------------------------------------------------------------

OPERATOR_ROWS = [
    # EQUALS: numbers, booleans, text, null, structures
    pytest.param(body("count", "EQUALS", "5"), True, id='"5"==5'),
    pytest.param(body("count_text", "EQUALS", 5), True, id='"05"==5'),
    pytest.param(body("price", "EQUALS", 5), True, id='"5.0"==5'),
    pytest.param(body("count", "EQUALS", "5.0"), True, id='5=="5.0"'),
    pytest.param(body("count", "EQUALS", 6), False, id="5!=6"),
    pytest.param(body("flag", "EQUALS", "true"), True, id='true=="true"'),
    pytest.param(body("flag_text", "EQUALS", True), True, id='"true"==true'),
    pytest.param(body("flag", "EQUALS", "TRUE"), True, id='true=="TRUE"'),
    pytest.param(body("flag", "EQUALS", 1), False, id="true!=1"),
    pytest.param(body("name", "EQUALS", "alice"), False, id="case-sensitive"),
    pytest.param(body("name", "EQUALS", "alice", ignore_case=True), True, id="ignore-case"),
    pytest.param(body("nothing", "EQUALS", None), True, id="null==null"),
    pytest.param(body("count", "EQUALS", None), False, id="5!=null"),
    pytest.param(body("tags", "EQUALS", ["new", "vip", "gift"]), True, id="list==list"),
    pytest.param(body("order.customer.tier", "EQUALS", "gold"), True, id="nested-path"),
    pytest.param(body("name", "NOT_EQUALS", "Bob"), True, id="not-equals"),
    pytest.param(body("absent", "NOT_EQUALS", "x"), True, id="absent-not-equals"),
    # ordering
    pytest.param(body("order.total", "GREATER_THAN", 100), True, id="150.5>100"),
    pytest.param(body("count_text", "LESS_THAN", 10), True, id='"05"<10-numeric'),
    pytest.param(body("name", "GREATER_THAN", "Aaron"), True, id="lexicographic"),
    pytest.param(body("count", "GREATER_THAN_OR_EQUAL", 5), True, id="5>=5"),
    pytest.param(body("name", "LESS_THAN", 5), False, id="text-vs-number"),
    # CONTAINS, STARTS_WITH, ENDS_WITH
    pytest.param(body("tags", "CONTAINS", "vip"), True, id="list-contains"),
    pytest.param(body("tags", "CONTAINS", "VIP"), False, id="list-contains-case"),
    pytest.param(body("tags", "CONTAINS", "VIP", ignore_case=True), True, id="list-contains-ic"),
    pytest.param(body("name", "CONTAINS", "lic"), True, id="string-contains"),
    pytest.param(body("order.total", "CONTAINS", "50"), True, id="number-text-contains"),
    pytest.param(body("order", "CONTAINS", "customer"), True, id="object-key-contains"),
    pytest.param(body("tags", "NOT_CONTAINS", "expired"), True, id="not-contains"),
    pytest.param(body("code", "STARTS_WITH", "AB"), True, id="starts-with"),
    pytest.param(body("code", "ENDS_WITH", "34"), True, id="ends-with"),
    # IN, MATCHES
    pytest.param(body("name", "IN", ["Bob", "Alice"]), True, id="in"),
    pytest.param(body("count", "IN", ["5", 6]), True, id="in-numeric"),
    pytest.param(body("name", "NOT_IN", ["Alice"]), False, id="not-in"),
    pytest.param(body("code", "MATCHES", "^[A-Z]{2}[0-9]{4}$"), True, id="matches-anchored"),
    pytest.param(body("code", "MATCHES", "12"), True, id="matches-searches-anywhere"),
    pytest.param(body("code", "MATCHES", "^ab"), False, id="matches-case"),
    pytest.param(body("code", "MATCHES", "^ab", ignore_case=True), True, id="matches-ic"),
    # EXISTS, IS_EMPTY
    pytest.param(body("nothing", "EXISTS"), False, id="exists-on-null"),
    pytest.param(body("nothing", "NOT_EXISTS"), True, id="not-exists-on-null"),
    pytest.param(body("name", "EXISTS"), True, id="exists"),
    pytest.param(body("empty_text", "IS_EMPTY"), True, id="empty-string"),
    pytest.param(body("empty_list", "IS_EMPTY"), True, id="empty-list"),
    pytest.param(body("absent", "IS_EMPTY"), True, id="absent-is-empty"),
    pytest.param(body("tags", "IS_NOT_EMPTY"), True, id="is-not-empty"),
    # STATUS_CLASS, BETWEEN
    pytest.param(status("STATUS_CLASS", "2xx"), True, id="status-2xx"),
    pytest.param(status("STATUS_CLASS", "4xx"), False, id="status-4xx"),
    pytest.param(body("order.total", "BETWEEN", [100, 150.5]), True, id="between-inclusive"),
    pytest.param(body("ratio", "BETWEEN", [0.3, 1]), False, id="between-outside"),
    # quantifiers
    pytest.param(
        body("items[*].status", "EQUALS", "shipped", quantifier="ALL"), False, id="all-shipped"
    ),
    pytest.param(
        body("items[*].status", "EQUALS", "pending", quantifier="ANY"), True, id="any-pending"
    ),
    pytest.param(
        body("items[*].status", "EQUALS", "cancelled", quantifier="NONE"), True, id="none"
    ),
    pytest.param(body("items[*].qty", "GREATER_THAN", 0, quantifier="ALL"), True, id="all-qty"),
    pytest.param(body("empty_list", "EQUALS", "x", quantifier="ALL"), True, id="all-of-empty"),
    pytest.param(body("empty_list", "EQUALS", "x", quantifier="ANY"), False, id="any-of-empty"),
    pytest.param(body("name", "EQUALS", "Alice", quantifier="ANY"), False, id="any-of-scalar"),
    # headers, case-insensitive
    pytest.param(header("X-REQUEST-ID", "EQUALS", "req-42"), True, id="header-upper-name"),
    pytest.param(header("x-rate-limit", "GREATER_THAN", 50), True, id="header-numeric"),
    pytest.param(header("X-Missing", "NOT_EXISTS"), True, id="header-absent"),
]


@pytest.mark.parametrize(("condition_data", "holds"), OPERATOR_ROWS)
def test_operator_table_over_the_wire(
    shared: Harness, condition_data: dict[str, Any], holds: bool
) -> None:
    response = shared.evaluate(node("document", branch("yes", condition_data)), explain=True)

    explained = response.explanation.branches[0].conditions[0]
    assert verdict(response) == (matched("yes") if holds else NO_MATCH), explained
    assert explained.result is holds


VARIABLE_ROWS = [
    pytest.param(
        variable("customer.tier", "EQUALS", "gold"),
        {"customer": {"tier": "gold"}},
        True,
        id="nested-variable",
    ),
    pytest.param(
        variable("customer.tier", "EQUALS", "gold"), {"customer": "gold"}, False, id="not-nested"
    ),
    pytest.param(variable("visits", "GREATER_THAN_OR_EQUAL", 10), {"visits": 10}, True, id=">="),
    pytest.param(variable("visits", "EQUALS", "10"), {"visits": 10}, True, id="struct-double"),
    pytest.param(variable("location", "NOT_EQUALS", "Chicago"), {}, True, id="absent-variable"),
    pytest.param(
        variable("cart", "CONTAINS", "sku-1"), {"cart": ["sku-1", "sku-2"]}, True, id="list-var"
    ),
]


@pytest.mark.parametrize(("condition_data", "visitor", "holds"), VARIABLE_ROWS)
def test_variable_subjects_over_the_wire(
    shared: Harness, condition_data: dict[str, Any], visitor: dict[str, Any], holds: bool
) -> None:
    response = shared.evaluate(node("document", branch("yes", condition_data)), visitor)

    assert verdict(response) == (matched("yes") if holds else NO_MATCH)


def test_any_combinator_holds_when_one_condition_holds(shared: Harness) -> None:
    either = branch(
        "yes", body("name", "EQUALS", "Bob"), body("count", "EQUALS", 5), combinator="ANY"
    )
    both = branch("yes", body("name", "EQUALS", "Bob"), body("count", "EQUALS", 5))

    assert verdict(shared.evaluate(node("document", either))) == matched("yes")
    assert verdict(shared.evaluate(node("document", both))) == NO_MATCH


# ---------------------------------------------------------------------------------------------
# Templating: what the upstream really receives (echo)
# ---------------------------------------------------------------------------------------------


def register_echo(
    harness: Harness, path: str = "/echo/orders/{{order_number}}", **fields: Any
) -> pb.Connector:
    return harness.register("echo", harness.upstream.url(path), **fields)


ECHO_NODE = node("echo", branch("sent"))


@pytest.mark.parametrize(
    ("value", "segment"),
    [
        ("a/b?c#d%", "a%2Fb%3Fc%23d%25"),
        ("A 1+é", "A%201%2B%C3%A9"),
        (12345, "12345"),
        (True, "true"),
        ("...", "..."),
    ],
)
def test_path_variable_is_one_percent_encoded_segment(
    shared: Harness, value: Any, segment: str
) -> None:
    register_echo(shared)

    response = shared.evaluate(ECHO_NODE, {"order_number": value})

    assert verdict(response) == matched("sent")
    assert echoed(shared.upstream)["raw_path"] == f"/echo/orders/{segment}"


@pytest.mark.parametrize("value", ["..", ".", ""])
def test_dot_segments_and_empty_segments_are_refused_and_nothing_is_sent(
    shared: Harness, value: str
) -> None:
    register_echo(shared)

    response = shared.evaluate(ECHO_NODE, {"order_number": value})

    assert verdict(response) == error("INVALID_VARIABLE")
    assert "order_number" in response.message
    assert shared.upstream.hits("/echo") == 0


def test_object_in_the_path_is_refused_and_nothing_is_sent(shared: Harness) -> None:
    register_echo(shared)

    response = shared.evaluate(ECHO_NODE, {"order_number": {"id": "A-1"}})

    assert verdict(response) == error("INVALID_VARIABLE")
    assert shared.upstream.hits("/echo") == 0


def test_query_values_are_percent_encoded_after_the_urls_own_query(shared: Harness) -> None:
    register_echo(
        shared,
        "/echo/search?fixed=1",
        query={"q": "{{q}}", "b": "literal value", "a": "{{n}}"},
    )

    shared.evaluate(node("echo", branch("sent")), {"q": "a b&c=d+é#", "n": 3})

    expected = "fixed=1&a=3&b=literal%20value&q=a%20b%26c%3Dd%2B%C3%A9%23"
    assert echoed(shared.upstream)["query"] == expected


def test_request_on_the_wire_is_the_url_the_explanation_shows(shared: Harness) -> None:
    register_echo(shared, "/echo/orders/{{order_number}}", query={"q": "{{q}}"})

    response = shared.evaluate(ECHO_NODE, {"order_number": "a:b@c", "q": "x/y?z:w@v"}, explain=True)

    sent = shared.upstream.last("/echo/")
    assert response.explanation.request.url == shared.upstream.url(sent.raw_path)


def test_json_body_keeps_the_types_of_whole_placeholders(shared: Harness) -> None:
    register_echo(
        shared,
        "/echo/orders",
        method="HTTP_METHOD_POST",
        body_template={
            "qty": "{{qty}}",
            "price": "{{price}}",
            "gift": "{{gift}}",
            "customer": "{{customer}}",
            "tags": "{{tags}}",
            "note": "{{qty}} for {{customer.name}}: {{tags}}",
            "fixed": {"{{not_a_template}}": 1},
        },
    )
    customer = {"name": "Ada", "tier": "gold"}

    response = shared.evaluate(
        ECHO_NODE,
        {"qty": 3, "price": 9.5, "gift": False, "customer": customer, "tags": ["a", 1]},
    )

    assert verdict(response) == matched("sent")
    sent = echoed(shared.upstream)
    assert sent["method"] == "POST"
    assert sent["headers"]["content-type"] == "application/json"
    assert re.search(r"\"qty\":3[,}]", sent["body"])  # 3.0 from a Struct goes out as 3
    assert json.loads(sent["body"]) == {
        "qty": 3,
        "price": 9.5,
        "gift": False,
        "customer": customer,
        "tags": ["a", 1],
        "note": '3 for Ada: ["a",1]',
        "fixed": {"{{not_a_template}}": 1},
    }


def test_substitution_is_single_pass(shared: Harness) -> None:
    register_echo(
        shared,
        "/echo/orders/{{order_number}}",
        headers={"X-Note": "{{note}}"},
        query={"q": "{{note}}"},
        method="HTTP_METHOD_POST",
        body_template={"note": "{{note}}", "text": "says {{note}}"},
    )

    shared.evaluate(ECHO_NODE, {"order_number": "{{y}}", "note": "{{y}}", "y": "expanded"})

    sent = echoed(shared.upstream)
    assert sent["raw_path"] == "/echo/orders/%7B%7By%7D%7D"
    assert sent["query"] == "q=%7B%7By%7D%7D"
    assert sent["headers"]["x-note"] == "{{y}}"
    assert json.loads(sent["body"]) == {"note": "{{y}}", "text": "says {{y}}"}
    assert "expanded" not in json.dumps(sent)


def test_header_values_are_stripped_and_scalars_become_text(shared: Harness) -> None:
    register_echo(
        shared, "/echo/h", headers={"X-Visitor": "{{name}}", "X-Vip": "{{vip}}", "X-N": "{{n}}"}
    )

    shared.evaluate(ECHO_NODE, {"name": "  Ada\t", "vip": True, "n": 12345})

    sent = echoed(shared.upstream)["headers"]
    assert (sent["x-visitor"], sent["x-vip"], sent["x-n"]) == ("Ada", "true", "12345")


@pytest.mark.parametrize("value", ["a\r\nX-Injected: 1", "line\nbreak", "nul\x00", "café"])
def test_header_value_with_control_or_non_ascii_characters_is_refused(
    shared: Harness, value: str
) -> None:
    register_echo(shared, "/echo/h", headers={"X-Note": "{{note}}"})

    response = shared.evaluate(ECHO_NODE, {"note": value})

    assert verdict(response) == error("INVALID_VARIABLE")
    assert "note" in response.message
    assert value not in response.message
    assert shared.upstream.hits() == 0


def test_missing_variable_is_named_and_nothing_is_sent(shared: Harness) -> None:
    register_echo(
        shared, "/echo/c", method="HTTP_METHOD_POST", body_template={"e": "{{customer.email}}"}
    )

    response = shared.evaluate(ECHO_NODE, {"customer": {"name": "Ada"}})

    assert verdict(response) == error("MISSING_VARIABLE")
    assert "customer.email" in response.message
    assert shared.upstream.hits() == 0


def test_api_key_in_the_query_reaches_the_upstream(shared: Harness) -> None:
    register_echo(
        shared,
        "/echo/q",
        query={"expand": "items"},
        auth={
            "api_key": {
                "name": "key",
                "location": "API_KEY_LOCATION_QUERY",
                "value_secret": SECRET_NAME,
            }
        },
    )

    response = shared.evaluate(ECHO_NODE, explain=True)

    assert echoed(shared.upstream)["query"] == f"expand=items&key={ORDER_API_KEY}"
    assert ORDER_API_KEY not in str(response)


# ---------------------------------------------------------------------------------------------
# Every kind of upstream answer
# ---------------------------------------------------------------------------------------------

STATUS_200 = branch("ok", status("EQUALS", 200))


@pytest.mark.parametrize(
    ("path", "expected", "http_status", "attempts"),
    [
        ("/status/200", matched("ok"), 200, 1),
        ("/status/404", NO_MATCH, 404, 1),
        ("/status/401", NO_MATCH, 401, 1),
        ("/status/500", error("UPSTREAM_ERROR"), 500, 1),
        ("/status/503", error("UPSTREAM_ERROR"), 503, 3),  # a GET is retried twice on 503
        ("/empty", NO_MATCH, 204, 1),
        ("/redirect", NO_MATCH, 302, 1),
    ],
)
def test_upstream_status_decides_between_branch_else_and_error(
    harness: Harness,
    path: str,
    expected: tuple[str, str, str],
    http_status: int,
    attempts: int,
) -> None:
    harness.register("api", harness.upstream.url(path))

    response = harness.evaluate(node("api", STATUS_200))

    assert verdict(response) == expected
    assert response.http_status == http_status
    assert response.attempts == attempts
    assert harness.upstream.hits(path) == attempts


def test_503_to_a_post_is_not_retried(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/status/503"), method="HTTP_METHOD_POST")

    response = harness.evaluate(node("api", STATUS_200))

    assert verdict(response) == error("UPSTREAM_ERROR")
    assert (response.attempts, harness.upstream.hits("/status/503")) == (1, 1)


def test_branch_that_matches_5xx_explicitly_wins(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/status/503"))

    response = harness.evaluate(
        node("api", STATUS_200, branch("maintenance", status("STATUS_CLASS", "5xx")))
    )

    assert verdict(response) == matched("maintenance")
    assert response.branch_index == 1


def test_redirect_is_the_answer_and_is_not_followed(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/redirect"))

    response = harness.evaluate(
        node(
            "api",
            branch(
                "moved",
                status("STATUS_CLASS", "3xx"),
                header("Location", "EQUALS", "/redirected"),
            ),
        )
    )

    assert verdict(response) == matched("moved")
    assert response.http_status == 302
    assert harness.upstream.hits("/redirected") == 0


@pytest.mark.parametrize("path", ["/slow", "/drip"])
def test_upstream_slower_than_the_connector_timeout_is_timeout(harness: Harness, path: str) -> None:
    harness.register("api", harness.upstream.url(path), timeout="0.5s")

    # The RPC deadline (RPC_TIMEOUT) is far longer than the connector's budget: a sidecar that
    # hung would fail this call with DEADLINE_EXCEEDED instead of answering.
    response = harness.evaluate(node("api", branch("always")))

    assert verdict(response) == error("TIMEOUT")
    assert response.http_status == 0


def test_refused_connection_is_connect_error(harness: Harness, refused_url: str) -> None:
    harness.register("api", refused_url)

    assert verdict(harness.evaluate(node("api", branch("always")))) == error("CONNECT_ERROR")


@pytest.mark.parametrize("path", ["/huge", "/huge-chunked"])
def test_body_over_the_size_cap_is_response_too_large(harness: Harness, path: str) -> None:
    harness.register("api", harness.upstream.url(path))

    response = harness.evaluate(node("api", branch("always")))

    assert verdict(response) == error("RESPONSE_TOO_LARGE")


def test_small_size_cap_refuses_an_ordinary_body(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/json"), max_response_bytes=64)

    assert verdict(harness.evaluate(node("api", branch("always")))) == error("RESPONSE_TOO_LARGE")


def test_connection_reset_mid_body_is_an_error(harness: Harness) -> None:
    harness.register("api", harness.upstream.raw_url("/reset"))

    response = harness.evaluate(node("api", branch("always")))

    assert verdict(response) in (error("CONNECT_ERROR"), error("PROTOCOL_ERROR"))


@pytest.mark.parametrize("path", ["/garbage", "/bad-chunk-size"])
def test_malformed_response_is_protocol_error(harness: Harness, path: str) -> None:
    harness.register("api", harness.upstream.raw_url(path))

    response = harness.evaluate(node("api", branch("always")))

    assert verdict(response) == error("PROTOCOL_ERROR")


def test_unresolvable_host_is_dns_error(harness: Harness) -> None:
    harness.register("api", "https://nonexistent.invalid/orders/{{n}}")

    response = harness.evaluate(node("api", branch("always")), {"n": 1})

    assert verdict(response) == error("DNS_ERROR")


def test_tls_failure_is_tls_error(harness: Harness) -> None:
    harness.register("api", harness.upstream.https_url("/json"))

    assert verdict(harness.evaluate(node("api", branch("always")))) == error("TLS_ERROR")


def test_failed_call_evaluates_no_branch_even_one_on_visitor_variables(
    harness: Harness, refused_url: str
) -> None:
    harness.register("api", refused_url)

    response = harness.evaluate(
        node("api", branch("chicago", variable("location", "EQUALS", "Chicago"))),
        {"location": "Chicago"},
        explain=True,
    )

    assert verdict(response) == error("CONNECT_ERROR")
    assert list(response.explanation.branches) == []
    assert any("no branch was evaluated" in note for note in response.explanation.notes)


def test_default_egress_policy_refuses_loopback_and_sends_nothing(
    sidecar_factory: Callable[..., InProcessSidecar], upstream: Upstream
) -> None:
    default_policy = sidecar_factory(egress_allow_cidrs=[], egress_allow_http_hosts=[])
    harness = Harness(default_policy, upstream)
    harness.register("api", upstream.url("/json"))

    response = harness.evaluate(node("api", branch("always")))

    assert verdict(response) == error("BLOCKED_DESTINATION")
    assert response.attempts == 0
    assert upstream.connections == 0


def test_repeated_5xx_open_the_circuit_and_later_calls_skip_the_upstream(
    harness: Harness,
) -> None:
    harness.register("api", harness.upstream.url("/status/500"))
    failing = node("api", STATUS_200)

    answers = [verdict(harness.evaluate(failing)) for _ in range(6)]

    assert answers[:5] == [error("UPSTREAM_ERROR")] * 5
    assert answers[5] == error("CIRCUIT_OPEN")
    assert harness.upstream.hits("/status/500") == 5


def test_connector_that_opts_in_follows_a_redirect(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/redirect"), follow_redirects=True)

    response = harness.evaluate(node("api", branch("landed", body("redirected", "EQUALS", True))))

    assert verdict(response) == matched("landed")
    assert (response.http_status, response.attempts) == (200, 2)


def test_html_instead_of_json_is_not_an_error(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/html"))

    response = harness.evaluate(
        node(
            "api",
            branch("has-status", body("status", "EXISTS")),
            branch("status-only", status("EQUALS", 200)),
            extractions=[extraction("status", "status")],
        ),
        explain=True,
    )

    assert verdict(response) == matched("status-only")
    body_condition = response.explanation.branches[0].conditions[0]
    assert body_condition.subject_present is False
    assert body_condition.subject_value.WhichOneof("kind") == "null_value"
    assert "not JSON" in body_condition.note
    assert any(
        "not valid JSON" in note and "text/html" in note for note in response.explanation.notes
    )
    assert extraction_statuses(response) == {"status": "NO_DOCUMENT"}


# ---------------------------------------------------------------------------------------------
# Extraction over the wire
# ---------------------------------------------------------------------------------------------


def test_extraction_statuses_casts_and_defaults(shared: Harness) -> None:
    extractions = [
        extraction("name", "name"),
        extraction("count_as_integer", "count_text", cast="INTEGER"),
        extraction("price_as_number", "price", cast="NUMBER"),
        extraction("flag_as_boolean", "flag_text", cast="BOOLEAN"),
        extraction("ratio_as_string", "ratio", cast="STRING"),
        extraction("total_as_string", "order.total", cast="STRING"),
        extraction("order_as_json", "order.customer", cast="JSON"),
        extraction("tags", "tags"),
        extraction("tier", "missing.tier", default_value="bronze"),
        extraction("null_defaulted", "nothing", default_value=0),
        extraction("nowhere", "missing.path"),
        extraction("name_as_number", "name", cast="NUMBER", default_value=1),
    ]

    response = shared.evaluate(node("document", branch("always"), extractions=extractions))

    assert verdict(response) == matched("always")
    assert extraction_statuses(response) == {
        "name": "EXTRACTED",
        "count_as_integer": "EXTRACTED",
        "price_as_number": "EXTRACTED",
        "flag_as_boolean": "EXTRACTED",
        "ratio_as_string": "EXTRACTED",
        "total_as_string": "EXTRACTED",
        "order_as_json": "EXTRACTED",
        "tags": "EXTRACTED",
        "tier": "DEFAULTED",
        "null_defaulted": "DEFAULTED",
        "nowhere": "MISSING",
        "name_as_number": "CAST_FAILED",
    }
    assert variables_of(response) == {
        "name": "Alice",
        "count_as_integer": 5,
        "price_as_number": 5,
        "flag_as_boolean": True,
        "ratio_as_string": "0.25",
        "total_as_string": "150.5",
        "order_as_json": '{"tier":"gold"}',
        "tags": ["new", "vip", "gift"],
        "tier": "bronze",
        "null_defaulted": 0,
    }
    results = {result.variable: result for result in response.extractions}
    assert not results["name_as_number"].HasField("value")
    assert results["name_as_number"].message
    assert [result.variable for result in response.extractions] == [
        item["variable"] for item in extractions
    ]


def test_required_extraction_failure_turns_a_match_into_extraction_failed(
    shared: Harness,
) -> None:
    response = shared.evaluate(
        node(
            "document",
            branch("always"),
            extractions=[
                extraction("name", "name", required=True),
                extraction("eta", "eta", required=True),
            ],
        )
    )

    assert verdict(response) == error("EXTRACTION_FAILED")
    assert "eta" in response.message
    assert variables_of(response) == {"name": "Alice"}
    assert response.http_status == 200


def test_required_cast_failure_is_extraction_failed_even_with_a_default(
    shared: Harness,
) -> None:
    response = shared.evaluate(
        node(
            "document",
            branch("always"),
            extractions=[extraction("n", "name", cast="INTEGER", default_value=0, required=True)],
        )
    )

    assert verdict(response) == error("EXTRACTION_FAILED")
    assert extraction_statuses(response) == {"n": "CAST_FAILED"}


def test_extraction_reads_a_4xx_json_body(harness: Harness) -> None:
    harness.register_orders()

    response = harness.evaluate(
        node(
            "order-status",
            branch("found", status("EQUALS", 200)),
            extractions=[extraction("problem", "error")],
        ),
        {"order_number": "Z-404"},
    )

    assert verdict(response) == NO_MATCH
    assert variables_of(response) == {"problem": "no such order"}


def test_extraction_on_an_empty_body_has_no_document(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/empty"))

    response = harness.evaluate(
        node(
            "api",
            branch("always"),
            extractions=[extraction("a", "a"), extraction("b", "b", default_value="d")],
        )
    )

    assert extraction_statuses(response) == {"a": "NO_DOCUMENT", "b": "DEFAULTED"}
    assert variables_of(response) == {"b": "d"}


def test_huge_integer_in_the_body_still_gets_an_answer(harness: Harness) -> None:
    harness.upstream.respond(
        "/big-number",
        body=b'{"n": 1' + b"0" * 400 + b"}",
        headers={"Content-Type": "application/json"},
    )
    harness.register("api", harness.upstream.url("/big-number"))

    response = harness.evaluate(node("api", branch("always"), extractions=[extraction("n", "n")]))

    assert pb.Outcome.Name(response.outcome) in ("OUTCOME_MATCHED", "OUTCOME_ERROR")


# ---------------------------------------------------------------------------------------------
# Explain
# ---------------------------------------------------------------------------------------------


def test_explanation_shows_every_condition_and_the_masked_request(harness: Harness) -> None:
    harness.register_orders()
    explained_node = node(
        "order-status",
        branch("cancelled", body("status", "EQUALS", "cancelled"), status("EQUALS", 200)),
        branch(
            "big-order",
            body("total", "GREATER_THAN", 100),
            header("Content-Type", "CONTAINS", "json"),
            body("eta_missing", "EXISTS"),
            combinator="ANY",
        ),
        branch("later", status("EQUALS", 200)),
    )

    response = harness.evaluate(explained_node, {"order_number": "A-10023"}, explain=True)

    assert verdict(response) == matched("big-order")
    explanation = response.explanation
    assert [(b.index, b.target, b.evaluated, b.matched) for b in explanation.branches] == [
        (0, "cancelled", True, False),
        (1, "big-order", True, True),
        (2, "later", False, False),
    ]
    assert list(explanation.branches[2].conditions) == []

    def described(item: pb.ConditionExplanation) -> tuple[Any, ...]:
        return (
            pb.SubjectKind.Name(item.subject.kind),
            item.subject.path,
            pb.Operator.Name(item.operator),
            json_format.MessageToDict(item.operand) if item.HasField("operand") else None,
            json_format.MessageToDict(item.subject_value),
            item.subject_present,
            item.result,
        )

    first, second = explanation.branches[0].conditions, explanation.branches[1].conditions
    assert [described(item) for item in first] == [
        ("SUBJECT_KIND_BODY", "status", "OPERATOR_EQUALS", "cancelled", "shipped", True, False),
        ("SUBJECT_KIND_STATUS", "", "OPERATOR_EQUALS", 200.0, 200.0, True, True),
    ]
    assert [described(item) for item in second] == [
        ("SUBJECT_KIND_BODY", "total", "OPERATOR_GREATER_THAN", 100.0, "149.90", True, True),
        (
            "SUBJECT_KIND_HEADER",
            "Content-Type",
            "OPERATOR_CONTAINS",
            "json",
            "application/json; charset=utf-8",
            True,
            True,
        ),
        ("SUBJECT_KIND_BODY", "eta_missing", "OPERATOR_EXISTS", None, None, False, False),
    ]
    assert first[0].note == "compared as strings"
    assert first[1].note == "compared as numbers"
    assert second[0].note == "compared as numbers"
    assert second[2].note  # says why the subject is absent

    request = explanation.request
    assert request.method == "GET"
    assert request.url == harness.upstream.url("/orders/A-10023")
    assert dict(request.headers) == {"Accept": "application/json", "X-API-Key": "***"}
    assert request.body == ""
    assert list(explanation.notes) == []


def test_explanation_masks_bearer_and_basic_credentials(harness: Harness, tmp_path: Path) -> None:
    secrets = tmp_path / "secrets"
    (secrets / "user").write_text("user-canary", encoding="utf-8")
    (secrets / "password").write_text("password-canary", encoding="utf-8")
    register_echo(harness, "/echo/bearer", auth={"bearer": {"token_secret": SECRET_NAME}})
    harness.register(
        "basic",
        harness.upstream.url("/echo/basic"),
        auth={"basic": {"username_secret": "user", "password_secret": "password"}},
    )

    bearer = harness.evaluate(ECHO_NODE, explain=True)
    basic = harness.evaluate(node("basic", branch("sent")), explain=True)

    assert bearer.explanation.request.headers["Authorization"] == "Bearer ***"
    assert basic.explanation.request.headers["Authorization"] == "Basic ***"
    assert (
        harness.upstream.last("/echo/bearer").header("Authorization") == f"Bearer {ORDER_API_KEY}"
    )
    assert harness.upstream.last("/echo/basic").header("Authorization").startswith("Basic ")
    for answer in (bearer, basic):
        for secret in (ORDER_API_KEY, "user-canary", "password-canary"):
            assert secret not in str(answer)


def test_no_explanation_unless_asked(harness: Harness) -> None:
    harness.register_orders()

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "A-10023"})

    assert not response.HasField("explanation")


# ---------------------------------------------------------------------------------------------
# Test mode
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("mode", "expected", "hits"),
    [
        (None, error("CONNECTOR_NOT_LIVE"), 0),
        ("PRODUCTION", error("CONNECTOR_NOT_LIVE"), 0),
        ("TEST", matched("always"), 1),
    ],
)
def test_draft_connector_runs_only_in_test_mode(
    harness: Harness, mode: str | None, expected: tuple[str, str, str], hits: int
) -> None:
    harness.register("draft", harness.upstream.url("/json"), status="CONNECTOR_STATUS_DRAFT")

    response = harness.evaluate(node("draft", branch("always")), mode=mode)

    assert verdict(response) == expected
    assert harness.upstream.hits("/json") == hits
    assert response.connector_version == 1


def test_disabled_connector_does_not_run_even_in_test_mode(harness: Harness) -> None:
    harness.register("off", harness.upstream.url("/json"), status="CONNECTOR_STATUS_DISABLED")

    response = harness.evaluate(node("off", branch("always")), mode="TEST")

    assert verdict(response) == error("CONNECTOR_NOT_LIVE")
    assert harness.upstream.hits() == 0


# ---------------------------------------------------------------------------------------------
# Malformed requests: INVALID_ARGUMENT naming the field, nothing sent
# ---------------------------------------------------------------------------------------------


def rpc_error(harness: Harness, request: pb.EvaluateNodeRequest) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as caught:
        harness.stub.EvaluateNode(request, timeout=RPC_TIMEOUT)
    return caught.value


def request_for(node_data: dict[str, Any]) -> pb.EvaluateNodeRequest:
    return json_format.ParseDict({"node": node_data}, pb.EvaluateNodeRequest())


def test_request_without_a_node_is_invalid_argument(shared: Harness) -> None:
    assert "node" in field_violations(rpc_error(shared, pb.EvaluateNodeRequest()))


@pytest.mark.parametrize(
    ("branches", "extractions", "field", "words"),
    [
        pytest.param(
            [branch("x", body("status ==", "EXISTS"))],
            [],
            "node.branches[0].conditions[0].subject.path",
            "JMESPath",
            id="bad-jmespath",
        ),
        pytest.param(
            [branch("x", body("status", "MATCHES", "(a"))],
            [],
            "node.branches[0].conditions[0].operand",
            "regular expression",
            id="bad-regex",
        ),
        pytest.param(
            [branch("x", body("status", "MATCHES", "(a)\\1"))],
            [],
            "node.branches[0].conditions[0].operand",
            "RE2",
            id="backreference-regex",
        ),
        pytest.param(
            [branch("x", status("STATUS_CLASS", "6xx"))],
            [],
            "node.branches[0].conditions[0].operand",
            "status class",
            id="bad-status-class",
        ),
        pytest.param(
            [],
            [extraction("e", "length(@, @)")],
            "node.extractions[0].path",
            "argument",
            id="bad-extraction-path",
        ),
        pytest.param(
            [],
            [extraction("e", "a", cast="INTEGER", default_value="five")],
            "node.extractions[0].default_value",
            "INTEGER",
            id="default-that-does-not-fit-its-cast",
        ),
        pytest.param(
            [],
            [extraction("1bad", "a")],
            "node.extractions[0].variable",
            "pattern",
            id="bad-variable-name",
        ),
    ],
)
def test_malformed_node_is_invalid_argument_naming_the_field(
    shared: Harness,
    branches: list[dict[str, Any]],
    extractions: list[dict[str, Any]],
    field: str,
    words: str,
) -> None:
    request = request_for(node("document", *branches, extractions=extractions))

    found = field_violations(rpc_error(shared, request))

    assert field in found, found
    assert words in found[field]
    assert shared.upstream.hits() == 0


def test_in_with_a_non_list_operand_is_invalid_argument(shared: Harness) -> None:
    request = request_for(node("document", branch("x", body("status", "IN", "shipped"))))

    found = field_violations(rpc_error(shared, request))

    fields = [field for field in found if field.startswith("node.branches[0].conditions[0]")]
    assert len(fields) == 1, found
    assert "must be a list for IN" in found[fields[0]]


def test_in_with_a_non_list_operand_names_the_operand_field(shared: Harness) -> None:
    request = request_for(node("document", branch("x", body("status", "IN", "shipped"))))

    assert "node.branches[0].conditions[0].operand" in field_violations(rpc_error(shared, request))


def test_duplicate_extraction_variable_is_invalid_argument(shared: Harness) -> None:
    request = request_for(
        node("document", extractions=[extraction("a", "x"), extraction("a", "y")])
    )

    found = field_violations(rpc_error(shared, request))

    assert any(
        field.startswith("node") and "'a' is already extracted by extraction 0" in text
        for field, text in found.items()
    ), found


def test_duplicate_extraction_variable_names_the_second_extraction(shared: Harness) -> None:
    request = request_for(
        node("document", extractions=[extraction("a", "x"), extraction("a", "y")])
    )

    assert "node.extractions[1].variable" in field_violations(rpc_error(shared, request))


def test_unknown_operator_number_is_invalid_argument(shared: Harness) -> None:
    request = request_for(node("document", branch("x", body("status", "EQUALS", "a"))))
    request.node.branches[0].conditions[0].operator = 99  # type: ignore[assignment]

    found = field_violations(rpc_error(shared, request))

    assert "node.branches[0].conditions[0].operator" in found


def test_unknown_evaluation_mode_is_invalid_argument(shared: Harness) -> None:
    request = request_for(node("document", branch("x")))
    request.mode = 42  # type: ignore[assignment]

    assert "mode" in field_violations(rpc_error(shared, request))


def test_every_bad_field_is_reported_at_once(shared: Harness) -> None:
    request = request_for(
        node(
            "document",
            branch("x", body("a ==", "EXISTS"), body("b", "MATCHES", "(")),
            extractions=[extraction("e", "c ==")],
        )
    )

    found = field_violations(rpc_error(shared, request))

    assert {
        "node.branches[0].conditions[0].subject.path",
        "node.branches[0].conditions[1].operand",
        "node.extractions[0].path",
    } <= set(found)


def test_a_malformed_node_does_not_poison_later_calls(shared: Harness) -> None:
    bad = request_for(node("document", branch("x", body("b", "MATCHES", "("))))
    rpc_error(shared, bad)
    rpc_error(shared, bad)  # refused again: a failed compile is never cached as a success

    response = shared.evaluate(node("document", branch("ok", body("count", "EQUALS", 5))))

    assert verdict(response) == matched("ok")


# ---------------------------------------------------------------------------------------------
# Response fields
# ---------------------------------------------------------------------------------------------


def test_response_reports_status_attempts_version_and_latency(harness: Harness) -> None:
    harness.register_orders()
    harness.register_orders()  # version 2

    response = harness.evaluate(WHERE_IS_MY_ORDER, {"order_number": "A-10023"})

    assert response.http_status == 200
    assert response.attempts == 1
    assert response.connector_version == 2
    assert response.upstream_latency.ToTimedelta() > timedelta(0)


def test_nothing_sent_reports_no_attempt_and_no_latency(harness: Harness) -> None:
    harness.register_orders()

    response = harness.evaluate(WHERE_IS_MY_ORDER, {})

    assert (response.http_status, response.attempts, response.connector_version) == (0, 0, 1)
    assert response.upstream_latency.ToTimedelta() == timedelta(0)


def test_replaced_connector_is_used_from_the_next_call(harness: Harness) -> None:
    harness.register("api", harness.upstream.url("/status/404"))
    first = harness.evaluate(node("api", STATUS_200))
    harness.register("api", harness.upstream.url("/status/200"))

    second = harness.evaluate(node("api", STATUS_200))

    assert (verdict(first), first.connector_version) == (NO_MATCH, 1)
    assert (verdict(second), second.connector_version) == (matched("ok"), 2)
