"""sidecar.core.conditions: the comparison table, subjects, quantifiers, branches, explain."""

from __future__ import annotations

from collections.abc import Iterator, Mapping
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.conditions import (
    BranchDecision,
    ResponseView,
    compile_branches,
    compile_query,
)
from sidecar.core.model.node import Branch, Condition, Operator
from sidecar.core.model.outcome import ConditionExplanation
from sidecar.errors import InvalidArgumentError
from tests.support.conditions import condition

ABSENT = object()
"""Marks a BODY subject whose path does not exist in the body."""


def branch(*conditions: dict[str, Any], target: str = "t", combinator: str = "ALL") -> Branch:
    return Branch.model_validate(
        {"target": target, "combinator": combinator, "conditions": list(conditions)}
    )


def view(
    body: Any = None,
    *,
    status: int = 200,
    headers: Mapping[str, str] | None = None,
    body_is_json: bool = True,
    variables: Mapping[str, Any] | None = None,
) -> ResponseView:
    return ResponseView(status, headers or {}, body, body_is_json, variables or {})


def body_with(subject: Any) -> Any:
    return {} if subject is ABSENT else {"v": subject}


def explain_one(spec: dict[str, Any], response: ResponseView) -> ConditionExplanation:
    decision = compile_branches([branch(spec)]).decide(response, explain=True)
    return decision.explanations[0].conditions[0]


def holds(spec: dict[str, Any], response: ResponseView) -> bool:
    compiled = compile_branches([branch(spec)])
    quick = compiled.decide(response, explain=False).index == 0
    explained = explain_one(spec, response).result
    assert quick == explained, "explaining must not change the verdict"
    return quick


def judge(operator: str, subject: Any, operand: Any = None, **options: Any) -> bool:
    return holds(condition(operator, operand, **options), view(body_with(subject)))


def compile_error(*branches: Branch) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        compile_branches(branches)
    return caught.value


# --- EQUALS / NOT_EQUALS: typed coercion ------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "operand", "ignore_case", "expected"),
    [
        ("5", 5, False, True),
        ("05", 5, False, True),
        ("5.0", 5, False, True),
        (" 5 ", 5, False, True),
        ("1e3", 1000, False, True),
        (5.0, "5", False, True),
        (5, 5.0, False, True),
        (5, "5.5", False, False),
        (0.1 + 0.2, 0.3, False, False),
        ("1" * 5000, 5, False, False),
        (True, "true", False, True),
        ("TRUE", True, False, True),
        (False, "false", False, True),
        (" false ", False, False, True),
        (True, False, False, False),
        (True, 1, False, False),
        ("yes", True, False, False),
        (True, "True", False, True),
        ("abc", "abc", False, True),
        ("abc", "ABC", False, False),
        ("abc", "ABC", True, True),
        ("Straße", "STRASSE", True, True),
        ("5", "05", False, True),
        (5, "abc", False, False),
        ("abc", 5, False, False),
        (None, None, False, True),
        (ABSENT, None, False, True),
        (None, "x", False, False),
        (ABSENT, "x", False, False),
        ("null", None, False, False),
        ("", None, False, False),
        ([1, 2], [1.0, 2.0], False, True),
        ({"a": 1.0, "b": [2.0]}, {"b": [2], "a": 1}, False, True),
        ([1, 2], [2, 1], False, False),
        (["A"], ["a"], True, False),
        ([1], 1, False, False),
        ({"a": 1}, "a", False, False),
        ([], {}, False, False),
    ],
)
def test_equals_follows_the_typed_comparison_table(
    subject: Any, operand: Any, ignore_case: bool, expected: bool
) -> None:
    assert judge("EQUALS", subject, operand, ignore_case=ignore_case) is expected
    assert judge("NOT_EQUALS", subject, operand, ignore_case=ignore_case) is not expected


@pytest.mark.parametrize(
    ("subject", "operand", "note"),
    [
        ("05", 5, "compared as numbers"),
        (True, "true", "compared as booleans"),
        ("abc", "abc", "compared as strings"),
        ([1.0], [1], "compared as JSON values"),
        ("x", None, "compared with null"),
        ([1], 1, "not comparable: list and number"),
    ],
)
def test_equals_explains_how_it_compared(subject: Any, operand: Any, note: str) -> None:
    assert explain_one(condition("EQUALS", operand), view(body_with(subject))).note == note


