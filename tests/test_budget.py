"""sidecar.core.budget and the caps that spend from it: time, cancellation, limits, the slice.

Clocks are injected and work is counted: no test here decides anything by how long it took.
"""

from __future__ import annotations

import asyncio
import json
import threading
from typing import Any

import pytest

from sidecar.core.budget import (
    BYTES_PER_UNIT,
    ON_LOOP_UNITS,
    Budget,
    BudgetExhaustedError,
    LimitExceededError,
    WorkLimits,
    dumps_bounded,
    json_size,
    run_bounded,
)
from sidecar.core.compiled_cache import CompiledCache
from sidecar.core.conditions import CompiledBranches, ResponseView, compile_branches
from sidecar.core.engine import compile_node
from sidecar.core.extraction import compile_extractions
from sidecar.core.model import Connector, Node, Reason
from sidecar.core.model.connector import MAX_HEADER_TEMPLATE_CHARS
from sidecar.core.model.node import Branch, Extraction
from sidecar.core.query import compile_query
from sidecar.errors import InvalidArgumentError
from tests.support.conditions import condition


class StepClock:
    """A clock that advances `step` seconds each time it is read."""

    def __init__(self, step: float) -> None:
        self.now = 0.0
        self.step = step
        self.reads = 0

    def __call__(self) -> float:
        self.reads += 1
        self.now += self.step
        return self.now


def frozen_budget(limits: WorkLimits | None = None, **fields: Any) -> Budget:
    """A budget whose time never passes: only limits and cancellation stop it."""
    return Budget(limits or WorkLimits(), clock=lambda: 0.0, **fields)


def branches(*conditions: dict[str, Any], **compile_fields: Any) -> Any:
    spec = Branch.model_validate({"target": "t", "conditions": list(conditions)})
    return compile_branches([spec], **compile_fields)


# --- the budget -------------------------------------------------------------------------------


def test_spending_past_the_deadline_stops_at_the_next_check() -> None:
    clock = StepClock(0.25)
    budget = Budget(WorkLimits(), seconds=1.0, clock=clock, check_every=1)
    budget.spend()
    budget.spend()
    budget.spend()
    with pytest.raises(BudgetExhaustedError) as raised:
        budget.spend()
    assert raised.value.reason is Reason.BUDGET_EXHAUSTED
    spent = budget.spent - 1
    assert spent == 3  # deadline 0.25 + 1.0; the 4th spend reads 1.25


def test_the_clock_is_read_once_per_check_interval() -> None:
    clock = StepClock(0.0)
    budget = Budget(WorkLimits(), clock=clock, check_every=64)
    for _ in range(640):
        budget.spend()
    assert clock.reads == 1 + 10


def test_a_cancelled_budget_stops_the_next_check_whatever_the_time() -> None:
    budget = frozen_budget(check_every=1)
    budget.spend()
    budget.cancel()
    with pytest.raises(BudgetExhaustedError, match="cancelled"):
        budget.spend()


def test_the_caller_deadline_is_kept_within_max_evaluation_seconds() -> None:
    limits = WorkLimits(max_evaluation_seconds=2.0)
    assert Budget(limits, seconds=100.0, clock=lambda: 0.0).remaining() == 2.0
    assert Budget(limits, seconds=0.5, clock=lambda: 0.0).remaining() == 0.5
    assert Budget(limits, clock=lambda: 0.0).remaining() == 2.0


# --- run_bounded: a slice on the loop, then a worker; cancellation waits for the worker --------


def spend_and_report(budget: Budget, units: int) -> int:
    for _ in range(units):
        budget.spend()
    return threading.get_ident()


def judged_in_slices(
    compiled: CompiledBranches, body: Any, *, explain: bool = False
) -> tuple[int | None, int]:
    """`compiled` judged on `body` as the engine judges (a slice on the loop, then a worker if
    it needs more): the index of the branch taken and the units spent."""

    async def main() -> tuple[int | None, int]:
        budget = frozen_budget()
        view = ResponseView(200, {}, body, True, {}, budget)
        decision = await run_bounded(lambda: compiled.decide(view, explain=explain), budget)
        return decision.index, budget.spent

    return asyncio.run(main())


def test_a_small_judging_stays_on_the_event_loop() -> None:
    async def main() -> tuple[int, int]:
        budget = frozen_budget()
        ran_on = await run_bounded(lambda: spend_and_report(budget, 10), budget)
        return ran_on, threading.get_ident()

    ran_on, loop_thread = asyncio.run(main())
    assert ran_on == loop_thread


