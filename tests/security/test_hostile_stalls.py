"""Event-loop stalls on hostile input (issue 14, item 7: no stall above 50 ms).

The loop shares one interpreter with the judging and translating threads, so one C call that
holds the GIL holds the loop for as long, whatever thread makes it. bench/hostile.py measured
the causes (probes of the health Check every 10 ms while the hostile set runs); each is a case
here, decided by what the sidecar holds or answers, never by a duration:

    cause (measured)                                        now
    a full garbage collection walks every object alive:     the start-up heap is frozen out of
      20-45 ms for a started sidecar, 100-300 ms with        its sight; an IN operand compiles
      3.5 MiB nodes compiled (one object per IN element)     to no object per element
    a pure-Python judging thread keeps the GIL 5 ms per     1 ms (SWITCH_INTERVAL_SECONDS)
      hand-over; a health check waits for several
    the model validates a node in one call: 230 ms for an   operands and default values hold at
      operand of a million empty lists (a 4 MiB message)    most max_operand_values (100,000)
                                                            JSON values, counted as read, before
"""

from __future__ import annotations

import gc
import json
import subprocess
import sys
import textwrap
import types
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.engine import compile_node
from sidecar.core.model import Node
from sidecar.server import SWITCH_INTERVAL_SECONDS
from tests.support.calls import RPC_TIMEOUT
from tests.support.conditions import condition, on_the_wire
from tests.support.sidecars import InProcessSidecar

# Containers the collector never walks: what the count below does not follow.
_NOT_DATA = (type, types.ModuleType, types.FunctionType, types.CodeType, types.BuiltinFunctionType)


def tracked_objects(root: Any) -> int:
    """Objects the garbage collector tracks among those reachable from `root` (its data: not
    following into classes, modules or functions, which the process holds anyway)."""
    gc.collect()  # tuples and dicts of scalars are untracked by a collection that visits them
    seen: set[int] = set()
    stack = [root]
    while stack:
        item = stack.pop()
        if id(item) in seen or not gc.is_tracked(item) or isinstance(item, _NOT_DATA):
            continue
        seen.add(id(item))
        stack.extend(gc.get_referents(item))
    return len(seen)


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
    json_format.ParseDict(
        list(range(40)), message.extractions.add(variable="v", path="v").default_value
    )
    error = refusal(sidecar.stub.EvaluateNode, pb.EvaluateNodeRequest(node=message))
    assert "node.extractions[0].default_value" in (error.details() or "")


def test_extract_variables_default_values_are_counted_too(sidecar_factory: Any) -> None:
    sidecar = sidecar_factory(max_operand_values=1000)
    request = pb.ExtractVariablesRequest(raw_json=json.dumps({"v": 1}).encode())
    extraction = request.extractions.add(variable="v", path="v")
    json_format.ParseDict(list(range(1000)), extraction.default_value)
    error = refusal(sidecar.stub.ExtractVariables, request)
    assert error.code() is grpc.StatusCode.INVALID_ARGUMENT
    details = error.details() or ""
    assert "extractions[0].default_value" in details
    assert "max_operand_values" in details