def test_an_integer_too_long_for_text_still_compares_as_a_number() -> None:
    huge = 10**5000
    assert judge("EQUALS", huge, huge) is True
    assert judge("GREATER_THAN", huge, 5) is True
    assert judge("STARTS_WITH", huge, "1") is False


def test_equals_ignoring_case_says_so() -> None:
    explained = explain_one(condition("EQUALS", "ABC", ignore_case=True), view({"v": "abc"}))
    assert (explained.result, explained.note) == (True, "compared as strings, ignoring case")


# --- ordering ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "operator", "operand", "ignore_case", "expected"),
    [
        (10, "GREATER_THAN", 9, False, True),
        ("10", "GREATER_THAN", 9, False, True),
        ("10", "GREATER_THAN", "9", False, True),
        (9, "GREATER_THAN", 9, False, False),
        (9, "GREATER_THAN_OR_EQUAL", 9.0, False, True),
        ("4", "LESS_THAN", "4.5", False, True),
        (5, "LESS_THAN_OR_EQUAL", "5.0", False, True),
        (6, "LESS_THAN_OR_EQUAL", 5, False, False),
        (10**30, "GREATER_THAN", 1e29, False, True),
        ("b", "GREATER_THAN", "a", False, True),
        ("2024-01-05", "GREATER_THAN", "2023-12-31", False, True),
        ("B", "GREATER_THAN", "a", False, False),
        ("B", "GREATER_THAN", "a", True, True),
        ("abc", "LESS_THAN_OR_EQUAL", "ABC", True, True),
        ("abc", "GREATER_THAN", "100", False, False),
        ("abc", "LESS_THAN", "100", False, False),
        ("abc", "GREATER_THAN", 5, False, False),
        (True, "GREATER_THAN", False, False, False),
        (None, "LESS_THAN", 5, False, False),
        (ABSENT, "LESS_THAN", 5, False, False),
        (ABSENT, "GREATER_THAN_OR_EQUAL", 5, False, False),
        ([1], "GREATER_THAN", 0, False, False),
        ({"a": 1}, "LESS_THAN", 5, False, False),
    ],
)
def test_ordering_compares_numbers_numerically_and_strings_lexicographically(
    subject: Any, operator: str, operand: Any, ignore_case: bool, expected: bool
) -> None:
    assert judge(operator, subject, operand, ignore_case=ignore_case) is expected


def test_ordering_of_incomparable_values_is_false_with_a_note() -> None:
    explained = explain_one(condition("GREATER_THAN", 5), view({"v": True}))
    assert (explained.result, explained.note) == (False, "not ordered: boolean and number")


# --- CONTAINS, STARTS_WITH, ENDS_WITH, MATCHES -------------------------------------------------


@pytest.mark.parametrize(
    ("subject", "operand", "ignore_case", "expected"),
    [
        ("hello world", "world", False, True),
        ("Hello", "hell", False, False),
        ("Hello", "hell", True, True),
        (["a", "b"], "b", False, True),
        ([1, 2], "2", False, True),
        ([1.0, 2.0], 2, False, True),
        (["A"], "a", True, True),
        ([1, 2], 3, False, False),
        ([], "a", False, False),
        ({"a": 1}, "a", False, True),
        ({"A": 1}, "a", False, False),
        ({"A": 1}, "a", True, True),
        ({"a": 1}, "b", False, False),
        ({"a": 1}, ["a"], False, False),
        (12345, "234", False, True),
        ("abc", ["b"], False, False),
        (None, "x", False, False),
        (ABSENT, "x", False, False),
    ],
)
def test_contains_looks_inside_strings_lists_and_object_keys(
    subject: Any, operand: Any, ignore_case: bool, expected: bool
) -> None:
    assert judge("CONTAINS", subject, operand, ignore_case=ignore_case) is expected
    assert judge("NOT_CONTAINS", subject, operand, ignore_case=ignore_case) is not expected