def test_a_judging_needing_more_than_a_slice_moves_to_a_worker_thread() -> None:
    async def main() -> tuple[int, int]:
        budget = frozen_budget()
        ran_on = await run_bounded(lambda: spend_and_report(budget, ON_LOOP_UNITS * 3), budget)
        return ran_on, threading.get_ident()

    ran_on, loop_thread = asyncio.run(main())
    assert ran_on != loop_thread


def test_conditions_moved_off_the_loop_judge_the_same() -> None:
    """Moving off the loop passes through judging's own catch-all: the verdict is unchanged."""
    compiled = branches(condition("EQUALS", 1, quantifier="ALL"))

    index, spent = judged_in_slices(compiled, {"v": [1] * (ON_LOOP_UNITS * 2)}, explain=True)
    assert index == 0
    assert spent > ON_LOOP_UNITS * 3  # the slice, then the whole judging again in a worker


def test_an_in_operand_spends_an_element_at_a_time() -> None:
    """Before: an IN scan spent nothing per element, so 99,000 elements (the hostile bench's
    3.5 MiB nodes) were compared on the loop in one go, 70-300 ms, and unstoppable."""
    compiled = branches(condition("IN", [f"{n:08d}" for n in range(ON_LOOP_UNITS * 2)]))

    index, spent = judged_in_slices(compiled, {"v": "absent"})
    assert index is None
    assert spent > ON_LOOP_UNITS * 3  # the slice on the loop, then the whole scan in a worker


def test_structural_equality_spends_a_unit_a_pair_and_reads_no_more_than_the_operand() -> None:
    """Before: the subject was normalised whole before comparing, spending nothing: 64
    `EQUALS [1]` on a list of 200,000 values held the loop 2.8 s."""

    def spent(operand: Any, subject: Any) -> tuple[bool, int]:
        budget = frozen_budget()
        view = ResponseView(200, {}, {"v": subject}, True, {}, budget)
        held = branches(condition("EQUALS", operand)).decide(view, explain=False).index == 0
        return held, budget.spent

    nested = [{"k": [n, n + 0.5]} for n in range(1_000)]
    assert spent(nested, [{"k": [float(n), n + 0.5]} for n in range(1_000)]) >= (True, 3_000)
    held, few = spent([1], [0] * 200_000)
    assert not held
    assert few < 10


@pytest.mark.parametrize(
    ("operator", "ignore_case", "subject"),
    [
        ("CONTAINS", False, "ab" * (ON_LOOP_UNITS * BYTES_PER_UNIT)),
        ("CONTAINS", True, "ab" * (ON_LOOP_UNITS * BYTES_PER_UNIT)),
        ("EQUALS", True, "ab" * (ON_LOOP_UNITS * BYTES_PER_UNIT)),
        ("STARTS_WITH", True, "ab" * (ON_LOOP_UNITS * BYTES_PER_UNIT)),
        ("CONTAINS", True, {f"key{n}": n for n in range(ON_LOOP_UNITS * 2)}),
    ],
)
def test_text_comparisons_spend_what_they_read(
    operator: str, ignore_case: bool, subject: Any
) -> None:
    """Before: a comparison of text (searching, casefolding a string or an object's keys) spent
    one unit whatever its length: 64 on a 1 MB string held the loop 20-60 ms, on an object of
    100,000 keys 0.3 s."""
    compiled = branches(condition(operator, "zz", ignore_case=ignore_case))

    index, spent = judged_in_slices(compiled, {"v": subject})
    assert index is None
    assert spent > ON_LOOP_UNITS * 3  # the slice on the loop, then again in a worker


def test_a_costly_regex_moves_off_the_loop_before_it_searches() -> None:
    """`.{100,1000}c` is thousands of RE2 instructions: over 60 KB its cost (subject x program)
    is spent before the search, so the search itself happens only in the worker."""
    compiled = branches(condition("MATCHES", ".{100,1000}c"))
    subject = "ab" * 30_000

    index, spent = judged_in_slices(compiled, {"v": subject})
    assert index is None
    assert spent > 2 * ON_LOOP_UNITS  # spent once on the loop (refused there), once in a worker


def test_a_large_document_goes_to_a_worker_at_once() -> None:
    async def main() -> tuple[int, int]:
        budget = frozen_budget()
        ran_on = await run_bounded(lambda: spend_and_report(budget, 1), budget, on_loop=False)
        return ran_on, threading.get_ident()

    ran_on, loop_thread = asyncio.run(main())
    assert ran_on != loop_thread


