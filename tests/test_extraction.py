"""sidecar.core.extraction: casts by row, defaults, required, statuses, order, compile errors."""

from __future__ import annotations

import math
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.budget import AnswerTooLargeError, value_floor
from sidecar.core.extraction import (
    compile_extractions,
    required_failures,
)
from sidecar.core.model.node import Extraction
from sidecar.core.model.outcome import ExtractionResult, ExtractionStatus
from sidecar.errors import InvalidArgumentError

EXTRACTED = ExtractionStatus.EXTRACTED
DEFAULTED = ExtractionStatus.DEFAULTED
MISSING = ExtractionStatus.MISSING
CAST_FAILED = ExtractionStatus.CAST_FAILED
NO_DOCUMENT = ExtractionStatus.NO_DOCUMENT


def extraction(path: str = "v", variable: str = "out", **fields: Any) -> Extraction:
    return Extraction.model_validate({"variable": variable, "path": path, **fields})


def extract_one(
    document: Any, *, has_document: bool = True, **fields: Any
) -> tuple[dict[str, Any], ExtractionResult]:
    variables, results = compile_extractions([extraction(**fields)]).apply(
        document, has_document=has_document
    )
    assert len(results) == 1
    return variables, results[0]


def cast_one(value: Any, cast: str | None) -> ExtractionResult:
    variables, result = extract_one({"v": value}, cast=cast)
    if result.succeeded:
        assert variables == {"out": result.value}
    else:
        assert variables == {}
    return result


def compile_error(*extractions: Extraction, **options: Any) -> InvalidArgumentError:
    with pytest.raises(InvalidArgumentError) as caught:
        compile_extractions(extractions, **options)
    return caught.value


# --- casts ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cast", "value", "expected"),
    [
        (None, "x", "x"),
        (None, 5.0, 5),
        (None, 5.5, 5.5),
        (None, True, True),
        (None, {"a": 1.0, "b": [2.0, "c"]}, {"a": 1, "b": [2, "c"]}),
        ("STRING", "abc", "abc"),
        ("STRING", "", ""),
        ("STRING", 5, "5"),
        ("STRING", 5.0, "5"),
        ("STRING", 5.5, "5.5"),
        ("STRING", True, "true"),
        ("STRING", [1.0, "a"], '[1,"a"]'),
        ("STRING", {"a": 1.0}, '{"a":1}'),
        ("STRING", {"é": "ü"}, '{"é":"ü"}'),
        ("NUMBER", 5, 5),
        ("NUMBER", 5.5, 5.5),
        ("NUMBER", 5.0, 5),
        ("NUMBER", "5", 5),
        ("NUMBER", " 05 ", 5),
        ("NUMBER", "5.0", 5),
        ("NUMBER", "-2.5", -2.5),
        ("NUMBER", "1e3", 1000),
        ("INTEGER", 5, 5),
        ("INTEGER", 5.0, 5),
        ("INTEGER", "5", 5),
        ("INTEGER", "5.0", 5),
        ("INTEGER", "-7", -7),
        ("INTEGER", "1e3", 1000),
        ("BOOLEAN", True, True),
        ("BOOLEAN", False, False),
        ("BOOLEAN", "true", True),
        ("BOOLEAN", "FALSE", False),
        ("BOOLEAN", " True ", True),
        ("JSON", "a", '"a"'),
        ("JSON", 5.0, "5"),
        ("JSON", True, "true"),
        ("JSON", [1, 2.5], "[1,2.5]"),
        ("JSON", {"a": [1.0, None]}, '{"a":[1,null]}'),
        ("JSON", "ü", '"ü"'),
    ],
)
def test_cast_converts_values_it_accepts(cast: str | None, value: Any, expected: Any) -> None:
    result = cast_one(value, cast)
    assert (result.status, result.message) == (EXTRACTED, "")
    assert result.value == expected
    assert type(result.value) is type(expected)


@pytest.mark.parametrize(
    ("cast", "value"),
    [
        ("NUMBER", "abc"),
        ("NUMBER", ""),
        ("NUMBER", True),
        ("NUMBER", [1]),
        ("NUMBER", {"a": 1}),
        ("NUMBER", "nan"),
        ("NUMBER", "1e400"),
        ("NUMBER", math.inf),
        ("NUMBER", "1" * 5000),
        ("INTEGER", 5.5),
        ("INTEGER", "5.5"),
        ("INTEGER", True),
        ("INTEGER", "abc"),
        ("INTEGER", [5]),
        ("BOOLEAN", "yes"),
        ("BOOLEAN", 1),
        ("BOOLEAN", 0),
        ("BOOLEAN", "1"),
        ("BOOLEAN", [True]),
        ("JSON", math.nan),
        ("JSON", [math.inf]),
        pytest.param("STRING", 10**5000, id="STRING-int-beyond-str-digit-limit"),
    ],
)
def test_cast_refuses_values_it_cannot_convert(cast: str, value: Any) -> None:
    result = cast_one(value, cast)
    assert (result.status, result.value, result.succeeded) == (CAST_FAILED, None, False)
    assert cast in result.message