@pytest.mark.parametrize(
    ("operator", "subject", "operand", "ignore_case", "expected"),
    [
        ("STARTS_WITH", "order-1", "order", False, True),
        ("STARTS_WITH", "Order-1", "order", False, False),
        ("STARTS_WITH", "Order-1", "order", True, True),
        ("STARTS_WITH", 12345, "12", False, True),
        ("STARTS_WITH", True, "tr", False, True),
        ("STARTS_WITH", ["order"], "order", False, False),
        ("STARTS_WITH", None, "x", False, False),
        ("STARTS_WITH", ABSENT, "x", False, False),
        ("ENDS_WITH", "file.PDF", ".pdf", False, False),
        ("ENDS_WITH", "file.PDF", ".pdf", True, True),
        ("ENDS_WITH", 5.0, "5", False, True),
        ("ENDS_WITH", {"a": "x"}, "x", False, False),
    ],
)
def test_starts_and_ends_with_work_on_scalar_text_only(
    operator: str, subject: Any, operand: Any, ignore_case: bool, expected: bool
) -> None:
    assert judge(operator, subject, operand, ignore_case=ignore_case) is expected


@pytest.mark.parametrize(
    ("subject", "pattern", "ignore_case", "expected"),
    [
        ("AB1234", r"^[A-Z]{2}\d{4}$", False, True),
        ("ref AB1234 ok", r"[A-Z]{2}\d{4}", False, True),
        ("ab1234", r"^[A-Z]{2}", False, False),
        ("ab1234", r"^[A-Z]{2}", True, True),
        (1234, r"^\d+$", False, True),
        (5.0, r"^5$", False, True),
        (False, "^false$", False, True),
        ("\ud800x", "x$", False, True),
        ("é", "^.$", False, True),
        ([1], ".*", False, False),
        ({"a": 1}, ".*", False, False),
        (None, ".*", False, False),
        (ABSENT, ".*", False, False),
    ],
)
def test_matches_searches_scalar_text_with_re2(
    subject: Any, pattern: str, ignore_case: bool, expected: bool
) -> None:
    assert judge("MATCHES", subject, pattern, ignore_case=ignore_case) is expected


def test_matches_stays_linear_on_a_pattern_that_backtracks_in_python_re() -> None:
    assert judge("MATCHES", "a" * 5000 + "!", r"^(a+)+$") is False


# --- IN, EXISTS, IS_EMPTY, STATUS_CLASS, BETWEEN -----------------------------------------------


@pytest.mark.parametrize(
    ("subject", "operand", "ignore_case", "expected"),
    [
        ("5", [5, 6], False, True),
        (5.0, ["5"], False, True),
        ("b", ["a", "c"], False, False),
        ("A", ["a"], False, False),
        ("A", ["a"], True, True),
        (True, ["true"], False, True),
        ([1], [[1.0], [2]], False, True),
        ("x", [], False, False),
        (ABSENT, [None], False, True),
        (None, [None, "x"], False, True),
        (ABSENT, ["x"], False, False),
    ],
)
def test_in_is_equality_with_any_element(
    subject: Any, operand: list[Any], ignore_case: bool, expected: bool
) -> None:
    assert judge("IN", subject, operand, ignore_case=ignore_case) is expected
    assert judge("NOT_IN", subject, operand, ignore_case=ignore_case) is not expected


@pytest.mark.parametrize(
    ("subject", "exists", "empty"),
    [
        (ABSENT, False, True),
        (None, False, True),
        ("", True, True),
        ([], True, True),
        ({}, True, True),
        (" ", True, False),
        (0, True, False),
        (False, True, False),
        ([None], True, False),
        ({"a": None}, True, False),
        ("x", True, False),
    ],
)
def test_exists_and_is_empty_and_their_negations(subject: Any, exists: bool, empty: bool) -> None:
    assert judge("EXISTS", subject) is exists
    assert judge("NOT_EXISTS", subject) is not exists
    assert judge("IS_EMPTY", subject) is empty
    assert judge("IS_NOT_EMPTY", subject) is not empty


@pytest.mark.parametrize(
    ("status", "status_class", "expected"),
    [
        (200, "2xx", True),
        (204, "2xx", True),
        (299, "2xx", True),
        (199, "2xx", False),
        (300, "2xx", False),
        (404, "4XX", True),
        (503, "5xx", True),
        (0, "2xx", False),
    ],
)
def test_status_class_covers_its_hundred(status: int, status_class: str, expected: bool) -> None:
    spec = condition("STATUS_CLASS", status_class, kind="STATUS")
    assert holds(spec, view(status=status)) is expected


@pytest.mark.parametrize(
    ("subject", "expected"), [("204", True), (204.0, True), ("abc", False), (True, False)]
)
def test_status_class_reads_a_body_value_as_a_number(subject: Any, expected: bool) -> None:
    assert judge("STATUS_CLASS", subject, "2xx") is expected


