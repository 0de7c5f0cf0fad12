"""Event-loop stalls on hostile input (issue 14, item 7: no stall above 50 ms).

The loop shares one interpreter with the judging and translating threads, so one C call that
holds the GIL holds the loop for as long, whatever thread makes it. bench/hostile.py measured
the causes (probes of the health Check every 10 ms while the hostile set runs); each is a case
here, decided by what the sidecar holds or answers, never by a duration:

    cause (measured)                                        now
    a full garbage collection walks every object alive:     the start-up heap is frozen out of
      20-45 ms for a started sidecar, 100-300 ms with        its sight; an IN operand compiles
      3.5 MiB nodes compiled (one object per IN element)     to no object per element
    ... and every element of every list cached nodes        operands and default values are
      keep: 200-800 ms with 18 nodes of 99,000 strings       kept `frozen` (tuples)
    a pure-Python judging thread keeps the GIL 5 ms per     1 ms (SWITCH_INTERVAL_SECONDS)
      hand-over; a health check waits for several
    the model validates a node in one call: 230 ms for an   operands and default values hold at
      operand of a million empty lists (a 4 MiB message)    most max_operand_values (100,000)
                                                            JSON values, counted as read, before
    a parser reads a document in one call: 0.6-3.6 s for    the values are counted before any
      a 4 MiB body (or raw_json) of empty lists             parser sees it, in short slices
"""

from __future__ import annotations

import gc
import json
import random
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from pydantic import BaseModel, Field
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.api import wire
from sidecar.core import documents
from sidecar.core.engine import compile_node
from sidecar.core.model import Node
from sidecar.core.model.node import MAX_EXTRACTIONS, Extraction
from sidecar.errors import InvalidArgumentError
from sidecar.server import SWITCH_INTERVAL_SECONDS
from tests.support.calls import RPC_TIMEOUT
from tests.support.conditions import condition, on_the_wire
from tests.support.sidecars import InProcessSidecar

REPO = Path(__file__).resolve().parent.parent.parent
# Containers the collector never walks: what the count below does not follow.
_NOT_DATA = (type, types.ModuleType, types.FunctionType, types.CodeType, types.BuiltinFunctionType)


def tracked_objects(root: Any) -> int:
    """Objects the garbage collector tracks among those reachable from `root` (its data: not
    following into classes, modules or functions, which the process holds anyway)."""
    return len(_tracked(root))


def walked_references(root: Any) -> int:
    """References a full collection follows from the tracked objects reachable from `root`: a
    list of 99,000 strings is one object but 99,000 references, each a memory read."""
    return sum(len(gc.get_referents(item)) for item in _tracked(root))


def _tracked(root: Any) -> list[Any]:
    gc.collect()  # tuples and dicts of scalars are untracked by a collection that visits them
    gc.collect()  # (a tuple of such tuples by the next one)
    seen: dict[int, Any] = {}
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or not gc.is_tracked(item) or isinstance(item, _NOT_DATA):
            continue
        seen[id(item)] = item
        stack.extend(gc.get_referents(item))
    return list(seen.values())


def in_node(elements: list[Any]) -> Node:
    return Node.model_validate(
        {
            "connector_id": "hostile",
            "branches": [{"target": "in", "conditions": [condition("IN", elements)]}],
            "else_target": "else",
        }
    )


def test_an_in_operand_compiles_to_no_object_per_element() -> None:
    """Before: one `_Operand` per element (20,000 here, 120,000 in the bench's 3.5 MiB node),
    each walked by every full collection."""
    small = tracked_objects(compile_node(in_node([f"{n:08d}" for n in range(10)])))
    large = tracked_objects(compile_node(in_node([f"{n:08d}" for n in range(20_000)])))
    print(f"tracked objects: {small} with 10 elements, {large} with 20,000")
    assert large - small < 100