def test_cast_failure_message_shows_a_short_preview_of_the_value() -> None:
    result = cast_one("x" * 1000, "NUMBER")
    assert result.message.startswith("'xxxx")
    assert "is not a NUMBER" in result.message
    assert len(result.message) < 200


def test_cast_failure_message_of_a_deep_value_is_bounded() -> None:
    deep: Any = "leaf"
    for _ in range(3000):
        deep = {"k": deep}
    result = cast_one(deep, "BOOLEAN")
    assert result.status is CAST_FAILED
    assert len(result.message) < 200


@pytest.mark.parametrize("cast", ["STRING", "JSON"])
def test_text_casts_of_a_too_deep_value_fail_instead_of_raising(cast: str) -> None:
    deep: Any = 1
    for _ in range(5000):
        deep = [deep]
    assert cast_one(deep, cast).status is CAST_FAILED


# --- statuses and defaults --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "has_document", "fields", "status", "value", "message"),
    [
        ({"v": 1}, True, {}, EXTRACTED, 1, ""),
        ({"v": 0}, True, {"default_value": 9}, EXTRACTED, 0, ""),
        ({"v": False}, True, {"default_value": True}, EXTRACTED, False, ""),
        ({"v": ""}, True, {"default_value": "d"}, EXTRACTED, "", ""),
        ({}, True, {}, MISSING, None, "'v' yielded null and there is no default"),
        ({"v": None}, True, {}, MISSING, None, "'v' yielded null and there is no default"),
        ({}, True, {"default_value": "d"}, DEFAULTED, "d", "'v' yielded null; default used"),
        (None, False, {}, NO_DOCUMENT, None, "no JSON document and there is no default"),
        ("text", False, {"default_value": 3}, DEFAULTED, 3, "no JSON document; default used"),
        ({}, True, {"default_value": "5", "cast": "INTEGER"}, DEFAULTED, 5, None),
        ({}, True, {"default_value": {"a": 1.0}, "cast": "JSON"}, DEFAULTED, '{"a":1}', None),
        ({"v": "x"}, True, {"default_value": 1, "cast": "NUMBER"}, CAST_FAILED, None, None),
    ],
)
def test_status_value_and_message(
    document: Any,
    has_document: bool,
    fields: dict[str, Any],
    status: ExtractionStatus,
    value: Any,
    message: str | None,
) -> None:
    variables, result = extract_one(document, has_document=has_document, **fields)
    assert (result.status, result.value) == (status, value)
    if message is not None:
        assert result.message == message
    assert variables == ({"out": value} if result.succeeded else {})


def test_a_jmespath_failing_at_run_time_is_missing_with_the_reason() -> None:
    _, result = extract_one({"v": 5}, path="length(v)")
    assert result.status is MISSING
    assert "JMESPath evaluation failed: In function length()" in result.message


def test_a_jmespath_failing_at_run_time_falls_back_to_the_default() -> None:
    _, result = extract_one({"v": 5}, path="length(v)", default_value=0)
    assert (result.status, result.value) == (DEFAULTED, 0)
    assert result.message.endswith("; default used")


def test_a_default_that_does_not_fit_its_cast_is_refused_at_compile_time() -> None:
    error = compile_error(
        extraction(variable="a"), extraction(variable="b", default_value="many", cast="INTEGER")
    )
    assert [v.field for v in error.violations] == ["extractions[1].default_value"]
    assert error.violations[0].description == (
        "default_value 'many' is not an INTEGER: use a number or a numeric string"
    )


# --- required, order, variables ---------------------------------------------------------------


def test_results_keep_the_extractions_order_and_variables_hold_only_successes() -> None:
    compiled = compile_extractions(
        [
            extraction("c", variable="third_listed"),
            extraction("missing", variable="absent", required=True),
            extraction("a", variable="first_listed", cast="STRING"),
            extraction("b", variable="bad", cast="BOOLEAN"),
            extraction("nothing", variable="fallback", default_value=[1.0]),
        ]
    )
    variables, results = compiled.apply({"a": 1.0, "b": "maybe", "c": 2.0}, has_document=True)
    assert [r.variable for r in results] == [
        "third_listed",
        "absent",
        "first_listed",
        "bad",
        "fallback",
    ]
    assert [r.status for r in results] == [EXTRACTED, MISSING, EXTRACTED, CAST_FAILED, DEFAULTED]
    assert [r.required for r in results] == [False, True, False, False, False]
    assert variables == {"third_listed": 2, "first_listed": "1", "fallback": [1]}
    assert type(variables["third_listed"]) is int


@pytest.mark.parametrize(
    ("document", "fields", "succeeded"),
    [
        ({"v": 1}, {"required": True}, True),
        ({}, {"required": True}, False),
        ({}, {"required": True, "default_value": 0}, True),
        ({"v": "x"}, {"required": True, "cast": "NUMBER"}, False),
        ({}, {"required": False}, True),
    ],
)
def test_required_extractions_must_set_a_value(
    document: Any, fields: dict[str, Any], succeeded: bool
) -> None:
    _, results = compile_extractions([extraction(**fields)]).apply(document, has_document=True)
    assert required_failures(results) == (() if succeeded else results)