def test_a_cancelled_caller_returns_only_once_the_worker_stopped() -> None:
    started, release = threading.Event(), threading.Event()
    events: list[str] = []

    def endless(budget: Budget) -> None:
        started.set()
        release.wait()
        try:
            while True:
                budget.spend()
        finally:
            events.append("worker stopped")

    async def main() -> Budget:
        budget = frozen_budget(check_every=1)
        task = asyncio.create_task(run_bounded(lambda: endless(budget), budget, on_loop=False))
        await asyncio.to_thread(started.wait)
        task.cancel()
        await asyncio.sleep(0)  # the cancellation is delivered while the worker still runs
        task.cancel()  # and a second one changes nothing
        release.set()
        with pytest.raises(asyncio.CancelledError):
            await task
        events.append("caller cancelled")
        return budget

    budget = asyncio.run(main())
    assert budget.cancelled
    assert events == ["worker stopped", "caller cancelled"]


# --- sizes ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value",
    [None, True, 5, "plain", {"a": [1, 2, {"b": "c"}]}, [], {}, ["x", "y"]],
)
def test_json_size_is_at_least_the_compact_json_length(value: Any) -> None:
    assert json_size(value, 1 << 30) >= len(json.dumps(value, separators=(",", ":")))


def test_json_size_stops_counting_past_the_limit_on_shared_references() -> None:
    shared = "x" * 1000
    huge = [[shared] * 50] * 50  # 2.5 MB as JSON, one string in memory
    assert 100 < json_size(huge, 100) < 2000  # stopped at the first string
    assert json_size([shared] * 1_000_000, 100) > 100  # too long to take its elements


def test_dumps_bounded_refuses_before_building() -> None:
    with pytest.raises(LimitExceededError, match="over-the-cap"):
        dumps_bounded(["x" * 600, "y" * 600], 1000, "over-the-cap")
    assert dumps_bounded({"a": 1}, 1000, "small") == '{"a":1}'


# --- JMESPath caps ----------------------------------------------------------------------------

DOUBLING = "to_string([@, @])"


def doubling(levels: int) -> str:
    """Each level writes its input twice as JSON text: the result doubles (and more) per level."""
    return " | ".join([DOUBLING] * levels)


def test_a_to_string_that_doubles_per_level_stops_at_the_result_cap() -> None:
    limits = WorkLimits(max_query_result_bytes=64 * 1024)
    query = compile_query(doubling(40))
    with pytest.raises(LimitExceededError, match="max_query_result_bytes"):
        query.find("x" * 100, frozen_budget(limits))


def test_join_refuses_a_result_over_the_cap() -> None:
    limits = WorkLimits(max_query_result_bytes=1024)
    query = compile_query("join('', @)")
    assert query.find(["a"] * 1024, frozen_budget(limits)) == ("a" * 1024, "")
    with pytest.raises(LimitExceededError, match="join"):
        query.find(["a"] * 1025, frozen_budget(limits))


def test_flatten_doubling_through_pipes_stops_at_the_step_cap() -> None:
    limits = WorkLimits(max_query_steps=10_000)
    query = compile_query(" | ".join(["[@, @][]"] * 40))
    with pytest.raises(LimitExceededError, match="max_query_steps"):
        query.find([1], frozen_budget(limits))


def test_a_query_stops_when_its_budget_is_cancelled() -> None:
    budget = frozen_budget(check_every=1)
    budget.cancel()
    with pytest.raises(BudgetExhaustedError):
        compile_query("items[*].id").find({"items": [{"id": 1}] * 100}, budget)


def test_queries_within_the_caps_answer_as_before() -> None:
    budget = frozen_budget()
    assert compile_query("to_string(@)").find({"a": [1, 2]}, budget) == ('{"a":[1,2]}', "")
    assert compile_query("abs(@)").find("x", budget)[0] is None
    assert budget.spent > 0


# --- conditions: regex subjects, quantifiers, explanations -------------------------------------


def test_a_regex_subject_over_the_cap_stops_the_evaluation() -> None:
    limits = WorkLimits(max_regex_subject_bytes=100)
    compiled = branches(condition("MATCHES", "^a+$"))
    fits = ResponseView(200, {}, {"v": "a" * 100}, True, {}, frozen_budget(limits))
    assert compiled.decide(fits, explain=False).index == 0
    over = ResponseView(200, {}, {"v": "a" * 101}, True, {}, frozen_budget(limits))
    with pytest.raises(LimitExceededError, match="max_regex_subject_bytes"):
        compiled.decide(over, explain=False)


def test_regexes_are_compiled_with_the_memory_budget() -> None:
    # A tiny budget still compiles and matches (RE2 works within it, or falls back).
    compiled = branches(condition("MATCHES", "[a-q][^u-z]{13}x"), regex_max_memory_bytes=64 * 1024)
    view = ResponseView(200, {}, {"v": "b" + "a" * 13 + "x"}, True, {}, frozen_budget())
    assert compiled.decide(view, explain=False).index == 0


