"""Answers stay well-formed whatever the input (issue 14, item 3), over the real wire.

Each case is a finding of the adversarial run; on the code before this suite it answered as the
first column says, and now as the second:

    finding                                            before                now
    JSON 40 objects deep extracted whole               INTERNAL at client    NO_DOCUMENT (depth 32)
    JMESPath that builds a value deeper than 32        INTERNAL at client    ANSWER_TOO_LARGE
    ExtractVariables `json` 33 objects deep, `@`       INTERNAL at client    INVALID_ARGUMENT
    connector timeout of 10^15 s                       INTERNAL              INVALID_ARGUMENT
                                                                             (connector.timeout)
    request bytes that are not protobuf                UNKNOWN, parser text  INVALID_ARGUMENT
    answer over max_message_bytes after the exchange   RESOURCE_EXHAUSTED    ANSWER_TOO_LARGE
    ExtractVariables answer over max_message_bytes     RESOURCE_EXHAUSTED    INVALID_ARGUMENT
    64 extractions of `@` of a 1 MB document           a 64 MB answer built  refused before it is
                                                       (726 MiB peak RSS)    built (values sized
                                                                             as extracted)
    ListConnectors' default page of large connectors   RESOURCE_EXHAUSTED    pages cut by bytes
    explain, 4,096 conditions x 4 KiB values (16 MiB)  ANSWER_TOO_LARGE      values cut to fit the
                                                       after the call        message limit, noted
    explain, a request rendered over the limit         ANSWER_TOO_LARGE      ANSWER_TOO_LARGE,
                                                       after the call        nothing sent
    ExtractVariables' limit refusals                   INVALID_REQUEST       ErrorInfo reasons
                                                       (all alike)           LIMIT_EXCEEDED,
                                                                             BUDGET_EXHAUSTED,
                                                                             ANSWER_TOO_LARGE
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.rpc import error_details_pb2
from grpc_status import rpc_status
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.documents import MAX_JSON_DEPTH
from tests.support.calls import RPC_TIMEOUT, field_violations, register, verdict
from tests.support.sidecars import InProcessSidecar
from tests.support.upstreams import Upstream

Factory = Callable[..., InProcessSidecar]
EVALUATE_METHOD = "/rulesidecar.v1.RulesSidecarService/EvaluateNode"


def nested_objects(levels: int) -> Any:
    """`levels` objects, one inside the other, around a string."""
    value: Any = "deep"
    for _ in range(levels):
        value = {"a": value}
    return value


def node_request(
    connector_id: str, extractions: list[dict[str, Any]], *, explain: bool = False
) -> pb.EvaluateNodeRequest:
    data = {
        "node": {
            "id": "hostile-node",
            "connector_id": connector_id,
            "branches": [
                {
                    "target": "ok",
                    "conditions": [
                        {
                            "subject": {"kind": "SUBJECT_KIND_STATUS"},
                            "operator": "OPERATOR_STATUS_CLASS",
                            "operand": "2xx",
                        }
                    ],
                }
            ],
            "else_target": "else",
            "error_target": "error",
            "extractions": extractions,
        },
        "explain": explain,
    }
    return json_format.ParseDict(data, pb.EvaluateNodeRequest())


def error_reason(error: grpc.RpcError) -> str:
    """The google.rpc.ErrorInfo reason of an error (exactly one ErrorInfo)."""
    status = rpc_status.from_call(error)
    assert status is not None, (error.code(), error.details())
    reasons = []
    for detail in status.details:
        info = error_details_pb2.ErrorInfo()
        if detail.Unpack(info):
            reasons.append(info.reason)
    assert len(reasons) == 1, status
    return reasons[0]


def evaluate(sidecar: InProcessSidecar, request: pb.EvaluateNodeRequest) -> pb.EvaluateNodeResponse:
    response: pb.EvaluateNodeResponse = sidecar.stub.EvaluateNode(request, timeout=RPC_TIMEOUT)
    return response


# ---------------------------------------------------------------------------------------------
# Depth
# ---------------------------------------------------------------------------------------------


def test_a_body_deeper_than_the_limit_is_not_a_document_and_the_answer_arrives(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    upstream.respond("/deep", json=nested_objects(40))
    register(sidecar.stub, "deep", upstream.url("/deep"))

    response = evaluate(sidecar, node_request("deep", [{"variable": "all", "path": "@"}]))

    assert verdict(response) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    assert pb.ExtractionStatus.Name(response.extractions[0].status) == (
        "EXTRACTION_STATUS_NO_DOCUMENT"
    )


def test_the_deepest_body_allowed_comes_back_whole(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    deepest = nested_objects(MAX_JSON_DEPTH - 1)  # the innermost string is the last level
    upstream.respond("/deepest", json=deepest)
    register(sidecar.stub, "deepest", upstream.url("/deepest"))

    response = evaluate(
        sidecar, node_request("deepest", [{"variable": "all", "path": "@"}], explain=True)
    )

    assert json_format.MessageToDict(response.extractions[0].value) == deepest
    assert verdict(response) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")


def test_a_value_jmespath_nests_deeper_than_the_limit_answers_answer_too_large(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    upstream.respond("/shallow", json=nested_objects(20))
    register(sidecar.stub, "shallow", upstream.url("/shallow"))
    wrapping = "{a:" * 20 + "@" + "}" * 20  # 20 more levels around a 21-level body

    response = evaluate(sidecar, node_request("shallow", [{"variable": "v", "path": wrapping}]))

    assert verdict(response) == ("OUTCOME_ERROR", "REASON_ANSWER_TOO_LARGE")
    assert response.target == "error"
    assert f"deeper than {MAX_JSON_DEPTH} levels" in response.message
    assert response.http_status == 200
    assert response.attempts == 1


def test_extract_variables_refuses_a_value_too_deep_to_answer(sidecar_factory: Factory) -> None:
    sidecar = sidecar_factory()
    request = pb.ExtractVariablesRequest(
        extractions=[pb.Extraction(variable="all", path="@")],
        json=json_format.ParseDict(nested_objects(33), pb.ExtractVariablesRequest().json),
    )

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)

    assert (
        f"deeper than {MAX_JSON_DEPTH} levels" in field_violations(caught.value)["extractions[0]"]
    )
    assert error_reason(caught.value) == "ANSWER_TOO_LARGE"  # EvaluateNode's reason for it


# ---------------------------------------------------------------------------------------------
# Ranges and malformed requests
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("seconds", "nanos"),
    [(10**15, 0), (-(10**15), 0), (1, 2_000_000_000), (2**63 - 1, 0)],
)
def test_a_duration_out_of_range_is_invalid_argument_naming_the_field(
    sidecar_factory: Factory, upstream: Upstream, seconds: int, nanos: int
) -> None:
    sidecar = sidecar_factory()
    connector = pb.Connector(
        id="slow",
        status=pb.CONNECTOR_STATUS_LIVE,
        url_template=upstream.url("/orders"),
    )
    connector.timeout.seconds = seconds
    connector.timeout.nanos = nanos

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.RegisterConnector(
            pb.RegisterConnectorRequest(connector=connector), timeout=RPC_TIMEOUT
        )

    assert "connector.timeout" in field_violations(caught.value)


@pytest.mark.parametrize("window", ["ttl", "stale_while_revalidate", "stale_if_error"])
def test_a_cache_duration_out_of_range_is_invalid_argument_naming_the_field(
    sidecar_factory: Factory, upstream: Upstream, window: str
) -> None:
    sidecar = sidecar_factory()
    connector = pb.Connector(
        id="cached", status=pb.CONNECTOR_STATUS_LIVE, url_template=upstream.url("/orders")
    )
    connector.cache.ttl.seconds = 60
    getattr(connector.cache, window).seconds = 10**15

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.RegisterConnector(
            pb.RegisterConnectorRequest(connector=connector), timeout=RPC_TIMEOUT
        )

    assert f"connector.cache.{window}" in field_violations(caught.value)


def test_a_negative_expected_version_on_delete_is_invalid_argument(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    sidecar = sidecar_factory()
    register(sidecar.stub, "kept", upstream.url("/orders"))

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.DeleteConnector(
            pb.DeleteConnectorRequest(id="kept", expected_version=-1), timeout=RPC_TIMEOUT
        )

    assert field_violations(caught.value) == {"expected_version": "must be >= 0"}


@pytest.mark.parametrize(
    "garbage",
    [
        b"\xff\xff\xff\xff",  # a field tag with no end
        b"\x0a\x10short",  # a length beyond the bytes
        b"\x0a\x02\xc3\x28",  # a string field that is not UTF-8
    ],
)
def test_bytes_that_are_not_protobuf_answer_invalid_argument_without_parser_text(
    sidecar_factory: Factory, garbage: bytes
) -> None:
    sidecar = sidecar_factory()
    raw = sidecar.channel.unary_unary(EVALUATE_METHOD)

    with pytest.raises(grpc.RpcError) as caught:
        raw(garbage, timeout=RPC_TIMEOUT)

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "request" in field_violations(caught.value)
    details = caught.value.details() or ""
    assert "Error parsing" not in details
    assert "DecodeError" not in details


# ---------------------------------------------------------------------------------------------
# The message limit
# ---------------------------------------------------------------------------------------------

SMALL_LIMIT = 64 * 1024


def test_an_answer_over_the_message_limit_is_an_error_with_its_reason(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    sidecar = sidecar_factory(max_message_bytes=SMALL_LIMIT)
    upstream.respond("/big", json={"text": "x" * 40_000})
    register(sidecar.stub, "big", upstream.url("/big"), max_response_bytes=100_000)
    extractions = [{"variable": "one", "path": "text"}, {"variable": "two", "path": "text"}]

    response = evaluate(sidecar, node_request("big", extractions))

    assert verdict(response) == ("OUTCOME_ERROR", "REASON_ANSWER_TOO_LARGE")
    assert response.target == "error"
    assert f"over the {SMALL_LIMIT}-byte gRPC message limit" in response.message
    assert (response.http_status, response.attempts) == (200, 1)


def test_an_answer_just_under_the_limit_still_carries_its_values(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    sidecar = sidecar_factory(max_message_bytes=SMALL_LIMIT)
    upstream.respond("/big", json={"text": "x" * 25_000})
    register(sidecar.stub, "big", upstream.url("/big"), max_response_bytes=100_000)

    response = evaluate(sidecar, node_request("big", [{"variable": "one", "path": "text"}]))

    assert verdict(response) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    assert response.variables.fields["one"].string_value == "x" * 25_000


def explained_node_request(
    connector_id: str, operands: list[Any], *, branches: int = 1
) -> pb.EvaluateNodeRequest:
    """Explain a node whose conditions (EQUALS each operand on body `v`) never hold, so that
    every condition of every branch is judged and explained."""
    conditions = [
        {
            "subject": {"kind": "SUBJECT_KIND_BODY", "path": "v"},
            "operator": "OPERATOR_EQUALS",
            "operand": operand,
        }
        for operand in operands
    ]
    data = {
        "node": {
            "connector_id": connector_id,
            "branches": [{"target": f"b{i}", "conditions": conditions} for i in range(branches)],
            "else_target": "else",
            "error_target": "error",
        },
        "explain": True,
    }
    return json_format.ParseDict(data, pb.EvaluateNodeRequest())


def test_explaining_4096_conditions_on_large_values_fits_the_message_limit(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    """4,096 subjects of 10 KB, each shown up to max_explain_value_bytes (4 KiB), made a 16 MiB
    explanation, refused as too large once the upstream had answered; each value is now held
    to what lets all of them fit the 4 MiB answer, and the notes say so."""
    sidecar = sidecar_factory()
    upstream.respond("/text", json={"v": "t" * 10_000})
    register(sidecar.stub, "text", upstream.url("/text"))

    response = evaluate(sidecar, explained_node_request("text", ["never"] * 64, branches=64))

    assert verdict(response) == ("OUTCOME_NO_MATCH", "REASON_NO_BRANCH_MATCHED")
    explained = [c for branch in response.explanation.branches for c in branch.conditions]
    assert len(explained) == 4096
    shown = {len(c.subject_value.string_value) for c in explained}
    assert len(shown) == 1
    each = shown.pop()
    print(f"each of the 4,096 values shown: {each} characters; answer {response.ByteSize()} bytes")
    assert 0 < each < 4096
    assert all("so that the values of every condition fit" in c.note for c in explained)
    assert response.ByteSize() <= 4 * 1024 * 1024


def test_few_conditions_keep_the_full_explain_value_cap(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    # The control: a node whose values fit at max_explain_value_bytes is shown that much.
    sidecar = sidecar_factory()
    upstream.respond("/text", json={"v": "t" * 10_000})
    register(sidecar.stub, "text", upstream.url("/text"))

    response = evaluate(sidecar, explained_node_request("text", ["never"] * 4))

    explained = response.explanation.branches[0].conditions
    assert [len(c.subject_value.string_value) for c in explained] == [4096] * 4
    assert all(c.note.endswith("(max_explain_value_bytes)") for c in explained)


def test_explaining_a_request_rendered_over_the_message_limit_sends_nothing(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    """With explain, the answer shows the rendered request: a body template that places a
    30 KB variable three times renders 90 KB, over a 64 KiB limit whatever the upstream says.
    That is known once the request is rendered, before it is sent, so it is not sent."""
    sidecar = sidecar_factory(max_message_bytes=SMALL_LIMIT)
    upstream.respond("/orders", json={"v": "short"})
    register(
        sidecar.stub,
        "tripled",
        upstream.url("/orders"),
        method="HTTP_METHOD_POST",
        body_template={"a": "{{note}}", "b": "{{note}}", "c": "{{note}}"},
    )
    request = explained_node_request("tripled", ["never"])
    request.variables.update({"note": "n" * 30_000})

    response = evaluate(sidecar, request)

    assert verdict(response) == ("OUTCOME_ERROR", "REASON_ANSWER_TOO_LARGE")
    assert response.target == "error"
    assert "over the 65536-byte gRPC message limit" in response.message
    assert "Nothing was sent" in response.message
    assert (response.attempts, response.http_status) == (0, 0)
    assert upstream.hits("/orders") == 0
    request.explain = False  # the control: without explain the request is sent and judged
    assert verdict(evaluate(sidecar, request)) == ("OUTCOME_NO_MATCH", "REASON_NO_BRANCH_MATCHED")
    assert upstream.hits("/orders") == 1


def test_extract_variables_over_the_message_limit_is_invalid_argument(
    sidecar_factory: Factory,
) -> None:
    sidecar = sidecar_factory(max_message_bytes=SMALL_LIMIT)
    request = pb.ExtractVariablesRequest(
        extractions=[pb.Extraction(variable=f"v{n}", path="text") for n in range(3)],
        raw_json=json.dumps({"text": "y" * 20_000}).encode(),
    )

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)

    assert "message limit" in field_violations(caught.value)["extractions"]
    assert error_reason(caught.value) == "ANSWER_TOO_LARGE"


def test_extract_variables_copying_a_document_64_times_is_refused_before_the_answer_is_built(
    sidecar_factory: Factory,
) -> None:
    """Before: the 64 MB answer was built (726 MiB of peak RSS in the hostile bench, seconds on
    the event loop) only to be measured and refused. Now the values' sizes, measured as they
    were extracted, refuse it first."""
    sidecar = sidecar_factory()
    request = pb.ExtractVariablesRequest(
        extractions=[pb.Extraction(variable=f"copy{n}", path="@") for n in range(64)],
        raw_json=json.dumps({"items": ["x" * 100] * 10_000}).encode(),
    )

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)

    problem = field_violations(caught.value)["extractions"]
    assert "the extracted values alone would take at least" in problem
    assert "max_message_bytes" in problem
    assert error_reason(caught.value) == "ANSWER_TOO_LARGE"


def test_a_large_answer_under_the_limit_arrives_whole(sidecar_factory: Factory) -> None:
    """An answer of ~2 MB (built in a worker thread, over OFF_LOOP_ANSWER_BYTES) is whole."""
    sidecar = sidecar_factory()
    document = {"items": [f"{n:06d}" * 16 for n in range(10_000)]}
    request = pb.ExtractVariablesRequest(
        extractions=[pb.Extraction(variable="all", path="items")],
        raw_json=json.dumps(document).encode(),
    )

    response = sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)

    assert json_format.MessageToDict(response.variables)["all"] == document["items"]
    assert response.extractions[0].value.list_value.values[-1].string_value == "009999" * 16


def test_list_connectors_pages_large_connectors_by_bytes(
    sidecar_factory: Factory, upstream: Upstream
) -> None:
    sidecar = sidecar_factory(max_message_bytes=SMALL_LIMIT)
    template = {f"field{n}": "z" * 1000 for n in range(25)}  # ~25 KiB a connector
    for index in range(5):
        register(
            sidecar.stub,
            f"large-{index}",
            upstream.url("/orders"),
            method="HTTP_METHOD_POST",
            body_template=template,
        )

    seen: list[str] = []
    token = ""
    pages = 0
    while True:
        page = sidecar.stub.ListConnectors(
            pb.ListConnectorsRequest(page_token=token), timeout=RPC_TIMEOUT
        )
        pages += 1
        assert page.ByteSize() <= SMALL_LIMIT
        seen += [connector.id for connector in page.connectors]
        token = page.next_page_token
        if not token:
            break

    assert seen == [f"large-{index}" for index in range(5)]
    assert pages >= 3  # at most two ~25 KiB connectors fit in 64 KiB


# ---------------------------------------------------------------------------------------------
# ExtractVariables' limits: a reason a program can switch on
# ---------------------------------------------------------------------------------------------

DOUBLING_EXPRESSION = "|".join(["join('',[@,@])"] * 23)  # 16 characters -> 134 MB


def test_extract_variables_over_a_work_limit_says_limit_exceeded(
    sidecar_factory: Factory,
) -> None:
    sidecar = sidecar_factory()
    request = pb.ExtractVariablesRequest(raw_json=b'{"v": "0123456789abcdef"}')
    request.extractions.add(variable="grown", path=f"v | {DOUBLING_EXPRESSION}")

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "LIMIT_EXCEEDED"
    assert "max_query_result_bytes" in field_violations(caught.value)["extractions"]


def test_extract_variables_out_of_time_says_budget_exhausted(sidecar_factory: Factory) -> None:
    # A microsecond of budget: 20,000 projected elements spend it long before they are done.
    sidecar = sidecar_factory(max_evaluation_seconds=1e-6)
    request = pb.ExtractVariablesRequest(
        raw_json=json.dumps({"items": [{"x": n} for n in range(20_000)]}).encode()
    )
    request.extractions.add(variable="xs", path="items[*].x")

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)

    assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert error_reason(caught.value) == "BUDGET_EXHAUSTED"
    assert "time budget" in field_violations(caught.value)["extractions"]


def test_an_invalid_extraction_still_says_invalid_request(sidecar_factory: Factory) -> None:
    # The control: a request that is wrong in itself keeps the code's own reason.
    sidecar = sidecar_factory()
    request = pb.ExtractVariablesRequest(raw_json=b"{}")
    request.extractions.add(variable="bad", path="items[")

    with pytest.raises(grpc.RpcError) as caught:
        sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)

    assert error_reason(caught.value) == "INVALID_REQUEST"
