"""JMESPath, compiled once and evaluated without raising; shared by conditions and extraction.

`jmespath.compile` accepts unknown function names and wrong argument counts and fails only when
the expression runs; `compile_query` checks both up front so a node with a typo is refused when it
is compiled, with a field violation, instead of failing on every call.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Final

import jmespath
from jmespath.functions import Functions
from jmespath.parser import ParsedResult

_FUNCTIONS: Final[Mapping[str, Any]] = Functions.FUNCTION_TABLE
_MAX_REASON_CHARS: Final = 200


@dataclass(frozen=True, slots=True)
class Query:
    """A compiled JMESPath whose evaluation never raises, shared by conditions and extraction.

    >>> compile_query("order.total").find({"order": {"total": 5}})
    (5, '')
    """

    parsed: ParsedResult

    def find(self, document: Any) -> tuple[Any, str]:
        """The value (None when there is none) and, when evaluation failed, a one-line reason."""
        try:
            return self.parsed.search(document), ""
        except Exception as exc:  # e.g. a JMESPath type error: no value, and say why
            return None, f"JMESPath evaluation failed: {_one_line(exc)}"


def compile_query(expression: str) -> Query:
    """Compile a JMESPath, also checking function names and arity (JMESPath would only at use).

    Raises ValueError with a one-line description meant for a FieldViolation.
    """
    try:
        parsed = jmespath.compile(expression)
    except Exception as exc:  # lexer and parser raise unrelated types
        raise ValueError(
            f"invalid JMESPath expression: {_one_line(exc)}; "
            "valid examples: order.status, items[0].id, items[?price > `10`].name"
        ) from exc
    stack = [parsed.parsed]
    while stack:
        node = stack.pop()
        stack.extend(node.get("children", ()))
        if node.get("type") != "function_expression":
            continue
        name, arguments = node.get("value"), len(node.get("children", ()))
        function = _FUNCTIONS.get(name)
        if function is None:
            raise ValueError(
                f"unknown JMESPath function {name}(); known: {', '.join(sorted(_FUNCTIONS))}"
            )
        signature = function["signature"]
        variadic = bool(signature) and signature[-1].get("variadic", False)
        if arguments < len(signature) or (arguments > len(signature) and not variadic):
            raise ValueError(
                f"JMESPath function {name}() takes {'at least ' if variadic else ''}"
                f"{len(signature)} argument(s), got {arguments}"
            )
    return Query(parsed)


def _one_line(exc: BaseException) -> str:
    # JMESPath messages span lines (expression, caret) and may quote a whole document: keep
    # them short enough for a note.
    lines = (line.strip() for line in str(exc).splitlines())
    text = " ".join(line for line in lines if line and line != "^") or type(exc).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."