@pytest.mark.parametrize(
    ("subject", "expected"),
    [
        (5, True),
        (1, True),
        (10, True),
        (10.5, False),
        (0.999, False),
        ("7", True),
        (" 7.5 ", True),
        ("x", False),
        (True, False),
        (None, False),
        (ABSENT, False),
        ([5], False),
    ],
)
def test_between_is_inclusive_and_numeric(subject: Any, expected: bool) -> None:
    assert judge("BETWEEN", subject, [1, 10]) is expected


# --- quantifiers ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("quantifier", "subject", "operator", "operand", "expected"),
    [
        ("ANY", [1, 5], "GREATER_THAN", 3, True),
        ("ANY", [1, 2], "GREATER_THAN", 3, False),
        ("ANY", [5.0, 6.0], "EQUALS", "5", True),
        ("ANY", [], "GREATER_THAN", 3, False),
        ("ALL", [4, 5], "GREATER_THAN", 3, True),
        ("ALL", [1, 5], "GREATER_THAN", 3, False),
        ("ALL", ["a", "b"], "NOT_EQUALS", "c", True),
        ("ALL", [], "GREATER_THAN", 3, True),
        ("NONE", [1, 2], "GREATER_THAN", 3, True),
        ("NONE", [1, 5], "GREATER_THAN", 3, False),
        ("NONE", [], "GREATER_THAN", 3, True),
        ("ALL", ["x", None], "EXISTS", None, False),
        ("ANY", [{"a": 1}], "CONTAINS", "a", True),
    ],
)
def test_quantifiers_apply_the_operator_to_each_element(
    quantifier: str, subject: list[Any], operator: str, operand: Any, expected: bool
) -> None:
    assert judge(operator, subject, operand, quantifier=quantifier) is expected


@pytest.mark.parametrize("quantifier", ["ANY", "ALL", "NONE"])
@pytest.mark.parametrize("subject", [5, "abc", {"a": 1}, None, ABSENT])
def test_a_quantifier_over_a_non_list_subject_is_false(quantifier: str, subject: Any) -> None:
    spec = condition("IS_NOT_EMPTY", quantifier=quantifier)
    assert holds(spec, view(body_with(subject))) is False


def test_a_quantifier_over_a_non_list_subject_explains_why() -> None:
    explained = explain_one(condition("EXISTS", quantifier="ALL"), view({"v": "abc"}))
    assert explained.note == "quantifier ALL needs a list subject, got string"


def test_a_quantifier_note_counts_the_elements_that_held() -> None:
    spec = condition("GREATER_THAN", 3, quantifier="ANY")
    assert explain_one(spec, view({"v": [1, 5, 7]})).note == "ANY: 2 of 3 elements held"


# --- subjects ---------------------------------------------------------------------------------


def test_status_subject_is_the_http_status() -> None:
    assert holds(condition("EQUALS", 404, kind="STATUS"), view(status=404)) is True


def test_status_subject_is_absent_when_there_was_no_response() -> None:
    explained = explain_one(condition("EXISTS", kind="STATUS"), view(status=0))
    assert (explained.result, explained.subject_present) == (False, False)
    assert explained.note == "subject absent: no response"


def test_body_subject_is_absent_with_a_note_when_the_body_is_not_json() -> None:
    spec = condition("NOT_EXISTS", path="@")
    explained = explain_one(spec, view("plain text", body_is_json=False))
    assert explained.result is True
    assert (explained.subject_present, explained.subject_value) == (False, None)
    assert explained.note == "response body is not JSON"


def test_body_subject_follows_a_jmespath_expression() -> None:
    body = {"items": [{"sku": "A", "qty": 1}, {"sku": "B", "qty": 3}]}
    spec = condition("EQUALS", ["B"], path="items[?qty > `2`].sku")
    assert holds(spec, view(body)) is True


def test_body_subject_yielding_null_is_absent() -> None:
    explained = explain_one(condition("EXISTS", path="a.b"), view({"a": {"b": None}}))
    assert (explained.result, explained.subject_present) == (False, False)
    assert explained.note == "subject absent: the expression yielded null"


def test_body_subject_whose_jmespath_fails_at_run_time_is_absent_with_the_reason() -> None:
    explained = explain_one(condition("EXISTS", path="length(@)"), view(5))
    assert (explained.result, explained.subject_present) == (False, False)
    assert explained.note.startswith("JMESPath evaluation failed: In function length()")


