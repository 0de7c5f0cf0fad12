"""Bounded work on hostile input (issue 14): each finding of the adversarial run, as a case.

Every case failed on the code before the fix (run once against it: each either took seconds to
minutes and answered without a limit, grew memory far past its bound, or lacked the seam it
tests) and passes now. Nothing here is decided by timing: budgets run on injected clocks, work
is counted, memory is traced (tracemalloc's peak or what stays allocated), and durations are
printed, never asserted.

    finding                                             now
    64 MATCHES over a 250 KB body string (3.8-6.9 s)    ERROR/LIMIT_EXCEEDED (subject cap)
    a 347-char JMESPath doubling a string (134 MB)      ERROR/LIMIT_EXCEEDED before it grows
    4,096 to_string(@) conditions on 227 KB (27 s)      ERROR/LIMIT_EXCEEDED before judging
    explain copies every subject (860 MiB)              values over 4 KiB truncated, noted
    the compiled-node cache bounded by count only       bounded in bytes too
    2.5 MiB header templates                            refused at registration
    judging outlives the caller's deadline              ERROR/BUDGET_EXHAUSTED at the next step
    a cancelled call frees its slot, worker runs on     the slot waits for the worker to stop
    ExtractVariables without any bound                  INVALID_ARGUMENT naming the limit
    SIGTERM waits for judging threads (15.9 s, 193.8 s)  stop_all: they stop at their next step
"""

from __future__ import annotations

import asyncio
import gc
import json
import random
import sys
import threading
import time
import tracemalloc
from collections.abc import Callable, Mapping
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from rulesidecar.v1 import rules_sidecar_pb2 as pb

from sidecar.core.budget import BudgetExhaustedError
from sidecar.core.engine import Engine, compile_node
from sidecar.core.extraction import compile_extractions
from sidecar.core.model import Connector, Extraction, Node, Outcome, OutcomeKind, Reason
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendOptions
from sidecar.core.secrets import SecretBindings
from tests.support.calls import RPC_TIMEOUT, connector_message
from tests.support.conditions import condition, on_the_wire
from tests.support.sidecars import InProcessSidecar

ORIGIN = "https://api.hostile.example"
# The JMESPath: each `join` writes its input twice, and 23 levels (345 characters) turn
# 16 characters into 134 MB.
DOUBLING_EXPRESSION = "|".join(["join('',[@,@])"] * 23)
SEED = "0123456789abcdef"
MiB = 1024 * 1024
AB_TEXT = "".join(random.Random(14).choice("ab") for _ in range(250_000))


class OneConnector:
    def __init__(self, connector: Connector) -> None:
        self.connector = connector

    def get(self, connector_id: str) -> Connector | None:
        return self.connector if connector_id == self.connector.id else None


class NoSecrets:
    def resolve(self, name: str) -> str | None:
        return None

    def searched(self, name: str) -> str:
        return "nowhere"


def answering(body: Any) -> Callable[[OutboundRequest, SendOptions], Any]:
    """A `send` whose upstream answers 200 with `body` (JSON-encoded unless bytes)."""
    raw = body if isinstance(body, bytes) else json.dumps(body).encode()

    async def send(request: OutboundRequest, options: SendOptions) -> HttpResponse:
        return HttpResponse(200, {"content-type": "application/json"}, raw)

    return send


def engine_answering(body: Any, **engine_fields: Any) -> Engine:
    connector = Connector.model_validate(
        {"id": "hostile", "status": "LIVE", "url_template": f"{ORIGIN}/x"}
    )
    return Engine(
        OneConnector(connector),
        NoSecrets(),
        answering(body),
        bindings=SecretBindings({}),
        **engine_fields,
    )


def node(
    *conditions: Mapping[str, Any],
    branches: int = 1,
    extractions: Any = (),
    combinator: str = "ALL",
) -> Node:
    return Node.model_validate(
        {
            "connector_id": "hostile",
            "branches": [
                {"target": f"b{i}", "conditions": list(conditions), "combinator": combinator}
                for i in range(branches)
            ],
            "extractions": list(extractions),
            "else_target": "else",
            "error_target": "error",
        }
    )


def evaluate(engine: Engine, hostile: Node, **fields: Any) -> Outcome:
    started = time.perf_counter()
    outcome = asyncio.run(engine.evaluate(compile_node(hostile), {}, **fields))
    print(f"answered {outcome.kind}/{outcome.reason} in {time.perf_counter() - started:.3f}s")
    return outcome


def traced_peak(run: Callable[[], Any]) -> tuple[Any, int]:
    """What `run` returned and the peak of traced memory while it ran."""
    tracemalloc.start()
    try:
        result = run()
        return result, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


# --- caps ---------------------------------------------------------------------------------


