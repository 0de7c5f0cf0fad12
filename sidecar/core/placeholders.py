"""The `{{name}}` placeholder grammar, shared by registration-time checks and the renderer.

A template is literal text with placeholders `{{ path }}`, where path is one or more identifiers
joined by dots (`order_number`, `customer.email`). Parsing happens once, when a connector is
validated or compiled; rendering never re-scans text, so a substituted value containing `{{y}}`
is never expanded again.

    >>> parse_template("/orders/{{order_number}}")
    (Literal(text='/orders/'), Placeholder(path=('order_number',)))
"""

from __future__ import annotations

import re
from dataclasses import dataclass

_PLACEHOLDER = re.compile(r"\{\{\s*([^{}]*?)\s*\}\}")
_IDENTIFIER = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")


@dataclass(frozen=True, slots=True)
class Literal:
    """Text copied as-is."""

    text: str


@dataclass(frozen=True, slots=True)
class Placeholder:
    """A reference to a (possibly nested) variable."""

    path: tuple[str, ...]

    @property
    def name(self) -> str:
        """The dotted name as written, for messages."""
        return ".".join(self.path)


Part = Literal | Placeholder


class TemplateSyntaxError(ValueError):
    """A template is malformed: unbalanced braces or an invalid variable path."""


def parse_template(text: str) -> tuple[Part, ...]:
    """Split a template into literal and placeholder parts, or raise TemplateSyntaxError."""
    parts: list[Part] = []
    position = 0
    for match in _PLACEHOLDER.finditer(text):
        if match.start() > position:
            parts.append(Literal(_checked_literal(text[position : match.start()])))
        parts.append(Placeholder(parse_variable_path(match.group(1))))
        position = match.end()
    if position < len(text):
        parts.append(Literal(_checked_literal(text[position:])))
    return tuple(parts)


def parse_variable_path(path: str) -> tuple[str, ...]:
    """Parse `customer.email` into ("customer", "email"); raise TemplateSyntaxError if invalid."""
    segments = tuple(path.split("."))
    if not all(_IDENTIFIER.fullmatch(segment) for segment in segments):
        raise TemplateSyntaxError(
            f"invalid variable path {path!r}: use identifiers joined by dots, e.g. customer.email"
        )
    return segments


def has_placeholder(text: str) -> bool:
    """True when text contains anything that looks like a placeholder (well-formed or not)."""
    return "{{" in text or "}}" in text


def _checked_literal(text: str) -> str:
    if "{{" in text or "}}" in text:
        raise TemplateSyntaxError(f"unbalanced placeholder braces in {text!r}")
    return text