def test_no_document_fails_a_required_extraction() -> None:
    _, results = compile_extractions([extraction(required=True)]).apply(None, has_document=False)
    assert results[0].status is NO_DOCUMENT
    assert required_failures(results) == results


def test_no_extractions_set_nothing() -> None:
    assert compile_extractions([]).apply({"v": 1}, has_document=True) == ({}, ())


# --- compile errors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "fragment"),
    [
        ("a[", "invalid JMESPath expression"),
        ("a.", "invalid JMESPath expression"),
        ("nope(@)", "unknown JMESPath function nope()"),
        ("length()", "takes 1 argument(s), got 0"),
    ],
)
def test_compile_refuses_a_bad_path_naming_the_field(path: str, fragment: str) -> None:
    error = compile_error(extraction(variable="a"), extraction(variable="b"), extraction(path))
    assert [v.field for v in error.violations] == ["extractions[2].path"]
    assert fragment in error.violations[0].description


def test_compile_collects_every_violation_under_the_given_prefix() -> None:
    error = compile_error(
        extraction("a[", variable="a"),
        extraction("ok", variable="b"),
        extraction("ok", variable="c", default_value="x", cast="BOOLEAN"),
        field_prefix="node.extractions",
    )
    assert [v.field for v in error.violations] == [
        "node.extractions[0].path",
        "node.extractions[2].default_value",
    ]


# --- never raises -----------------------------------------------------------------------------

JSON_VALUES = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(10**40), max_value=10**40),
        st.floats(allow_nan=True, allow_infinity=True),
        st.text(),
        st.sampled_from(["5", "5.5", "1e3", "1e400", "TRUE", "1" * 5000, "\ud800"]),
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(st.one_of(st.text(max_size=3), st.integers()), children, max_size=4),
    ),
    max_leaves=20,
)
EVERY_CAST = compile_extractions(
    [
        extraction(path, variable=f"v{index}_{cast or 'none'}", cast=cast, default_value=default)
        for index, path in enumerate(["@", "a", "a.b", "[0]", "keys(@)", "length(@)", "*"])
        for cast, default in [
            (None, None),
            ("STRING", "d"),
            ("NUMBER", None),
            ("INTEGER", 0),
            ("BOOLEAN", None),
            ("JSON", None),
        ]
    ]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(document=JSON_VALUES, has_document=st.booleans())
def test_apply_never_raises_and_reports_every_extraction(document: Any, has_document: bool) -> None:
    variables, results = EVERY_CAST.apply(document, has_document=has_document)
    assert len(results) == 7 * 6
    assert variables == {r.variable: r.value for r in results if r.succeeded}
    for result in results:
        assert result.succeeded or result.message
        assert not has_document or result.status is not NO_DOCUMENT


def test_a_variable_extracted_twice_is_refused_naming_the_second_extraction():
    duplicated = [
        Extraction(variable="tier", path="a"),
        Extraction(variable="other", path="b"),
        Extraction(variable="tier", path="c"),
    ]

    with pytest.raises(InvalidArgumentError) as caught:
        compile_extractions(duplicated, field_prefix="node.extractions")

    assert [(v.field, v.description) for v in caught.value.violations] == [
        ("node.extractions[2].variable", "'tier' is already extracted by extraction 0")
    ]


WITH_CONTAINER_DEFAULTS = compile_extractions(
    [
        extraction("absent", variable="listed", default_value=["a", {"b": [1, 2.5]}]),
        extraction("absent", variable="mapped", default_value={"k": ["v"]}),
    ]
)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow], deadline=None)
@given(document=JSON_VALUES)
def test_each_value_is_sized_as_it_is_made_and_the_sizes_bound_the_answer(document: Any) -> None:
    """`value_bytes` is the value's encoded floor, measured where the value was made (the
    answer's size is known without walking it again); past `max_answer_bytes`, apply refuses."""
    _, results = EVERY_CAST.apply(document, has_document=True)
    _, defaulted = WITH_CONTAINER_DEFAULTS.apply(document, has_document=True)
    for result in results + defaulted:
        expected = value_floor(result.value) if result.succeeded else 0
        assert result.value_bytes == expected, result
    total = sum(result.value_bytes for result in results)
    EVERY_CAST.apply(document, has_document=True, max_answer_bytes=total)
    with pytest.raises(AnswerTooLargeError, match="extracted values alone"):
        EVERY_CAST.apply(document, has_document=True, max_answer_bytes=total - 1)


def test_roots_are_the_first_fields_of_plain_paths_or_none() -> None:
    """What a caller holding the document in another form must read (ExtractVariables' `json`)."""
    plain = compile_extractions(
        [extraction("status", variable="a"), extraction("carrier.name", variable="b")]
    )
    assert plain.roots == frozenset({"status", "carrier"})
    for other in ("@", "items[0].sku", "keys(@)", "*"):
        mixed = compile_extractions([extraction("status", variable="a"), extraction(other)])
        assert mixed.roots is None, other
