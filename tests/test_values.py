"""JSON values: dotted lookup, numbers read from text, and the canonical text of a value."""

from __future__ import annotations

import math

import pytest

from sidecar.core.values import (
    MISSING,
    as_boolean,
    as_number,
    is_number,
    lookup,
    normalise_numbers,
    number_text,
    scalar_text,
    value_text,
)

VARIABLES = {
    "order_number": "A-1",
    "nothing": None,
    "customer": {"email": "a@example.com", "tier": None, "address": {"city": "Lyon"}},
    "items": [{"sku": "x"}],
    "count": 0,
}


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        (("order_number",), "A-1"),
        (("customer", "email"), "a@example.com"),
        (("customer", "address", "city"), "Lyon"),
        (("customer", "address"), {"city": "Lyon"}),
        (("count",), 0),
        ((), VARIABLES),
    ],
)
def test_lookup_follows_a_dotted_path(path, expected):
    assert lookup(VARIABLES, path) == expected


@pytest.mark.parametrize(
    "path",
    [
        ("absent",),
        ("customer", "phone"),
        ("order_number", "length"),  # cannot step into a string
        ("items", "0"),  # lists are not indexed by dotted paths
        ("nothing", "deeper"),  # cannot step through null
        ("customer", "tier", "name"),
    ],
)
def test_lookup_of_an_absent_path_is_missing(path):
    assert lookup(VARIABLES, path) is MISSING


@pytest.mark.parametrize("path", [("nothing",), ("customer", "tier")])
def test_lookup_of_a_present_null_is_none_not_missing(path):
    result = lookup(VARIABLES, path)
    assert result is None
    assert result is not MISSING


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (5, 5),
        (-3, -3),
        (2.5, 2.5),
        ("5", 5),
        ("05", 5),
        (" 05 ", 5),
        (" 5 ", 5),
        ("\t7\n", 7),
        ("+5", 5),
        ("-5", -5),
        ("5.0", 5.0),
        ("5.", 5.0),
        (".5", 0.5),
        ("1e3", 1000.0),
        ("1E-2", 0.01),
        ("-2.5e+1", -25.0),
        ("12345678901234567890", 12345678901234567890),
    ],
)
def test_as_number_reads_numbers_and_numeric_text(value, expected):
    result = as_number(value)
    assert result == expected
    assert type(result) is type(expected)


@pytest.mark.parametrize(
    "value",
    [
        "nan",
        "NaN",
        "inf",
        "-inf",
        "Infinity",
        "1e999",
        math.nan,
        math.inf,
        -math.inf,
        True,
        False,
        "true",
        None,
        "",
        " ",
        ".",
        "abc",
        "5 apples",
        "5e",
        "0x10",
        "1_000",
        "1,000",
        [5],
        {"n": 5},
    ],
)
def test_as_number_refuses_non_numbers_nan_infinities_and_booleans(value):
    assert as_number(value) is None


@pytest.mark.parametrize(
    ("value", "expected"),
    [(0, True), (1.5, True), (math.nan, True), (True, False), (False, False), ("5", False)],
)
def test_is_number_excludes_booleans_and_text(value, expected):
    assert is_number(value) is expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (12345.0, "12345"),
        (12345, "12345"),
        (-3.0, "-3"),
        (-0.0, "0"),
        (0.1, "0.1"),
        (2.5, "2.5"),
        (1.5e-7, "1.5e-07"),
        (2.0**53 - 1, "9007199254740991"),
        # Beyond 2**53 a double no longer names one integer: it keeps its float spelling.
        (2.0**53, "9007199254740992.0"),
        (1e20, "1e+20"),
        (10**20, "100000000000000000000"),
    ],
)
def test_number_text_drops_the_fraction_of_integral_values(value, expected):
    assert number_text(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        ("", ""),
        (True, "true"),
        (False, "false"),
        (7.0, "7"),
        (None, None),
        ([1], None),
        ({"a": 1}, None),
    ],
)
def test_scalar_text_covers_strings_numbers_and_booleans_only(value, expected):
    assert scalar_text(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("text", "text"),
        (12345.0, "12345"),
        (True, "true"),
        (None, "null"),
        ([1.0, "a", None, False], '[1,"a",null,false]'),
        ({"n": 2.0, "x": {"y": [3.5]}}, '{"n":2,"x":{"y":[3.5]}}'),
        ({"name": "Ren\u00e9e"}, '{"name":"Ren\u00e9e"}'),
        ([], "[]"),
        ({}, "{}"),
    ],
)
def test_value_text_spells_every_json_value(value, expected):
    assert value_text(value) == expected


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (3.0, 3),
        (3.5, 3.5),
        (True, True),
        ("3.0", "3.0"),
        (None, None),
        ([1.0, [2.0, 2.5]], [1, [2, 2.5]]),
        ({"a": 1.0, "b": {"c": [4.0, {"d": 5.0}]}}, {"a": 1, "b": {"c": [4, {"d": 5}]}}),
        (2.0**53, 2.0**53),
    ],
)
def test_normalise_numbers_turns_integral_floats_into_ints_recursively(value, expected):
    result = normalise_numbers(value)
    assert result == expected
    assert repr(result) == repr(expected)  # 3 and 3.0 compare equal; their types must not differ


@pytest.mark.parametrize("text", ["\u0661\u0662", "\uff15", "5\u0660"])
def test_non_ascii_digits_are_text_not_numbers(text):
    assert as_number(text) is None


def test_as_number_refuses_integer_text_longer_than_python_converts() -> None:
    # int() raises beyond sys.get_int_max_str_digits(); as_number answers None, as documented.
    assert as_number("1" * 5000) is None
    assert as_number("1" * 4000) == int("1" * 4000)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (True, True),
        (False, False),
        ("true", True),
        (" FALSE ", False),
        ("True", True),
        ("yes", None),
        ("1", None),
        (1, None),
        (0, None),
        (None, None),
        ("", None),
        (["true"], None),
    ],
)
def test_as_boolean_reads_booleans_and_their_text_only(value, expected):
    assert as_boolean(value) is expected