def test_a_node_with_more_regex_memory_than_its_cost_bound_is_refused() -> None:
    limits = WorkLimits(regex_max_memory_bytes=1024 * 1024, max_node_cost_bytes=4 * 1024 * 1024)
    node = Node.model_validate(
        {
            "connector_id": "c",
            "branches": [{"target": "t", "conditions": [condition("MATCHES", "a")] * 5}],
        }
    )
    with pytest.raises(InvalidArgumentError, match="max_node_cost_bytes"):
        compile_node(node, limits=limits)
    fewer = node.model_copy(
        update={
            "branches": (
                node.branches[0].model_copy(update={"conditions": node.branches[0].conditions[:4]}),
            )
        }
    )
    assert compile_node(fewer, limits=limits).body_queries == 4


def test_a_quantifier_spends_one_unit_per_element_and_stops_when_cancelled() -> None:
    compiled = branches(condition("EQUALS", 1, quantifier="ALL"))
    budget = frozen_budget(check_every=1)
    view = ResponseView(200, {}, {"v": [1] * 500}, True, {}, budget)
    assert compiled.decide(view, explain=False).index == 0
    assert budget.spent >= 500
    budget.cancel()
    with pytest.raises(BudgetExhaustedError):
        compiled.decide(view, explain=False)


def test_explained_values_over_the_cap_are_truncated_with_a_note() -> None:
    limits = WorkLimits(max_explain_value_bytes=64)
    compiled = branches(condition("EXISTS", path="text"), condition("EXISTS", path="list"))
    body = {"text": "t" * 1000, "list": list(range(1000))}
    view = ResponseView(200, {}, body, True, {}, frozen_budget(limits))
    text, listed = compiled.decide(view, explain=True).explanations[0].conditions
    assert text.subject_value == "t" * 64
    assert "truncated to 64 characters (max_explain_value_bytes)" in text.note
    assert listed.subject_value == "<list over 64 bytes>"
    assert "not shown (max_explain_value_bytes)" in listed.note
    assert text.result
    assert listed.result


def test_small_explained_values_are_kept_whole() -> None:
    compiled = branches(condition("EQUALS", "ok"))
    view = ResponseView(200, {}, {"v": "ok"}, True, {}, frozen_budget())
    (judged,) = compiled.decide(view, explain=True).explanations[0].conditions
    assert (judged.subject_value, judged.note) == ("ok", "compared as strings")


# --- extraction -------------------------------------------------------------------------------


def test_extractions_spend_from_the_budget_and_stop_at_a_cap() -> None:
    compiled = compile_extractions([Extraction(variable="v", path=doubling(30))])
    limits = WorkLimits(max_query_result_bytes=4096)
    with pytest.raises(LimitExceededError):
        compiled.apply("seed", has_document=True, budget=frozen_budget(limits))
    cancelled = frozen_budget(check_every=1)
    cancelled.cancel()
    with pytest.raises(BudgetExhaustedError):
        compile_extractions([Extraction(variable="v", path="a")]).apply(
            {"a": 1}, has_document=True, budget=cancelled
        )


# --- caches and templates ---------------------------------------------------------------------


def test_the_compiled_cache_holds_at_most_max_bytes() -> None:
    cache: CompiledCache[int, bytes] = CompiledCache(limit=1000, max_bytes=10_000, size=len)
    for key in range(40):
        cache.get(key, lambda: b"x" * 3000)
    assert cache.bytes <= 10_000
    assert len(cache) == 3
    built = []
    cache.get(99, lambda: built.append(1) or b"y" * 20_000)  # too big: built, used, not kept
    assert built == [1]
    assert len(cache) == 3
    assert cache.bytes == 9000


def test_an_explicit_size_overrides_the_estimate() -> None:
    cache: CompiledCache[str, int] = CompiledCache(limit=10, max_bytes=100)
    cache.get("a", lambda: 1, size=60)
    cache.get("b", lambda: 2, size=60)
    assert (len(cache), cache.bytes) == (1, 60)


def test_header_templates_are_bounded_in_length() -> None:
    fields = {"id": "c", "status": "LIVE", "url_template": "https://api.example.com/"}
    Connector.model_validate({**fields, "headers": {"X-A": "a" * MAX_HEADER_TEMPLATE_CHARS}})
    with pytest.raises(ValueError, match="at most 8192 characters"):
        Connector.model_validate(
            {**fields, "headers": {"X-A": "a" * (MAX_HEADER_TEMPLATE_CHARS + 1)}}
        )