@pytest.mark.parametrize(
    ("operator", "extraction_default"),
    [("IN", None), ("EQUALS", None), ("EXISTS", "list"), ("EXISTS", "object")],
)
def test_a_compiled_node_keeps_no_list_a_collection_walks_item_by_item(
    operator: str, extraction_default: str | None
) -> None:
    """Before: the node's operand (and default values) stayed lists in the compiled form the
    cache keeps, and every full collection read each element: 18 cached 3.5 MiB nodes made one
    take 17 ms on a quiet machine, the bench's nodes case stalled the loop 200-800 ms."""

    def walked(size: int) -> int:
        items = [f"{n:08d}" for n in range(size)]
        data: dict[str, Any] = {
            "connector_id": "hostile",
            "branches": [
                {
                    "target": "t",
                    "conditions": [
                        condition(operator) if operator == "EXISTS" else condition(operator, items)
                    ],
                }
            ],
            "else_target": "else",
        }
        if extraction_default is not None:
            default = items if extraction_default == "list" else {"items": items}
            data["extractions"] = [{"variable": "v", "path": "v", "default_value": default}]
        return walked_references(compile_node(Node.model_validate(data)))

    small, large = walked(10), walked(20_000)
    print(f"references walked: {small} with 10 items, {large} with 20,000")
    assert large - small < 100


def test_a_default_kept_frozen_is_answered_as_plain_json() -> None:
    """The compiled form keeps a list default as a tuple; the caller still reads a list."""
    node = Node.model_validate(
        {
            "connector_id": "c",
            "branches": [],
            "else_target": "else",
            "extractions": [
                {"variable": "v", "path": "absent", "default_value": {"a": [1, ["x"]]}}
            ],
        }
    )
    variables, results = compile_node(node).extractions.apply(None, has_document=False)
    assert variables == {"v": {"a": [1, ["x"]]}}
    assert type(variables["v"]["a"]) is list
    assert type(results[0].value["a"][1]) is list


def test_a_started_sidecar_leaves_the_collector_nothing_of_its_start_to_walk() -> None:
    """Before: every full collection walked the ~75,000 objects of the start (modules, settings,
    the registry). In a process of its own: freezing is process-wide."""
    script = textwrap.dedent(
        """
        import gc, sys
        import sidecar.server
        gc.collect()
        before = len(gc.get_objects(generation=2))
        sidecar.server.share_the_interpreter()
        gc.collect()
        print(before, len(gc.get_objects(generation=2)), sys.getswitchinterval())
        """
    )
    answer = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True, timeout=120
    )
    before, after, interval = answer.stdout.split()
    print(f"objects a full collection walks: {before} before, {after} after")
    assert int(before) > 10_000
    assert int(after) < 1_000
    assert float(interval) == SWITCH_INTERVAL_SECONDS < sys.getswitchinterval()


def in_message(elements: int, *, kind: str = "list") -> pb.Node:
    """A node whose one condition is IN over `elements` empty lists (or short strings): the
    operand holds `elements + 1` JSON values."""
    message = json_format.ParseDict(
        {
            "connector_id": "absent",
            "branches": [{"target": "t", "conditions": [on_the_wire(condition("IN", []))]}],
            "else_target": "else",
            "error_target": "error",
        },
        pb.Node(),
    )
    values = message.branches[0].conditions[0].operand.list_value.values
    for n in range(elements):
        if kind == "list":
            values.add().list_value.SetInParent()
        else:
            values.add().string_value = f"{n:08d}"
    return message


def refusal(call: Any, request: Any) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as raised:
        call(request, timeout=RPC_TIMEOUT * 4)
    return raised.value


def test_an_operand_of_too_many_values_is_refused_before_validation(
    running_sidecar: InProcessSidecar,
) -> None:
    """Before: 150,000 empty lists (600 KB) were validated (one 35-230 ms call holding the
    loop) and evaluated; now INVALID_ARGUMENT names the operand and the setting."""
    error = refusal(
        running_sidecar.stub.EvaluateNode, pb.EvaluateNodeRequest(node=in_message(150_000))
    )
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "node.branches[0].conditions[0].operand" in details
    assert "max_operand_values" in details


def test_operands_up_to_the_limit_are_evaluated(running_sidecar: InProcessSidecar) -> None:
    """The list itself and its 99,999 elements: 100,000 values, the default limit."""
    answer = running_sidecar.stub.EvaluateNode(
        pb.EvaluateNodeRequest(node=in_message(99_999, kind="string")), timeout=RPC_TIMEOUT * 4
    )
    assert answer.outcome == pb.OUTCOME_ERROR
    assert answer.reason == pb.REASON_CONNECTOR_NOT_FOUND  # validated, compiled and evaluated


