"""Rendering a connector's HTTP request from a conversation's variables.

Every template (URL path, query values, header values, each string of the JSON body) is parsed
once, by `compile_request`, into literal and placeholder parts; `RequestTemplate.render` only looks
values up, checks them, encodes them for where they go and joins. Substitution is therefore
single-pass: a value containing `{{y}}` is placed as text and never expanded again.

Where a value goes decides what it may be and how it is encoded:

    position      accepts                    encoding / checks
    url path      string, number, boolean    one segment: quote(text, safe="") so / ? # % are
                                             encoded; "." and ".." refused; a segment left
                                             empty refused; literal text kept as written
    query value   string, number, boolean    quote(text, safe=""): space -> %20, names encoded
                                             too; sorted by name, after the template's own query
    header value  string, number, boolean    printable ASCII and TAB only (control characters
                                             and non-ASCII refused); surrounding SP/TAB stripped
    body "{{x}}"  any JSON value             placed with its type (12345.0 -> 12345)
    body "a{{x}}" any JSON value             value_text: scalars as text, null as "null",
                                             lists and objects as compact JSON

A value that cannot be placed raises `RenderError` (an EvaluationFailure) before anything is
produced: no partial request is ever sent. The error names the variable and the position, never
the value (it may be personal data). NaN, infinities, strings that are not valid Unicode and
values that are not JSON at all are refused everywhere. Auth is not rendered here:
`sidecar.core.auth` adds it afterwards, so explanations can mask it.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Final
from urllib.parse import quote, unquote, urlsplit

from sidecar.core.model.connector import Connector
from sidecar.core.model.exchange import OutboundRequest
from sidecar.core.model.failures import RenderError
from sidecar.core.model.outcome import Reason
from sidecar.core.placeholders import Literal, Part, Placeholder, parse_template
from sidecar.core.values import MISSING, lookup, normalise_numbers, number_text, value_text

_KINDS = (
    (type(None), "null"),
    (bytes | bytearray, "bytes"),
    (Mapping, "an object"),
    (Sequence, "a list"),
)
_DOT_SEGMENTS = frozenset({".", ".."})
# Header values go out as ASCII (the HTTP client refuses controls); TAB is allowed.
_HEADER_UNSAFE = re.compile(r"[^\t\x20-\x7e]")
_HEADER_WHITESPACE = " \t"
_MAX_DEPTH = 100  # protobuf's own nesting limit for Struct values
_MAX_INT_BITS = 1024  # beyond a double's range: JSON peers could not read it back


# Values: find them, check them for the place they go


def _invalid(placeholder: Placeholder, position: str, problem: str) -> RenderError:
    return RenderError(Reason.INVALID_VARIABLE, placeholder.name, position, problem)


def _find(variables: Mapping[str, Any], placeholder: Placeholder, position: str) -> Any:
    value = lookup(variables, placeholder.path)
    if value is MISSING:
        raise RenderError(Reason.MISSING_VARIABLE, placeholder.name, position, "is missing")
    return value


def _checked_string(text: str, placeholder: Placeholder, position: str) -> str:
    # Lone surrogates cannot be encoded as UTF-8, neither in a URL nor in a JSON body.
    if not text.isascii():
        try:
            text.encode()
        except UnicodeEncodeError:
            raise _invalid(placeholder, position, "is not valid Unicode text") from None
    return text


def _checked_number(number: int | float, placeholder: Placeholder, position: str) -> None:
    if isinstance(number, float) and not math.isfinite(number):
        raise _invalid(placeholder, position, "is not a finite number")
    if isinstance(number, int) and number.bit_length() > _MAX_INT_BITS:
        raise _invalid(placeholder, position, "is a number too large to send")


def _scalar_text(variables: Mapping[str, Any], placeholder: Placeholder, position: str) -> str:
    """The text of a string, number or boolean; anything else cannot go in a URL or header."""
    value = _find(variables, placeholder, position)
    if isinstance(value, str):
        return _checked_string(value, placeholder, position)
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        _checked_number(value, placeholder, position)
        return number_text(value)
    kind = next((name for kind, name in _KINDS if isinstance(value, kind)), "not a JSON value")
    raise _invalid(placeholder, position, f"is {kind}; only a string, number or boolean fits here")


def _json_value(value: Any, placeholder: Placeholder, position: str, depth: int = 0) -> Any:
    """A fresh, serialisable copy of a JSON value, integral floats as ints; refuse non-JSON."""
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _checked_string(value, placeholder, position)
    if isinstance(value, int | float):
        _checked_number(value, placeholder, position)
        return normalise_numbers(value)
    if depth >= _MAX_DEPTH:
        raise _invalid(placeholder, position, f"is nested more than {_MAX_DEPTH} levels deep")
    if isinstance(value, Mapping):
        copy: dict[str, Any] = {}
        for key, item in value.items():
            if not isinstance(key, str):
                raise _invalid(placeholder, position, "is an object with a non-text key")
            key = _checked_string(key, placeholder, position)
            copy[key] = _json_value(item, placeholder, position, depth + 1)
        return copy
    if isinstance(value, Sequence) and not isinstance(value, bytes | bytearray):
        return [_json_value(item, placeholder, position, depth + 1) for item in value]
    raise _invalid(placeholder, position, "is not a JSON value")


# Compiled pieces of a request


def _encoded(text: str) -> str:
    """`quote(text, safe="")`; text of unreserved characters only (an order number, an id)
    is returned as it is without the trip through bytes: this runs for every placeholder."""
    return text if _UNRESERVED.fullmatch(text) else quote(text, safe="")


_UNRESERVED: Final = re.compile(r"[A-Za-z0-9_.~-]+")  # what quote never encodes (RFC 3986)


@dataclass(frozen=True, slots=True)
class _PathSegment:
    """One path segment holding placeholders; each value stays inside this one segment."""

    parts: tuple[Part, ...]
    first: Placeholder  # blamed when the segment as a whole is unusable

    def render(self, variables: Mapping[str, Any]) -> str:
        texts: list[str] = []
        for part in self.parts:
            if isinstance(part, Literal):
                texts.append(part.text)
                continue
            text = _scalar_text(variables, part, "url path")
            if text in _DOT_SEGMENTS:
                raise _invalid(part, "url path", "is a dot segment ('.' or '..')")
            texts.append(_encoded(text))
        segment = "".join(texts)
        if not segment:
            raise _invalid(self.first, "url path", "is empty and would leave a path segment empty")
        # "%2E%2E" is as much a parent reference as ".." for many servers.
        if len(segment) <= 6 and unquote(segment) in _DOT_SEGMENTS:
            raise _invalid(self.first, "url path", "would make the segment '.' or '..'")
        return segment


@dataclass(frozen=True, slots=True)
class _Query:
    """One `name=value` query parameter; the name and literal text are encoded in advance."""

    position: str
    prefix: str
    parts: tuple[str | Placeholder, ...]

    def render(self, variables: Mapping[str, Any]) -> str:
        texts = [self.prefix]
        for part in self.parts:
            if isinstance(part, str):
                texts.append(part)
            else:
                texts.append(_encoded(_scalar_text(variables, part, self.position)))
        return "".join(texts)


@dataclass(frozen=True, slots=True)
class _Header:
    """One header; a value may not smuggle in another header, or bytes HTTP cannot carry."""

    name: str
    position: str
    parts: tuple[Part, ...]

    def render(self, variables: Mapping[str, Any]) -> tuple[str, str]:
        position = self.position
        texts: list[str] = []
        for part in self.parts:
            if isinstance(part, Literal):
                texts.append(part.text)
                continue
            text = _scalar_text(variables, part, position)
            unsafe = _HEADER_UNSAFE.search(text)
            if unsafe:
                what = (
                    "a non-ASCII" if ord(unsafe.group()) > 0x7F else "a control (CR, LF, NUL ...)"
                )
                raise _invalid(part, position, f"contains {what} character")
            texts.append(text)
        # Surrounding whitespace is not part of a field value (RFC 9110 5.5) and h11 refuses it.
        return self.name, "".join(texts).strip(_HEADER_WHITESPACE)


@dataclass(frozen=True, slots=True)
class _Constant:
    """A body subtree without placeholders, shared by every render (json.dumps never mutates)."""

    value: Any

    def render(self, variables: Mapping[str, Any]) -> Any:
        return self.value


@dataclass(frozen=True, slots=True)
class _WholeValue:
    """A body string that is exactly one placeholder: the value goes in with its JSON type."""

    placeholder: Placeholder
    position: str

    def render(self, variables: Mapping[str, Any]) -> Any:
        value = _find(variables, self.placeholder, self.position)
        return _json_value(value, self.placeholder, self.position)


@dataclass(frozen=True, slots=True)
class _Text:
    """A body string with placeholders among text: each value goes in as its text."""

    parts: tuple[Part, ...]
    position: str

    def render(self, variables: Mapping[str, Any]) -> Any:
        texts: list[str] = []
        for part in self.parts:
            if isinstance(part, Literal):
                texts.append(part.text)
            else:
                value = _find(variables, part, self.position)
                texts.append(value_text(_json_value(value, part, self.position)))
        return "".join(texts)


@dataclass(frozen=True, slots=True)
class _Array:
    items: tuple[_BodyNode, ...]

    def render(self, variables: Mapping[str, Any]) -> Any:
        return [item.render(variables) for item in self.items]


@dataclass(frozen=True, slots=True)
class _Object:
    members: tuple[tuple[str, _BodyNode], ...]

    def render(self, variables: Mapping[str, Any]) -> Any:
        return {key: node.render(variables) for key, node in self.members}


_BodyNode = _Constant | _WholeValue | _Text | _Array | _Object


def _compile_body(
    value: Any, parse: Callable[[str], tuple[Part, ...]], pointer: str = ""
) -> _BodyNode:
    """Walk the body template once; subtrees without placeholders fold into constants.

    Object keys are never templated: a key with `{{...}}` is sent as the literal text.
    Literal numbers are normalised like variables, so a template that came through protobuf
    Struct sends 5, not 5.0.
    """
    position = f"body at {pointer}" if pointer else "body"
    node: _BodyNode
    if isinstance(value, str):
        parts = parse(value)
        if len(parts) == 1 and isinstance(parts[0], Placeholder):
            return _WholeValue(parts[0], position)
        if any(isinstance(part, Placeholder) for part in parts):
            return _Text(parts, position)
        return _Constant(value)
    if isinstance(value, list):
        items = tuple(
            _compile_body(item, parse, f"{pointer}/{index}") for index, item in enumerate(value)
        )
        node = _Array(items)
    elif isinstance(value, dict):
        members = tuple(
            (key, _compile_body(item, parse, f"{pointer}/{_pointer_token(key)}"))
            for key, item in value.items()
        )
        node = _Object(members)
    else:
        return _Constant(normalise_numbers(value))
    children = node.items if isinstance(node, _Array) else tuple(m[1] for m in node.members)
    if all(isinstance(child, _Constant) for child in children):
        return _Constant(node.render({}))
    return node


def _pointer_token(key: str) -> str:
    """RFC 6901 escaping, so a position names one field unambiguously."""
    return key.replace("~", "~0").replace("/", "~1")


def _serialise(tree: Any) -> bytes:
    return json.dumps(tree, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode()


# The compiled request


@dataclass(frozen=True, slots=True)
class RequestTemplate:
    """A connector's request, parsed once by `compile_request`; `render` fills it for one call.

    >>> connector = Connector.model_validate({
    ...     "id": "order-status", "status": "LIVE",
    ...     "url_template": "https://api.store.com/orders/{{order_number}}",
    ... })
    >>> compile_request(connector).render({"order_number": 12345.0}).url
    'https://api.store.com/orders/12345'
    """

    _method: str
    _path: tuple[str | _PathSegment, ...]
    _query: tuple[str | _Query, ...]
    _headers: tuple[_Header, ...]
    _body: _BodyNode | None
    _constant_body: bytes | None  # the serialised body when it has no placeholders

    def render(self, variables: Mapping[str, Any]) -> OutboundRequest:
        """Fill the request in, or raise RenderError; nothing else escapes."""
        path = "".join(p if isinstance(p, str) else p.render(variables) for p in self._path)
        query = "&".join(q if isinstance(q, str) else q.render(variables) for q in self._query)
        headers = tuple(header.render(variables) for header in self._headers)
        body = self._constant_body
        if body is None and self._body is not None:
            body = _serialise(self._body.render(variables))
        url = f"{path}?{query}" if query else path
        return OutboundRequest(self._method, url, headers, body)


def compile_request(connector: Connector) -> RequestTemplate:
    """Parse every template of a connector once; the engine caches the result per version."""
    url = urlsplit(connector.url_template)
    # The origin is never templated (the model refuses it); constant path text is joined in
    # advance, so render only joins what varies.
    path: list[str | _PathSegment] = []
    constant = f"{url.scheme}://{url.netloc}"
    for index, segment in enumerate(url.path.split("/")):
        constant += "/" if index else ""
        parts = parse_template(segment)
        placeholders = [part for part in parts if isinstance(part, Placeholder)]
        if placeholders:
            path.extend((constant, _PathSegment(parts, placeholders[0])))
            constant = ""
        else:
            constant += segment
    path.append(constant)

    query: list[str | _Query] = [url.query] if url.query else []
    for name in sorted(connector.query):
        encoded: tuple[str | Placeholder, ...] = tuple(
            quote(part.text, safe="") if isinstance(part, Literal) else part
            for part in parse_template(connector.query[name])
        )
        query.append(_Query(f"query {name!r}", f"{quote(name, safe='')}=", encoded))

    has_body = connector.body_template is not None
    header_templates = dict(connector.headers)
    if has_body and all(name.lower() != "content-type" for name in header_templates):
        header_templates["Content-Type"] = "application/json"
    # Sorted by lower-cased name (then name), so equal connectors give byte-equal requests.
    headers = tuple(
        _Header(name, f"header {name!r}", parse_template(header_templates[name]))
        for name in sorted(header_templates, key=lambda name: (name.lower(), name))
    )

    body: _BodyNode | None = None
    if has_body:
        # Fail here, once, if the template's own literals cannot be sent (NaN, invalid text).
        _serialise(normalise_numbers(connector.body_template))
        body = _compile_body(connector.body_template, parse_template)
    constant_body = _serialise(body.value) if isinstance(body, _Constant) else None
    return RequestTemplate(
        connector.method.value,
        tuple(path),
        tuple(query),
        headers,
        body,
        constant_body,
    )