@pytest.mark.parametrize("name", ["X-Request-ID", "x-request-id", "X-REQUEST-ID"])
def test_header_subject_is_case_insensitive(name: str) -> None:
    spec = condition("EQUALS", "abc", kind="HEADER", path=name)
    assert holds(spec, view(headers={"x-request-id": "abc"})) is True


def test_missing_header_is_absent() -> None:
    explained = explain_one(condition("EXISTS", kind="HEADER", path="etag"), view())
    assert (explained.result, explained.subject_present, explained.note) == (
        False,
        False,
        "header absent",
    )


def test_variable_subject_follows_a_nested_path() -> None:
    spec = condition("EQUALS", "gold", kind="VARIABLE", path="customer.tier")
    assert holds(spec, view(variables={"customer": {"tier": "gold"}})) is True


def test_variable_from_a_struct_float_equals_its_integer_text() -> None:
    spec = condition("EQUALS", "5", kind="VARIABLE", path="count")
    assert holds(spec, view(variables={"count": 5.0})) is True


def test_missing_variable_is_absent() -> None:
    explained = explain_one(condition("EXISTS", kind="VARIABLE", path="a.b"), view())
    assert (explained.subject_present, explained.note) == (False, "variable absent")


def test_null_variable_is_present_but_does_not_exist() -> None:
    spec = condition("EXISTS", kind="VARIABLE", path="a")
    explained = explain_one(spec, view(variables={"a": None}))
    assert (explained.result, explained.subject_present) == (False, True)


# --- branches and combinators -----------------------------------------------------------------

TRUE = condition("EXISTS", kind="STATUS")
FALSE = condition("NOT_EXISTS", kind="STATUS")


@pytest.mark.parametrize(
    ("combinator", "conditions", "expected"),
    [
        ("ALL", [], True),
        ("ALL", [TRUE], True),
        ("ALL", [TRUE, TRUE], True),
        ("ALL", [TRUE, FALSE], False),
        ("ANY", [], False),
        ("ANY", [FALSE, TRUE], True),
        ("ANY", [FALSE, FALSE], False),
    ],
)
def test_combinators(combinator: str, conditions: list[dict[str, Any]], expected: bool) -> None:
    compiled = compile_branches([branch(*conditions, combinator=combinator)])
    assert (compiled.decide(view(), explain=False).index == 0) is expected
    assert compiled.decide(view(), explain=True).explanations[0].matched is expected


@pytest.mark.parametrize(
    ("branches", "expected"),
    [
        ([branch(TRUE), branch(TRUE)], 0),
        ([branch(FALSE), branch(TRUE), branch(TRUE)], 1),
        ([branch(FALSE), branch(FALSE)], None),
        ([], None),
    ],
)
def test_the_first_branch_that_holds_wins(branches: list[Branch], expected: int | None) -> None:
    compiled = compile_branches(branches)
    assert compiled.decide(view(), explain=False) == BranchDecision(expected, ())
    assert compiled.decide(view(), explain=True).index == expected


class RecordingVariables(Mapping[str, Any]):
    """Variables that remember which names were looked up, to observe short-circuiting."""

    def __init__(self, data: dict[str, Any]) -> None:
        self.data, self.seen = data, set[str]()

    def __getitem__(self, key: str) -> Any:
        self.seen.add(key)
        return self.data[key]

    def __contains__(self, key: object) -> bool:
        self.seen.add(str(key))
        return key in self.data

    def __iter__(self) -> Iterator[str]:
        return iter(self.data)

    def __len__(self) -> int:
        return len(self.data)


def test_decide_short_circuits_unless_explaining() -> None:
    compiled = compile_branches(
        [
            branch(
                condition("EXISTS", kind="VARIABLE", path="a"),
                condition("EXISTS", kind="VARIABLE", path="b"),
            ),
            branch(condition("EXISTS", kind="VARIABLE", path="c")),
            branch(condition("EXISTS", kind="VARIABLE", path="d")),
        ]
    )
    quick = RecordingVariables({"c": 1})
    assert compiled.decide(view(variables=quick), explain=False).index == 1
    assert quick.seen == {"a", "c"}
    explained = RecordingVariables({"c": 1})
    assert compiled.decide(view(variables=explained), explain=True).index == 1
    assert explained.seen == {"a", "b", "c"}


