"""ExtractVariables over the real wire: extraction rules applied to a document the caller has.

ExtractVariables keeps no state, so the whole module shares one in-process sidecar.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import grpc
import pytest
from google.protobuf import json_format, struct_pb2
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.documents import MAX_JSON_DEPTH
from tests.support.calls import RPC_TIMEOUT, field_violations
from tests.support.sidecars import InProcessSidecar

ORDER = {
    "order": {
        "number": "A-10023",
        "status": "shipped",
        "total": "149.90",
        "items": [{"sku": "a", "qty": 1}, {"sku": "b", "qty": 2}],
        "gift": "TRUE",
        "eta": None,
        "count": 5,
    }
}


@pytest.fixture(scope="module")
def sidecar(module_sidecar_factory: Callable[..., InProcessSidecar]) -> InProcessSidecar:
    return module_sidecar_factory()


def extraction(name: str, path: str, *, cast: str | None = None, **fields: Any) -> dict[str, Any]:
    data: dict[str, Any] = {"variable": name, "path": path, **fields}
    if cast:
        data["cast"] = f"CAST_TYPE_{cast}"
    return data


def request_with(
    extractions: list[dict[str, Any]], *, document: Any = None, raw_json: bytes | None = None
) -> pb.ExtractVariablesRequest:
    request = json_format.ParseDict({"extractions": extractions}, pb.ExtractVariablesRequest())
    if raw_json is not None:
        request.raw_json = raw_json
    elif document is not None:
        request.json.CopyFrom(json_format.ParseDict(document, struct_pb2.Value()))
    return request


def extract(
    sidecar: InProcessSidecar, request: pb.ExtractVariablesRequest
) -> pb.ExtractVariablesResponse:
    response: pb.ExtractVariablesResponse = sidecar.stub.ExtractVariables(
        request, timeout=RPC_TIMEOUT
    )
    return response


def results_of(response: pb.ExtractVariablesResponse) -> list[tuple[str, str, Any]]:
    """(variable, status without prefix, value or None) per extraction, in order."""
    return [
        (
            result.variable,
            pb.ExtractionStatus.Name(result.status).removeprefix("EXTRACTION_STATUS_"),
            json_format.MessageToDict(result.value) if result.HasField("value") else None,
        )
        for result in response.extractions
    ]


def violations(sidecar: InProcessSidecar, request: pb.ExtractVariablesRequest) -> dict[str, str]:
    """field -> description, from the INVALID_ARGUMENT the request must get."""
    with pytest.raises(grpc.RpcError) as caught:
        extract(sidecar, request)
    return field_violations(caught.value)


# ---------------------------------------------------------------------------------------------
# Documents
# ---------------------------------------------------------------------------------------------

STATUS_AND_TOTAL = [
    extraction("order_status", "order.status", required=True),
    extraction("total", "order.total", cast="NUMBER"),
    extraction("quantities", "order.items[*].qty"),
]


def test_json_value_document_is_extracted(sidecar: InProcessSidecar) -> None:
    response = extract(sidecar, request_with(STATUS_AND_TOTAL, document=ORDER))

    assert json_format.MessageToDict(response.variables) == {
        "order_status": "shipped",
        "total": 149.9,
        "quantities": [1.0, 2.0],
    }
    assert [status for _, status, _ in results_of(response)] == ["EXTRACTED"] * 3
    assert response.complete is True


def test_raw_json_document_gives_the_same_answer_as_a_json_value(
    sidecar: InProcessSidecar,
) -> None:
    from_value = extract(sidecar, request_with(STATUS_AND_TOTAL, document=ORDER))
    from_bytes = extract(
        sidecar, request_with(STATUS_AND_TOTAL, raw_json=json.dumps(ORDER).encode())
    )

    assert from_bytes == from_value


def test_raw_json_may_be_any_json_value(sidecar: InProcessSidecar) -> None:
    response = extract(
        sidecar,
        request_with([extraction("first", "[0]"), extraction("whole", "@")], raw_json=b"[7, 8]"),
    )

    assert results_of(response) == [("first", "EXTRACTED", 7.0), ("whole", "EXTRACTED", [7.0, 8.0])]


@pytest.mark.parametrize(
    "raw_json",
    [b"{not json", b"", b'{"a": 1', b"\xff\xfe{}", b"[1, 2,]"],
    ids=["garbage", "empty", "truncated", "not-utf8", "trailing-comma"],
)
def test_invalid_raw_json_is_invalid_argument_on_raw_json(
    sidecar: InProcessSidecar, raw_json: bytes
) -> None:
    request = request_with([extraction("a", "a")], raw_json=raw_json)

    assert "raw_json" in violations(sidecar, request)


@pytest.mark.parametrize("raw_json", [b'{"n": NaN}', b'{"n": Infinity}'])
def test_raw_json_with_nan_or_infinity_is_invalid_argument(
    sidecar: InProcessSidecar, raw_json: bytes
) -> None:
    request = request_with([extraction("n", "n")], raw_json=raw_json)

    assert "raw_json" in violations(sidecar, request)


def test_raw_json_nested_deeper_than_the_engine_walks_is_invalid_argument(
    sidecar: InProcessSidecar,
) -> None:
    # The bounds an upstream body gets in EvaluateNode apply to raw_json too (one parser).
    deep = b"[" * (MAX_JSON_DEPTH + 1) + b"]" * (MAX_JSON_DEPTH + 1)
    request = request_with([extraction("a", "[0]")], raw_json=deep)

    assert violations(sidecar, request) == {
        "raw_json": f"nests deeper than {MAX_JSON_DEPTH} levels"
    }


def test_json_value_with_nan_is_invalid_argument_on_json(sidecar: InProcessSidecar) -> None:
    request = request_with([extraction("n", "n")])
    request.json.struct_value.fields["n"].number_value = float("nan")

    assert "json" in violations(sidecar, request)


def test_json_value_with_nan_where_no_path_looks_is_still_invalid_argument_on_json(
    sidecar: InProcessSidecar,
) -> None:
    # Plain paths read only the fields they start at; the rest is still checked.
    request = request_with([extraction("status", "order.status")], document=ORDER)
    request.json.struct_value.fields["elsewhere"].number_value = float("inf")

    assert "json" in violations(sidecar, request)


def test_plain_paths_and_expressions_find_the_same_in_one_document(
    sidecar: InProcessSidecar,
) -> None:
    # Plain paths read their roots alone; any other expression reads the whole document.
    plain = [extraction("status", "order.status"), extraction("count", "order.count")]
    expressions = [extraction("status", "order.status"), extraction("count", "order.*.count")]

    by_plain = extract(sidecar, request_with(plain, document=ORDER))
    by_expression = extract(sidecar, request_with(expressions, document=ORDER))

    assert json_format.MessageToDict(by_plain.variables) == {"status": "shipped", "count": 5}
    assert json_format.MessageToDict(by_expression.variables)["status"] == "shipped"


def test_request_without_a_document_is_invalid_argument_on_document(
    sidecar: InProcessSidecar,
) -> None:
    request = request_with([extraction("a", "a")])

    assert "document" in violations(sidecar, request)


def test_huge_integer_in_raw_json_gets_an_answer(sidecar: InProcessSidecar) -> None:
    request = request_with([extraction("n", "n")], raw_json=b'{"n": 1' + b"0" * 400 + b"}")

    response = extract(sidecar, request)

    assert len(response.extractions) == 1


# ---------------------------------------------------------------------------------------------
# Statuses, casts and defaults
# ---------------------------------------------------------------------------------------------


CAST_ROWS = [
    (extraction("v", "order.status"), "EXTRACTED", "shipped"),
    (extraction("v", "order.count"), "EXTRACTED", 5.0),
    (extraction("v", "order.total", cast="NUMBER"), "EXTRACTED", 149.9),
    (extraction("v", "order.count", cast="STRING"), "EXTRACTED", "5"),
    (extraction("v", "order.total", cast="INTEGER"), "CAST_FAILED", None),
    (extraction("v", "order.count", cast="INTEGER"), "EXTRACTED", 5.0),
    (extraction("v", "order.gift", cast="BOOLEAN"), "EXTRACTED", True),
    (extraction("v", "order.status", cast="BOOLEAN"), "CAST_FAILED", None),
    (extraction("v", "order.items[*].qty", cast="JSON"), "EXTRACTED", "[1,2]"),
    (extraction("v", "order.status", cast="JSON"), "EXTRACTED", '"shipped"'),
    (extraction("v", "order.items[*].sku", cast="STRING"), "EXTRACTED", '["a","b"]'),
    (extraction("v", "order.eta"), "MISSING", None),
    (extraction("v", "order.eta", default_value="soon"), "DEFAULTED", "soon"),
    (extraction("v", "order.nope", default_value=3, cast="STRING"), "DEFAULTED", "3"),
    (extraction("v", "order.status", cast="NUMBER", default_value=0), "CAST_FAILED", None),
    (extraction("v", "length(order.items)"), "EXTRACTED", 2.0),
    (extraction("v", "order.items[?qty > `1`].sku | [0]"), "EXTRACTED", "b"),
]


@pytest.mark.parametrize(
    ("spec", "status", "value"),
    CAST_ROWS,
    ids=[f"{spec['path']}-{spec.get('cast', 'as-is')}-{status}" for spec, status, _ in CAST_ROWS],
)
def test_extraction_status_cast_and_default(
    sidecar: InProcessSidecar, spec: dict[str, Any], status: str, value: Any
) -> None:
    response = extract(sidecar, request_with([spec], document=ORDER))

    assert results_of(response) == [("v", status, value)]
    variables = json_format.MessageToDict(response.variables)
    assert variables == ({"v": value} if value is not None else {})


def test_json_cast_of_an_object_is_compact_json_text(sidecar: InProcessSidecar) -> None:
    spec = extraction("v", "order.items[0]", cast="JSON")

    response = extract(sidecar, request_with([spec], document=ORDER))

    text = response.extractions[0].value.string_value
    assert json.loads(text) == {"sku": "a", "qty": 1}
    assert " " not in text


def test_failures_carry_a_message_and_the_required_flag(sidecar: InProcessSidecar) -> None:
    response = extract(
        sidecar,
        request_with(
            [
                extraction("a", "order.eta", required=True),
                extraction("b", "order.status", cast="INTEGER"),
            ],
            document=ORDER,
        ),
    )

    first, second = response.extractions
    assert (first.required, second.required) == (True, False)
    assert "order.eta" in first.message
    assert second.message
    assert not first.HasField("value")


# ---------------------------------------------------------------------------------------------
# The complete flag
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extractions", "complete"),
    [
        ([], True),
        ([extraction("a", "order.status", required=True)], True),
        ([extraction("a", "order.eta", required=True)], False),
        ([extraction("a", "order.eta", required=True, default_value="x")], True),
        ([extraction("a", "order.status", required=True, cast="INTEGER")], False),
        ([extraction("a", "order.eta")], True),
        ([extraction("a", "order.status", required=True), extraction("b", "order.eta")], True),
    ],
    ids=[
        "nothing-to-extract",
        "required-found",
        "required-missing",
        "required-defaulted",
        "required-cast-failed",
        "optional-missing",
        "optional-missing-next-to-required-found",
    ],
)
def test_complete_says_whether_every_required_extraction_succeeded(
    sidecar: InProcessSidecar, extractions: list[dict[str, Any]], complete: bool
) -> None:
    response = extract(sidecar, request_with(extractions, document=ORDER))

    assert response.complete is complete


# ---------------------------------------------------------------------------------------------
# Malformed extractions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("extractions", "field"),
    [
        (
            [
                extraction("a", "order.status =="),
            ],
            "extractions[0].path",
        ),
        ([extraction("a", "a"), extraction("b", "nope(@)")], "extractions[1].path"),
        (
            [extraction("a", "a", cast="INTEGER", default_value="five")],
            "extractions[0].default_value",
        ),
        ([extraction("1a", "a")], "extractions[0].variable"),
        ([extraction("a", "")], "extractions[0].path"),
    ],
    ids=["bad-jmespath", "unknown-function", "default-does-not-fit", "bad-name", "empty-path"],
)
def test_malformed_extraction_is_invalid_argument_naming_the_field(
    sidecar: InProcessSidecar, extractions: list[dict[str, Any]], field: str
) -> None:
    found = violations(sidecar, request_with(extractions, document=ORDER))

    assert field in found, found


def test_unknown_cast_number_is_invalid_argument(sidecar: InProcessSidecar) -> None:
    request = request_with([extraction("a", "a")], document=ORDER)
    request.extractions[0].cast = 77  # type: ignore[assignment]

    assert "extractions[0].cast" in violations(sidecar, request)
