"""JSON documents the core will walk: one parser, one set of bounds.

Upstream response bodies (the engine) and ExtractVariables' `raw_json` (the API) are parsed here,
so both refuse the same things:

    refused                                   why
    text that is not UTF-8 JSON               there is no document to judge or extract from
    NaN, Infinity, -Infinity                  Python's json reads them; JSON has no such numbers
    nesting deeper than MAX_JSON_DEPTH        conditions and extractions walk the tree; a deep
    more than MAX_JSON_NODES values           or vast one would hold the evaluation too long

    >>> parse_document(b'{"order": {"status": "shipped"}}')
    {'order': {'status': 'shipped'}}
    >>> parse_document(b'{"total": NaN}')
    Traceback (most recent call last):
    ...
    sidecar.core.documents.DocumentError: not valid UTF-8 JSON: NaN is not a JSON number
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import orjson

MAX_JSON_DEPTH = 32
"""Levels a document may nest, the innermost scalar counted: `{"a": {"b": 1}}` has 3.

Below what the answer can carry: protobuf decoders stop at 100 nested messages (upb, which the
Python client uses, and Java's CodedInputStream), and one JSON object costs three of them in a
Struct (Value, Struct, map entry). Measured on the real encode and decode of every answer field
that holds JSON (extraction values, variables, explanation values, body templates): 32 nested
objects still parse, 33 fail with "Exceeded maximum recursion depth" at the client; lists cost two
messages a level and reach 48. 32 levels holds at most 31 containers, one below the objects' limit.
"""
MAX_JSON_NODES = 200_000
# A run of digits this long may be an integer beyond 64 bits, which orjson reads as a float;
# found by mapping every digit to 0 (a regex backtracks on each run: 13x slower on 1 KB).
_LONG_RUN = b"0" * 19
_DIGITS_AS_ZERO = bytes.maketrans(b"123456789", b"000000000")


class DocumentError(ValueError):
    """Bytes the core will not walk as a document; the message says why, never what they hold.

    `malformed` is True when they are not JSON at all, False when they are JSON beyond the
    bounds. Each caller turns it into its own answer (a note, a field violation): it never
    travels further.
    """

    def __init__(self, message: str, *, malformed: bool) -> None:
        super().__init__(message)
        self.malformed = malformed


def parse_document(data: bytes) -> Any:
    """The JSON document in `data`, or DocumentError."""
    if len(data) > MAX_JSON_NODES and _values_at_most(data) > MAX_JSON_NODES:
        raise DocumentError(f"has more than {MAX_JSON_NODES} JSON values", malformed=False)
    try:
        document = _loads(data)
    except (ValueError, RecursionError) as exc:
        raise DocumentError(f"not valid UTF-8 JSON: {exc}", malformed=True) from exc
    # Byte counts bound both limits at C speed; walk the tree only when they cannot. A value
    # takes at least one byte, and k brackets nest at most k + 1 levels (the innermost scalar).
    brackets = data.count(b"[") + data.count(b"{")
    if brackets >= MAX_JSON_DEPTH or len(data) > MAX_JSON_NODES:
        _check_shape(document)
    return document


def _values_at_most(data: bytes) -> int:
    """At least the number of JSON values in `data` when it is a JSON array or object, or a
    number over MAX_JSON_NODES once that is certain; 1 for any other text.

    A parser reads a document in one call that holds the GIL, and so the event loop, whatever
    thread makes it: 0.6-3.6 s for a 4 MiB body of empty lists (json and orjson alike, loaded
    machine). This counts first, at C speed: commas and brackets bound the count; only when
    that bound is over the limit are they counted again outside strings (`_values_outside`).
    """
    if data.lstrip()[:1] not in (b"[", b"{"):
        return 1  # not a container: a parser refuses it, or it is one value
    at_most = 1 + data.count(b",") + data.count(b"[") + data.count(b"{")
    if at_most <= MAX_JSON_NODES:  # commas and brackets inside strings counted too
        return at_most
    return _values_outside(data, MAX_JSON_NODES)


def _values_outside(data: bytes, stop_over: int) -> int:
    """The values of JSON text counted outside its strings, in slices of `_SLICE` bytes (each a
    short call), stopping once over `stop_over`. Exact for compact JSON, more otherwise (`[ ]`,
    or `[]` cut by a slice's end): every value but a container's first follows a comma, and the
    first counts with its container, unless that is empty. Escaped backslashes and quotes go
    first, so that each `"` left opens or closes a string.
    """
    plain = data.replace(b"\\\\", b"").replace(b'\\"', b"")
    count, inside = 1, 0
    for start in range(0, len(plain), _SLICE):
        parts = plain[start : start + _SLICE].split(b'"')
        outside = b'"'.join(parts[inside::2])  # a quote between: no `[]` made by the join
        count += outside.count(b",") + outside.count(b"[") + outside.count(b"{")
        count -= outside.count(b"[]") + outside.count(b"{}")
        inside ^= 1 - len(parts) % 2  # an odd number of quotes in the slice
        if count > stop_over:
            break
    return count


_SLICE = 64 * 1024


def _loads(data: bytes) -> Any:
    """The document as Python's json reads it, by orjson where the two read the same.

    orjson (a native parser) reads a 1 KB body 3-4x faster. What it refuses but json reads
    (NaN and Infinity, lone surrogates, UTF-16 or a BOM, 1e400, nesting past 1024) goes to json,
    which reads or refuses it as before, with its own message; integers beyond 64 bits, which
    orjson would read as floats, go to json at once. Duplicate keys: the last wins in both.
    tests/test_documents.py holds the two to the same results on generated and mutated JSON.
    """
    if _LONG_RUN not in data.translate(_DIGITS_AS_ZERO):
        try:
            return orjson.loads(data)
        except orjson.JSONDecodeError:
            pass
    return json.loads(data, parse_constant=_refuse_constant)


def _refuse_constant(constant: str) -> None:
    raise ValueError(f"{constant} is not a JSON number")


def nesting_depth(value: Any) -> int:
    """Levels `value` nests, counted as MAX_JSON_DEPTH counts them (a scalar is 1, `[]` is 1).

    >>> nesting_depth({"a": [1, {"b": None}]}), nesting_depth("x"), nesting_depth({})
    (4, 1, 1)
    """
    return max((depth for depth, _ in _levels(value)), default=1)


def _check_shape(document: Any) -> None:
    """Bound what conditions and extractions will walk: depth and node count."""
    nodes = 1
    for depth, values in _levels(document):
        if depth > MAX_JSON_DEPTH:
            raise DocumentError(f"nests deeper than {MAX_JSON_DEPTH} levels", malformed=False)
        nodes += values
        if nodes > MAX_JSON_NODES:
            raise DocumentError(f"has more than {MAX_JSON_NODES} JSON values", malformed=False)


def _levels(value: Any) -> Iterator[tuple[int, int]]:
    """(depth, how many values sit at it) for each level below `value`, the top being depth 1.

    Level by level: each container's values are counted with len() and only containers are
    kept for the next level, so scalars are never visited one at a time in Python (in process,
    against a value-by-value walk: 200,000 empty lists 268 -> 22 ms, 200,000 numbers 50 -> 15
    ms, 100,000 small objects 56 -> 32 ms). The shape check runs on every body with 32
    brackets or more, the depth check on every container an answer carries.
    """
    level = [value] if isinstance(value, dict | list | tuple) else []
    depth = 1
    while level:
        depth += 1
        values = 0
        containers: list[Any] = []
        for container in level:
            items = container.values() if isinstance(container, dict) else container
            values += len(items)
            containers += [item for item in items if isinstance(item, dict | list | tuple)]
        if not values:
            return
        yield depth, values
        level = containers
