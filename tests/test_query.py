"""Plain paths (`status`, `carrier.name`) are followed without JMESPath's interpreter: the same
values, the same steps spent, the same step limit."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.budget import Budget, LimitExceededError, WorkLimits
from sidecar.core.query import Query, compile_query

DOCUMENTS: list[Any] = [
    {"status": "shipped", "carrier": {"name": "UPS", "eta": None}},
    {"carrier": "UPS"},  # a field of a string is null
    {"carrier": ["UPS", {"name": "x"}]},  # ... and of a list
    {"carrier": {"name": {"first": 0}}},
    {"a b": {"c": 1}},
    ["status"],
    "status",
    None,
    7,
]
PATHS = ["status", "carrier.name", "carrier.name.first", '"a b".c', "missing.name", "carrier"]


def interpreted(expression: str) -> Query:
    """The same expression, evaluated by the interpreter."""
    return Query(compile_query(expression).parsed)


def found_and_spent(query: Query, document: Any, limits: WorkLimits) -> tuple[Any, Any]:
    budget = Budget(limits)
    try:
        found = query.find(document, budget)
    except LimitExceededError as error:
        found = ("refused", str(error))
    return found, budget.spent


@pytest.mark.parametrize("document", DOCUMENTS)
@pytest.mark.parametrize("expression", PATHS)
def test_a_plain_path_finds_what_the_interpreter_finds(expression: str, document: Any) -> None:
    query = compile_query(expression)

    assert query.fields is not None
    assert found_and_spent(query, document, WorkLimits()) == found_and_spent(
        interpreted(expression), document, WorkLimits()
    )


@pytest.mark.parametrize(
    "expression", ["items[0]", "a.b[0]", "@", "a.[b]", "a | b", "length(a)", "a.*", "a[].b"]
)
def test_any_other_expression_is_left_to_the_interpreter(expression: str) -> None:
    assert compile_query(expression).fields is None


def test_a_plain_path_longer_than_the_step_limit_is_refused_as_the_interpreter_refuses() -> None:
    limits = WorkLimits(max_query_steps=1000)
    expression = ".".join(["a"] * 1000)  # 1000 fields and their subexpression: 1001 steps
    document: dict[str, Any] = {}

    fast = found_and_spent(compile_query(expression), document, limits)
    assert fast == found_and_spent(interpreted(expression), document, limits)
    assert fast[0][0] == "refused"
    assert "max_query_steps" in fast[0][1]


NAMES = st.sampled_from(["a", "b", "status", "a b"])
DOCUMENT_TREES = st.recursive(
    st.none() | st.integers() | st.text(max_size=3) | st.booleans(),
    lambda children: st.lists(children, max_size=3) | st.dictionaries(NAMES, children, max_size=3),
    max_leaves=15,
)


@settings(max_examples=300, deadline=None, suppress_health_check=list(HealthCheck))
@given(st.lists(NAMES, min_size=1, max_size=5), DOCUMENT_TREES)
def test_generated_plain_paths_find_what_the_interpreter_finds(
    names: list[str], document: Any
) -> None:
    expression = ".".join(f'"{name}"' for name in names)

    assert found_and_spent(compile_query(expression), document, WorkLimits()) == found_and_spent(
        interpreted(expression), document, WorkLimits()
    )
