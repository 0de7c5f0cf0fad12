"""The one JSON-document parser: what it reads, what it refuses and with which message."""

from __future__ import annotations

import json
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sidecar.core.documents import MAX_JSON_DEPTH, MAX_JSON_NODES, DocumentError, parse_document


def nested(depth: int) -> Any:
    """A document `depth` levels deep: depth - 1 lists around a number."""
    document: Any = 1
    for _ in range(depth - 1):
        document = [document]
    return document


@pytest.mark.parametrize(
    "document",
    [{"order": {"status": "shipped", "items": [1, 2.5, None, True]}}, [7, 8], "text", 0, None],
)
def test_any_json_value_is_a_document(document: Any) -> None:
    assert parse_document(json.dumps(document).encode()) == document


@pytest.mark.parametrize(
    ("data", "fragment"),
    [
        (b"{not json", "Expecting property name"),
        (b"", "Expecting value"),
        (b"\xff\xfe{}", "not valid UTF-8 JSON"),
        (b'{"n": NaN}', "NaN is not a JSON number"),
        (b'{"n": Infinity}', "Infinity is not a JSON number"),
        (b"[-Infinity]", "-Infinity is not a JSON number"),
    ],
)
def test_text_that_is_not_json_is_malformed(data: bytes, fragment: str) -> None:
    with pytest.raises(DocumentError) as caught:
        parse_document(data)

    assert caught.value.malformed is True
    assert str(caught.value).startswith("not valid UTF-8 JSON: ")
    assert fragment in str(caught.value)


def test_the_deepest_document_allowed_is_read() -> None:
    assert parse_document(json.dumps(nested(MAX_JSON_DEPTH)).encode()) == nested(MAX_JSON_DEPTH)


def test_one_level_deeper_is_refused_but_not_malformed() -> None:
    with pytest.raises(DocumentError) as caught:
        parse_document(json.dumps(nested(MAX_JSON_DEPTH + 1)).encode())

    assert caught.value.malformed is False
    assert str(caught.value) == f"nests deeper than {MAX_JSON_DEPTH} levels"


def test_more_values_than_the_bound_are_refused_but_not_malformed() -> None:
    with pytest.raises(DocumentError) as caught:
        parse_document(json.dumps([0] * MAX_JSON_NODES).encode())  # the list is one more value

    assert caught.value.malformed is False
    assert str(caught.value) == f"has more than {MAX_JSON_NODES} JSON values"


def test_the_largest_document_allowed_is_read() -> None:
    values = [0] * (MAX_JSON_NODES - 1)

    assert parse_document(json.dumps(values).encode()) == values


def test_bracket_text_inside_strings_does_not_refuse_a_shallow_document() -> None:
    # The byte count is only a shortcut: many brackets in a string lead to a walk, not a refusal.
    document = {"text": "[" * (MAX_JSON_DEPTH * 2)}

    assert parse_document(json.dumps(document).encode()) == document


# -- the same documents as Python's json reads them --------------------------------------------


def read_by_json(data: bytes) -> tuple[bool, Any]:
    """What the standard library reads (with NaN refused), or (False, None) if it refuses."""

    def refuse(constant: str) -> None:
        raise ValueError(constant)

    try:
        return True, json.loads(data, parse_constant=refuse)
    except (ValueError, RecursionError):
        return False, None


def identical(a: Any, b: Any) -> bool:
    """Equal, with the same types throughout (1, 1.0 and True differ; so do -0.0 and 0.0) and
    the same key order."""
    if type(a) is not type(b):
        return False
    if isinstance(a, dict):
        return list(a) == list(b) and all(identical(a[key], b[key]) for key in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(map(identical, a, b))
    return repr(a) == repr(b) if isinstance(a, float) else bool(a == b)


def assert_read_as_json_reads(data: bytes) -> None:
    read, expected = read_by_json(data)
    refusal: DocumentError | None = None
    try:
        document = parse_document(data)
    except DocumentError as error:
        refusal = error
    if refusal is not None:  # refused as json refuses it, or JSON beyond the bounds
        assert not read or not refusal.malformed, f"{data!r} is JSON to json: {expected!r}"
        return
    assert read, f"{data!r} is refused by json but read as {document!r}"
    assert identical(document, expected), (data, document, expected)


@pytest.mark.parametrize(
    "data",
    [
        b"123456789012345678901234567890",  # beyond 64 bits: an int, never a float
        b"[-9223372036854775809, 18446744073709551616, 9223372036854775807]",
        b'{"tracking": "1Z9999999999999999999999", "n": 12}',  # a long digit run in a string
        b"[1e400, -1e400, 1.5e-400, -0, -0.0, 1E5, 0.1234567890123456789]",
        b'"\\ud800 and \\udfff"',
        b'"\xed\xa0\x80"',  # an encoded surrogate: json reads it (surrogatepass)
        b"\xef\xbb\xbf{}",  # a UTF-8 byte order mark
        '{"a": ["\u00e9"]}'.encode("utf-16"),
        '{"a": 1}'.encode("utf-32"),
        b'{"a": 1, "b": 2, "a": 3}',  # duplicate keys: the last value, at the first place
        b'"\\u0000\\/"',
        b"[" * 1100 + b"]" * 1100,  # deeper than orjson goes: json reads it, the bound refuses
        b'"a\x01"',
        b"[1,]",
        b"01",
        b"true false",
    ],
)
def test_a_document_is_read_as_pythons_json_reads_it(data: bytes) -> None:
    assert_read_as_json_reads(data)


JSON_VALUES = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=4), children, max_size=4)
    ),
    max_leaves=20,
)


@settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
@given(
    JSON_VALUES,
    st.booleans(),
    st.sampled_from(["as is", "changed", "inserted", "removed"]),
    st.data(),
)
def test_generated_and_mutated_json_is_read_as_pythons_json_reads_it(
    value: Any, ascii_only: bool, mutation: str, data: st.DataObject
) -> None:
    raw = json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    if mutation != "as is" and raw:
        at = data.draw(st.integers(0, len(raw) - 1))
        byte = bytes([data.draw(st.sampled_from(b' ,:[]{}"\\019eE.+-tnNI\x00\x7f\xff\xef'))])
        raw = {
            "changed": raw[:at] + byte + raw[at + 1 :],
            "inserted": raw[:at] + byte + raw[at:],
            "removed": raw[:at] + raw[at + 1 :],
        }[mutation]
    assert_read_as_json_reads(raw)