def test_the_limit_counts_every_operand_and_default_value_of_a_node(
    sidecar_factory: Any,
) -> None:
    """max_operand_values is a setting; the count is over the whole node, so 20 operands of
    60 values each (1,200) pass a limit of 1,000 nowhere but in total."""
    sidecar = sidecar_factory(max_operand_values=1000)
    message = in_message(0)
    conditions = message.branches[0].conditions
    for _ in range(19):
        conditions.add().CopyFrom(conditions[0])
    for item in conditions:
        for n in range(59):
            item.operand.list_value.values.add().string_value = str(n)
    error = refusal(sidecar.stub.EvaluateNode, pb.EvaluateNodeRequest(node=message))
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "node.branches[0].conditions[16].operand" in (error.details() or "")

    del conditions[16:]  # 16 x 60 = 960 values; an extraction's default value adds 41
    message.extractions.add(variable="v", path="v").default_value.list_value.extend(range(40))
    error = refusal(sidecar.stub.EvaluateNode, pb.EvaluateNodeRequest(node=message))
    assert "node.extractions[0].default_value" in (error.details() or "")


def test_extract_variables_default_values_are_counted_too(sidecar_factory: Any) -> None:
    sidecar = sidecar_factory(max_operand_values=1000)
    request = pb.ExtractVariablesRequest(raw_json=json.dumps({"v": 1}).encode())
    extraction = request.extractions.add(variable="v", path="v")
    extraction.default_value.list_value.extend(range(1000))
    error = refusal(sidecar.stub.ExtractVariables, request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "extractions[0].default_value" in details
    assert "max_operand_values" in details


def _random_condition(rng: random.Random) -> dict[str, Any]:
    """A condition on the wire, valid or not in any of its fields."""
    kind = rng.choice(["STATUS", "BODY", "HEADER", "VARIABLE"])
    path = rng.choice(["", "v", "a.b[0]", "order..id", "x" * 1100, "to_string(@)"])
    data: dict[str, Any] = {
        "subject": {"kind": f"SUBJECT_KIND_{kind}", "path": path},
        "operator": rng.choice([*pb.Operator.keys()[1:], 99]),
    }
    operand = rng.choice(
        [
            *(None, "2xx", "abc", 5, 1.5, True, [1, 2], [3, 1], ["a", {"b": [None]}], {"k": "v"}),
            *([], [1, 2, 3], [[1], [2], [3]], list(range(70)), [{"a": 1}], [1, [2]], {}),
        ]
    )
    if operand is not None:
        data["operand"] = operand
    if rng.random() < 0.3:
        data["quantifier"] = rng.choice([*pb.Quantifier.keys()[1:], 7])
    if rng.random() < 0.2:
        data["ignoreCase"] = True
    return data


_FITTING = [
    ("EQUALS", "abc"),
    ("NOT_EQUALS", 5),
    ("GREATER_THAN", 1.5),
    ("CONTAINS", "b"),
    ("IN", ["a", {"b": [None, 2]}]),
    ("NOT_IN", [1, 2]),
    ("BETWEEN", [1, 3]),
    ("MATCHES", "^a+$"),
    ("EXISTS", None),
    ("IS_EMPTY", None),
    ("IN", [f"s{n}" for n in range(300)]),
    ("IN", [[1, 2], [3]]),
    ("EQUALS", {"a": [1, 2, 3]}),
    ("NOT_EQUALS", []),
]


def _valid_node(rng: random.Random) -> pb.Node:
    """A node valid in every field, its conditions drawn from `_FITTING`."""
    conditions = []
    for _ in range(rng.randrange(1, 5)):
        operator, operand = rng.choice(_FITTING)
        data: dict[str, Any] = {
            "subject": {
                "kind": rng.choice(["SUBJECT_KIND_BODY", "SUBJECT_KIND_VARIABLE"]),
                "path": "v",
            },
            "operator": f"OPERATOR_{operator}",
        }
        if operand is not None:
            data["operand"] = operand
        if rng.random() < 0.3:
            data["quantifier"] = rng.choice(pb.Quantifier.keys()[1:])
        conditions.append(data)
    return json_format.ParseDict(
        {
            "connectorId": "c",
            "branches": [{"target": "t", "combinator": "COMBINATOR_ANY", "conditions": conditions}],
            "extractions": [{"variable": "ok", "path": "v", "defaultValue": [1, {"a": "b"}]}],
        },
        pb.Node(),
    )


def _random_node(rng: random.Random) -> pb.Node:
    branches = [
        {
            "target": rng.choice(["t", "", "x" * 300]),
            "combinator": rng.choice([*pb.Combinator.keys(), 9]),
            "conditions": [_random_condition(rng) for _ in range(rng.randrange(4))],
        }
        for _ in range(rng.randrange(4))
    ]
    extractions = [
        {
            "variable": rng.choice(["ok", "9bad", ""]),
            "path": rng.choice(["v", "", "a["]),
            **rng.choice([{}, {"defaultValue": "d"}, {"defaultValue": [1, {"a": ["b"]}]}]),
        }
        for _ in range(rng.randrange(3))
    ]
    data = {
        "id": rng.choice(["", "n", "i" * 300]),
        "connectorId": rng.choice(["c", "", "c" * 70]),
        "branches": branches,
        "elseTarget": "else",
        "errorTarget": rng.choice(["error", "e" * 300]),
        "extractions": extractions,
    }
    return json_format.ParseDict(data, pb.Node())


def _node_corpus() -> list[pb.Node]:
    """The clients' vectors' nodes, 600 random ones (most invalid somewhere), 200 valid ones,
    and lists just over their length limits (64 branches, 64 conditions) with valid items."""
    vectors = json.loads((REPO / "clients" / "testdata" / "vectors.json").read_text())["cases"]
    corpus = [json_format.ParseDict(case["node"], pb.Node()) for case in vectors]
    rng = random.Random(14)
    corpus += [_random_node(rng) for _ in range(600)]
    corpus += [_valid_node(rng) for _ in range(200)]
    exists = {"subject": {"kind": "SUBJECT_KIND_STATUS"}, "operator": "OPERATOR_EXISTS"}
    for branches, conditions in ((65, 1), (1, 65), (64, 64)):
        wide = {"target": "t", "conditions": [exists] * conditions}
        corpus.append(
            json_format.ParseDict({"connectorId": "c", "branches": [wide] * branches}, pb.Node())
        )
    for count in (MAX_EXTRACTIONS, MAX_EXTRACTIONS + 1):
        many = [{"variable": f"v{n}", "path": "v", "defaultValue": [n]} for n in range(count)]
        corpus.append(json_format.ParseDict({"connectorId": "c", "extractions": many}, pb.Node()))
    return corpus


def test_a_node_validated_in_pieces_is_the_node_validated_whole() -> None:
    """The same model, or the same violations, as one validation of the whole node (what
    node_from_proto did before)."""
    valid = 0
    for message in _node_corpus():
        data = wire.node_data(message, wire.OperandValues(10**6))
        try:
            whole: Any = wire.validate(Node, data, prefix="node")
        except InvalidArgumentError as error:
            whole = sorted(error.violations, key=repr)
        try:
            pieces: Any = wire.node_from_proto(message)
            valid += 1
        except InvalidArgumentError as error:
            pieces = sorted(error.violations, key=repr)
        assert pieces == whole, message
    print(f"{valid} valid nodes of {len(_node_corpus())}")
    assert valid >= 200


class _Extractions(BaseModel):
    """ExtractVariables' extractions as the servicer validates them whole."""

    extractions: tuple[Extraction, ...] = Field(max_length=MAX_EXTRACTIONS)


def test_extractions_validated_in_pieces_are_those_validated_whole() -> None:
    """The same models, or the same violations, as one validation of ExtractVariables' (or a
    node's) extractions; a container default is the very value read, never walked by pydantic
    (a default of 100,000 values was validated in one call that held the GIL 12-33 ms)."""
    rng = random.Random(17)
    kept = 0
    for _ in range(300):
        message = _random_node(rng)
        data = wire.extractions_data(message.extractions, "extractions", wire.OperandValues(10**6))
        try:
            whole: Any = wire.validate(_Extractions, {"extractions": data}, prefix="").extractions
        except InvalidArgumentError as error:
            whole = sorted(error.violations, key=repr)
        try:
            pieces: Any = wire.validate_extractions(_Extractions, data).extractions
        except InvalidArgumentError as error:
            pieces = sorted(error.violations, key=repr)
        else:
            for piece, read in zip(pieces, data, strict=True):
                default = read.get("default_value")
                if isinstance(default, list | dict):
                    assert piece.default_value is default  # not walked, not copied
                    kept += 1
        assert pieces == whole, message
    print(f"{kept} container defaults kept as read")
    assert kept >= 10


# --- documents: counted before any parser sees them ----------------------------------------


def _random_json(rng: random.Random, depth: int = 0) -> Any:
    """JSON whose strings hold what the count must not take for structure."""
    roll = rng.random()
    if depth > 4 or roll < 0.4:
        return rng.choice([1, 2.5, None, True, "a,b[c{", 'q"uo\\te', "\\", "", '\\\\"', "[]", "{}"])
    if roll < 0.7:
        return [_random_json(rng, depth + 1) for _ in range(rng.randrange(5))]
    keys = ["k", "a,b", "[", '"', "\\", "{}"]
    return {
        rng.choice(keys) + str(i): _random_json(rng, depth + 1) for i in range(rng.randrange(4))
    }


def _values(document: Any) -> int:
    """JSON values as documents counts them (every list item and object value, and the root)."""
    count, stack = 0, [document]
    while stack:
        value = stack.pop()
        count += 1
        if isinstance(value, dict):
            stack.extend(value.values())
        elif isinstance(value, list):
            stack.extend(value)
    return count


@pytest.mark.parametrize("slice_bytes", [1, 2, 7, 64 * 1024])
def test_values_counted_outside_strings_are_never_fewer_than_the_documents(
    slice_bytes: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Over 2,000 random containers, written compact, spaced and as UTF-8: never fewer (so a
    document within the limit is never refused), and exactly as many for compact JSON that no
    slice cuts."""
    monkeypatch.setattr(documents, "_SLICE", slice_bytes)
    rng = random.Random(14)
    for _ in range(2000):
        document = _random_json(rng)
        if not isinstance(document, list | dict):
            continue
        values = _values(document)
        compact = json.dumps(document, separators=(",", ":"))
        for text in (
            compact,
            json.dumps(document, indent=1),
            json.dumps(document, ensure_ascii=False),
        ):
            assert documents._values_outside(text.encode(), 10**9) >= values, text
        if slice_bytes > len(compact):
            assert documents._values_outside(compact.encode(), 10**9) == values, compact


def test_a_document_of_too_many_values_is_refused_before_any_parser_sees_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: a 4 MiB body of 1.3 million empty lists was parsed first (one call holding the
    loop 0.6-3.6 s), then refused by the count. Now the parser is never called."""
    parsed: list[int] = []
    real = documents._loads

    def loads(data: bytes) -> Any:
        parsed.append(len(data))
        return real(data)

    monkeypatch.setattr(documents, "_loads", loads)
    body = b"[" + b",".join([b"[]"] * 1_300_000) + b"]"
    with pytest.raises(documents.DocumentError) as refused:
        documents.parse_document(body)
    assert not refused.value.malformed
    assert str(refused.value) == f"has more than {documents.MAX_JSON_NODES} JSON values"
    assert parsed == []
    # 99,999 lists of one value each, and the root: 199,999 values, read as before; 100,000
    # lists are 200,001 values, one too many.
    assert len(documents.parse_document(json.dumps([[1]] * 99_999).encode())) == 99_999
    with pytest.raises(documents.DocumentError):
        documents.parse_document(json.dumps([[1]] * 100_000).encode())
    # Text that is not a JSON container is left to the parser, whatever its commas.
    with pytest.raises(documents.DocumentError) as malformed:
        documents.parse_document(b"a,b,c\n" * 300_000)
    assert malformed.value.malformed


def test_an_operand_is_not_walked_again_by_the_models_validation(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Before: the 99,000 strings of the bench's node went to pydantic inside their branch, one
    call walking and copying all of them (12-33 ms holding the loop). Now only containers of at
    most two (empty) items are validated; the operand read from the wire is the model's."""
    given: list[int] = []
    real = wire._piece

    def piece(model_type: Any, data: dict[str, Any], *rest: Any) -> Any:
        for item in data.get("conditions", [data]):
            operand = item.get("operand") if isinstance(item, dict) else None
            given.append(len(operand) if isinstance(operand, list | dict) else 0)
        return real(model_type, data, *rest)

    monkeypatch.setattr(wire, "_piece", piece)
    validated = wire.node_from_proto(in_message(99_000, kind="string"))
    assert len(validated.branches[0].conditions[0].operand) == 99_000  # type: ignore[arg-type]
    assert max(given) <= 2
