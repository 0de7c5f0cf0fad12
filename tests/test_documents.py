"""The one JSON-document parser: what it reads, what it refuses and with which message."""

from __future__ import annotations

import json
from typing import Any

import pytest

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