def test_many_regexes_over_a_large_body_string_stop_at_the_subject_cap() -> None:
    """`.{100,1000}` is thousands of RE2 instructions: each search over 250 KB takes ~150 ms."""
    engine = engine_answering({"v": AB_TEXT})
    hostile = node(*[condition("MATCHES", f".{{100,1000}}c{i}") for i in range(64)])
    outcome = evaluate(engine, hostile)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.ERROR, Reason.LIMIT_EXCEEDED)
    assert "max_regex_subject_bytes" in outcome.message


def test_a_jmespath_expression_doubling_a_string_is_stopped_before_it_grows() -> None:
    assert len(DOUBLING_EXPRESSION) <= 350
    engine = engine_answering({"v": SEED})
    hostile = node(condition("EXISTS", path=f"v | {DOUBLING_EXPRESSION}"))
    outcome, peak = traced_peak(lambda: evaluate(engine, hostile))
    print(f"traced peak {peak / MiB:.1f} MiB")
    assert (outcome.kind, outcome.reason) == (OutcomeKind.ERROR, Reason.LIMIT_EXCEEDED)
    assert peak < 16 * MiB  # the uncapped expression builds 134 MB


def test_thousands_of_to_string_conditions_on_a_large_body_are_refused_before_judging() -> None:
    engine = engine_answering({"items": ["x" * 100] * 2200})  # 227 KB
    # ANY over conditions that never hold: every one of the 4,096 is judged.
    never = condition("EQUALS", "never", path="to_string(@)")
    hostile = node(*[never] * 64, branches=64, combinator="ANY")
    outcome = evaluate(engine, hostile)
    assert (outcome.kind, outcome.reason) == (OutcomeKind.ERROR, Reason.LIMIT_EXCEEDED)
    assert "max_node_cost_bytes" in outcome.message


def test_explanations_do_not_copy_large_subjects() -> None:
    body = {"v": "s" * 100_000, "items": list(range(20_000))}
    engine = engine_answering(body)
    hostile = node(*[condition("EXISTS", path="v"), condition("EXISTS", path="items")] * 32)
    outcome = evaluate(engine, hostile, explain=True)
    assert outcome.explanation is not None
    judged = [c for branch in outcome.explanation.branches for c in branch.conditions]
    assert len(judged) == 64
    assert all(c.result for c in judged)
    shown = sum(len(json.dumps(c.subject_value)) for c in judged)
    assert shown <= 64 * (4096 + 64)  # not 64 copies of 100 KB
    assert all("max_explain_value_bytes" in c.note for c in judged)


def test_compiled_nodes_are_retained_within_a_byte_bound(
    running_sidecar: InProcessSidecar,
) -> None:
    """20 distinct 1 MiB nodes (about 9 MiB each once compiled): the cache keeps only what its
    byte bound (64 MiB by default) allows."""
    stub = running_sidecar.stub
    requests = []
    for index in range(20):
        message = _wire_node(condition("IN", ["placeholder"]))
        operand = message.branches[0].conditions[0].operand.list_value
        operand.values.pop()
        for n in range(36_000):
            operand.values.add().string_value = f"{index}-{n:08d}-" + "p" * 16
        requests.append(pb.EvaluateNodeRequest(node=message))
    # Allocated blocks, not bytes: tracemalloc would make this test take minutes. Each
    # compiled element is a few small objects (string, operand forms), so blocks track bytes.
    gc.collect()
    before = sys.getallocatedblocks()
    for request in requests:
        stub.EvaluateNode(request, timeout=RPC_TIMEOUT * 4)
    gc.collect()
    retained = sys.getallocatedblocks() - before
    print(f"blocks retained after 20 distinct 1 MiB nodes: {retained}")
    # By count alone (1,024 entries) all 20 stay, 36,000 elements each: over 2,000,000 blocks.
    assert retained < 1_200_000


def test_header_templates_megabytes_long_are_refused(running_sidecar: InProcessSidecar) -> None:
    message = connector_message(
        "big-headers", "http://127.0.0.1:9/x", headers={"X-Big": "h" * (2_500_000)}
    )
    with pytest.raises(grpc.RpcError) as raised:
        running_sidecar.stub.RegisterConnector(
            pb.RegisterConnectorRequest(connector=message), timeout=RPC_TIMEOUT
        )
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT


def test_extract_variables_is_bounded_too(running_sidecar: InProcessSidecar) -> None:
    request = pb.ExtractVariablesRequest(raw_json=json.dumps({"v": SEED}).encode())
    request.extractions.add(variable="grown", path=f"v | {DOUBLING_EXPRESSION}")
    with pytest.raises(grpc.RpcError) as raised:
        running_sidecar.stub.ExtractVariables(request, timeout=RPC_TIMEOUT)
    assert raised.value.code() is grpc.StatusCode.INVALID_ARGUMENT
    assert "max_query_result_bytes" in (raised.value.details() or "")


# --- the budget ---------------------------------------------------------------------------