def test_explain_lists_every_condition_up_to_the_winner_and_skips_later_branches() -> None:
    spec_a = condition("EQUALS", 5, path="a")
    spec_b = condition("STARTS_WITH", "x", path="b", ignore_case=True)
    compiled = compile_branches(
        [
            branch(spec_a, spec_b, target="first"),
            branch(spec_a, target="second", combinator="ANY"),
            branch(target="third"),
        ]
    )
    decision = compiled.decide(view({"a": "5", "b": "yes"}), explain=True)
    assert decision.index == 1
    first, second, third = decision.explanations
    assert (first.index, first.target, first.evaluated, first.matched) == (0, "first", True, False)
    assert [c.result for c in first.conditions] == [True, False]
    assert [c.note for c in first.conditions] == [
        "compared as numbers",
        "compared as strings, ignoring case",
    ]
    assert first.conditions[0].subject_value == "5"
    assert first.conditions[0].operator is Operator.EQUALS
    assert first.conditions[0].operand == 5
    assert (second.evaluated, second.matched, len(second.conditions)) == (True, True, 1)
    assert (third.index, third.target, third.evaluated, third.matched) == (2, "third", False, False)
    assert third.conditions == ()


def test_explanations_are_empty_when_not_asked_for() -> None:
    assert compile_branches([branch(TRUE)]).decide(view(), explain=False).explanations == ()


# --- compile errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("spec", "field", "fragment"),
    [
        (condition("EXISTS", path="a["), "subject.path", "invalid JMESPath expression"),
        (condition("EXISTS", path="`"), "subject.path", "invalid JMESPath expression"),
        (condition("EXISTS", path="nope(@)"), "subject.path", "unknown JMESPath function nope()"),
        (condition("EXISTS", path="length(@, @)"), "subject.path", "takes 1 argument(s), got 2"),
        (condition("EXISTS", path="merge()"), "subject.path", "takes at least 1 argument(s)"),
        (condition("MATCHES", "("), "operand", "invalid regular expression: missing )"),
        (condition("MATCHES", r"(?<=a)b"), "operand", "RE2 syntax"),
        (condition("MATCHES", r"(a)\1"), "operand", "invalid escape sequence"),
    ],
)
def test_compile_refuses_bad_expressions_naming_the_field(
    spec: dict[str, Any], field: str, fragment: str
) -> None:
    error = compile_error(branch(TRUE), branch(TRUE, spec))
    assert [v.field for v in error.violations] == [f"branches[1].conditions[1].{field}"]
    assert fragment in error.violations[0].description


def test_compile_collects_every_violation() -> None:
    error = compile_error(
        branch(condition("EXISTS", path="a["), condition("MATCHES", "(")),
        branch(TRUE),
        branch(condition("MATCHES", "[", path="b)")),
    )
    assert [v.field for v in error.violations] == [
        "branches[0].conditions[0].subject.path",
        "branches[0].conditions[1].operand",
        "branches[2].conditions[0].subject.path",
        "branches[2].conditions[0].operand",
    ]


def test_compile_refuses_an_operand_the_model_would_have_refused() -> None:
    unchecked = Condition.model_construct(
        subject=Condition.model_validate(TRUE).subject, operator=Operator.IN, operand="x"
    )
    error = compile_error(Branch.model_construct(target="t", conditions=(unchecked,)))
    assert error.violations[0].field == "branches[0].conditions[0].operand"
    assert "must be a list" in error.violations[0].description


OPERANDS = [None, "x", "2xx", 5, True, [], ["a"], [1, 10], [10, 1], ["1", "10"], {"k": 1}]


@pytest.mark.parametrize("operator", list(Operator))
def test_compile_and_the_model_refuse_the_same_operands_with_the_same_words(
    operator: Operator,
) -> None:
    # One operand rule set: what validation refuses, compiling an unvalidated condition refuses
    # too, with the same description; what validation accepts, compiling accepts.
    subject = Condition.model_validate(TRUE).subject
    for operand in OPERANDS:
        try:
            Condition(subject=subject, operator=operator, operand=operand)
            refused = ""
        except ValueError as exc:
            refused = str(exc)
        unchecked = Condition.model_construct(subject=subject, operator=operator, operand=operand)
        branch_ = Branch.model_construct(target="t", conditions=(unchecked,))
        if not refused:
            compile_branches([branch_])
            continue
        assert "operand" in refused
        descriptions = [v.description for v in compile_error(branch_).violations]
        assert len(descriptions) == 1
        assert descriptions[0] in refused, (operator, operand)