class SteppingClock:
    """Time passes only when read: each read is `step` seconds later. Judging reads it every
    few dozen steps, so the budget ends after a number of steps, not of seconds."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.lock = threading.Lock()

    def __call__(self) -> float:
        with self.lock:
            self.now += self.step
            return self.now


def test_judging_stops_when_the_callers_deadline_passes() -> None:
    """A quantifier over a 200,000-element variable, 64 times: minutes of judging, unbounded
    before; now the budget (the caller's 2 s) ends after about 20 clock reads."""
    engine = engine_answering({}, clock=SteppingClock(0.1))
    hostile = node(*[condition("EQUALS", 1, kind="VARIABLE", path="xs", quantifier="ALL")] * 64)
    outcome = asyncio.run(
        engine.evaluate(compile_node(hostile), {"xs": [1] * 200_000}, time_remaining=2.0)
    )
    assert (outcome.kind, outcome.reason) == (OutcomeKind.ERROR, Reason.BUDGET_EXHAUSTED)
    assert outcome.target == "error"
    assert engine.working == 0


def test_a_cancelled_evaluation_returns_only_once_its_worker_stopped() -> None:
    """The caller goes away while a worker judges: the evaluation (and so the admission slot
    around it) ends only after the worker has stopped."""
    in_worker, release = threading.Event(), threading.Event()
    events: list[str] = []
    loop_thread = threading.get_ident()

    def clock() -> float:
        if threading.get_ident() != loop_thread and not in_worker.is_set():
            in_worker.set()
            release.wait()
        return 0.0

    engine = engine_answering({"xs": [1] * 100_000}, clock=clock)
    hostile = node(*[condition("EQUALS", 1, path="xs", quantifier="ALL")] * 64)

    async def main() -> None:
        task = asyncio.create_task(engine.evaluate(compile_node(hostile), {}))
        await asyncio.to_thread(in_worker.wait)
        assert engine.working == 1
        task.cancel()
        await asyncio.sleep(0.01)
        events.append(f"while the worker runs: {engine.working} working")
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append(f"after the cancellation: {engine.working} working")

    asyncio.run(main())
    assert events == ["while the worker runs: 1 working", "after the cancellation: 0 working"]


def _wire_node(*conditions: Mapping[str, Any]) -> pb.Node:
    data = {
        "connector_id": "absent",
        "branches": [{"target": "t", "conditions": [on_the_wire(c) for c in conditions]}],
        "else_target": "else",
        "error_target": "error",
    }
    return json_format.ParseDict(data, pb.Node())


class WorkerGate:
    """A clock that holds the first worker thread to read it until `release` is set: the test
    acts (stop_all) while judging is known to run off the loop. Called on the loop's thread
    (the one that made it), it answers at once."""

    def __init__(self) -> None:
        self.in_worker, self.release = threading.Event(), threading.Event()
        self._loop_thread = threading.get_ident()

    def __call__(self) -> float:
        if threading.get_ident() != self._loop_thread and not self.in_worker.is_set():
            self.in_worker.set()
            self.release.wait()
        return 0.0


def test_shutdown_stops_judging_still_running_after_the_grace() -> None:
    """After the grace, Sidecar.stop calls stop_all: a worker judging with no deadline stops
    at its next step, and its evaluation answers BUDGET_EXHAUSTED (SIGTERM took 15.9 s, once
    193.8 s, before)."""
    clock = WorkerGate()
    engine = engine_answering({"xs": [1] * 100_000}, clock=clock)
    hostile = node(*[condition("EQUALS", 1, path="xs", quantifier="ALL")] * 64)

    async def main() -> Outcome:
        task = asyncio.create_task(engine.evaluate(compile_node(hostile), {}))
        await asyncio.to_thread(clock.in_worker.wait)
        engine.stop_all()
        clock.release.set()
        return await task

    outcome = asyncio.run(main())
    assert (outcome.kind, outcome.reason) == (OutcomeKind.ERROR, Reason.BUDGET_EXHAUSTED)
    assert "the sidecar is shutting down" in outcome.message  # not the caller's doing
    assert engine.working == 0


def test_an_extraction_stopped_by_the_shutdown_says_so() -> None:
    """ExtractVariables has no outcome: the servicer answers its BudgetExhaustedError with
    UNAVAILABLE when `engine.stopping` (retry elsewhere), INVALID_ARGUMENT otherwise."""
    clock = WorkerGate()
    engine = engine_answering({}, clock=clock)
    compiled = compile_extractions(
        [Extraction(variable=f"v{n}", path="xs[?@ == `2`]") for n in range(64)]
    )

    async def main() -> BaseException:
        task = asyncio.create_task(
            engine.extract(compiled, {"xs": [1] * 100_000}, document_bytes=300_000)
        )
        await asyncio.to_thread(clock.in_worker.wait)
        assert not engine.stopping
        engine.stop_all()
        clock.release.set()
        with pytest.raises(BudgetExhaustedError) as stopped:
            await task
        return stopped.value

    stopped = asyncio.run(main())
    assert engine.stopping
    assert "the sidecar is shutting down" in str(stopped)
    assert engine.working == 0