def test_compile_query_finds_without_raising() -> None:
    assert compile_query("a.b").find({"a": {"b": 5}}) == (5, "")
    assert compile_query("abs(@)").find("x")[0] is None


# --- never raises -----------------------------------------------------------------------------


def test_deeply_nested_values_are_judged_without_raising() -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    spec = condition("EQUALS", [[1]], path="@")
    explained = explain_one(spec, view(deep))
    assert explained.result is False
    # The value is too large to copy into the explanation, which says so after the reason.
    reason, _, truncation = explained.note.partition("; ")
    assert reason in {"could not be evaluated: RecursionError", "compared as JSON values"}
    assert "max_explain_value_bytes" in truncation


JSON_SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(min_value=-(10**40), max_value=10**40),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(alphabet=st.characters(codec=None, exclude_categories=())),
    st.sampled_from(
        ["5", "05", " 5.0 ", "1e3", "1e400", "nan", "true", "FALSE", "1" * 5000, "\ud800"]
    ),
)
JSON_VALUES = st.recursive(
    JSON_SCALARS,
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=4), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)

EVERY_OPERATOR: list[tuple[str, Any]] = [
    ("EQUALS", "5"),
    ("EQUALS", None),
    ("EQUALS", [1, {"a": True}]),
    ("NOT_EQUALS", True),
    ("GREATER_THAN", 5),
    ("GREATER_THAN_OR_EQUAL", "m"),
    ("LESS_THAN", "1e3"),
    ("LESS_THAN_OR_EQUAL", 0.5),
    ("CONTAINS", "a"),
    ("NOT_CONTAINS", 1),
    ("STARTS_WITH", "x"),
    ("ENDS_WITH", "5"),
    ("MATCHES", "^[a-z]+$"),
    ("IN", [1, "two", None, [3]]),
    ("NOT_IN", [True]),
    ("EXISTS", None),
    ("NOT_EXISTS", None),
    ("IS_EMPTY", None),
    ("IS_NOT_EMPTY", None),
    ("STATUS_CLASS", "2xx"),
    ("BETWEEN", [-1, 1.5]),
]
ALL_OPERATORS_NODE = [
    branch(
        *(
            condition(op, operand, path=path, ignore_case=ignore_case, quantifier=quantifier)
            for op, operand in EVERY_OPERATOR
        ),
        combinator=combinator,
    )
    for path in ["@", "a", "a.b", "[0]", "keys(@)", "length(@)", "sort(@)", "*"]
    for ignore_case in (False, True)
    for quantifier in (None, "ANY", "ALL", "NONE")
    for combinator in ("ALL", "ANY")
]
ALL_SUBJECTS_NODE = [
    branch(condition("EQUALS", "5", kind="VARIABLE", path="a.b")),
    branch(condition("CONTAINS", "x", kind="HEADER", path="X-Test", ignore_case=True)),
    branch(condition("BETWEEN", [100, 599], kind="STATUS")),
]
COMPILED = compile_branches(ALL_OPERATORS_NODE + ALL_SUBJECTS_NODE)


def test_the_property_node_covers_every_operator() -> None:
    assert {op for op, _ in EVERY_OPERATOR} == {op.value for op in Operator}


@settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(
    body=JSON_VALUES,
    body_is_json=st.booleans(),
    status=st.integers(min_value=0, max_value=999),
    variables=st.dictionaries(st.text(max_size=3) | st.just("a"), JSON_VALUES, max_size=3),
    header=st.text(max_size=8),
)
def test_decide_never_raises_and_answers_a_branch_in_range(
    body: Any, body_is_json: bool, status: int, variables: dict[str, Any], header: str
) -> None:
    response = view(
        body,
        status=status,
        headers={"x-test": header},
        body_is_json=body_is_json,
        variables=variables,
    )
    quick = COMPILED.decide(response, explain=False)
    explained = COMPILED.decide(response, explain=True)
    count = len(ALL_OPERATORS_NODE) + len(ALL_SUBJECTS_NODE)
    assert quick.index is None or 0 <= quick.index < count
    assert explained.index == quick.index
    assert len(explained.explanations) == count
    assert all(
        b.evaluated == (quick.index is None or b.index <= quick.index)
        for b in explained.explanations
    )
