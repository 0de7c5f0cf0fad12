"""JMESPath, compiled once and evaluated without raising; shared by conditions and extraction.

`jmespath.compile` accepts unknown function names and wrong argument counts and fails only when
the expression runs; `compile_query` checks both up front so a node with a typo is refused when it
is compiled, with a field violation, instead of failing on every call.

Evaluation is bounded (issue 14): every AST node visited and every element a flatten produces
is a step counted against `max_query_steps` and spent from the evaluation's budget (which stops
the work when the time is up or the call was cancelled), and the two functions that make text
grow, `to_string` and `join`, refuse a result over `max_query_result_bytes` before building it.
Without these a 347-character expression doubling a string at each of its levels built 134 MB.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Final

import jmespath
from jmespath.functions import Functions, signature
from jmespath.parser import ParsedResult
from jmespath.visitor import Options, TreeInterpreter

if TYPE_CHECKING:
    from jmespath.visitor import _TreeNode

from sidecar.core.budget import (
    BYTES_PER_UNIT,
    Budget,
    BudgetExhaustedError,
    LimitExceededError,
    dumps_bounded,
    unbounded,
)

_FUNCTIONS: Final[Mapping[str, Any]] = Functions.FUNCTION_TABLE
_MAX_REASON_CHARS: Final = 200
_STEPS_PER_SPEND: Final = 16


@dataclass(frozen=True, slots=True)
class Query:
    """A compiled JMESPath whose evaluation never raises, shared by conditions and extraction.

    >>> compile_query("order.total").find({"order": {"total": 5}})
    (5, '')
    """

    parsed: ParsedResult
    # A plain path (`status`, `carrier.name`), most nodes' queries: its field names, followed
    # without the interpreter; None for any other expression.
    fields: tuple[str, ...] | None = None

    def find(self, document: Any, budget: Budget | None = None) -> tuple[Any, str]:
        """The value (None when there is none) and, when evaluation failed, a one-line reason.

        Raises BudgetExhaustedError or LimitExceededError when the evaluation must stop.
        """
        if self.fields is not None:
            return _follow(self.fields, document, budget or unbounded()), ""
        interpreter = _interpreter(budget or unbounded())
        try:
            found = interpreter.visit(self.parsed.parsed, document)
            interpreter.settle()
            return found, ""
        except (BudgetExhaustedError, LimitExceededError):
            raise
        except Exception as exc:  # e.g. a JMESPath type error: no value, and say why
            return None, f"JMESPath evaluation failed: {_one_line(exc)}"


def _follow(fields: tuple[str, ...], document: Any, budget: Budget) -> Any:
    """What the interpreter answers for a plain path, with the steps it would count: a field of
    anything but an object is null (JMESPath's `visit_field`), and every field is visited."""
    steps = len(fields) + (len(fields) > 1)  # the fields, and the subexpression around them
    limit = budget.limits.max_query_steps
    if steps > limit:
        budget.spend(limit - limit % _STEPS_PER_SPEND)  # what it spent before it stopped
        raise LimitExceededError(
            f"a JMESPath expression took more than {limit} steps (max_query_steps)"
        )
    budget.spend(steps)
    value = document
    for name in fields:
        try:
            value = value.get(name)
        except AttributeError:
            value = None
    return value


def _plain_path(tree: Mapping[str, Any]) -> tuple[str, ...] | None:
    """The field names of `name` or `a.b.c` (as JMESPath parses them), else None."""
    nodes = tree["children"] if tree["type"] == "subexpression" else [tree]
    if all(node["type"] == "field" for node in nodes):
        return tuple(node["value"] for node in nodes)
    return None


class _BoundedFunctions(Functions):
    """JMESPath's functions, with the two that grow text measured before they build it."""

    def __init__(self, budget: Budget) -> None:
        self._limit = budget.limits.max_query_result_bytes
        self._budget = budget

    @signature({"types": []})
    def _func_to_string(self, arg: Any) -> str:
        if isinstance(arg, str):
            return arg
        what = "a to_string() result (max_query_result_bytes)"
        return dumps_bounded(arg, self._limit, what, self._budget)

    @signature({"types": ["string"]}, {"types": ["array-string"]})
    def _func_join(self, separator: str, array: list[str]) -> str:
        size = len(separator) * max(len(array) - 1, 0) + sum(len(item) for item in array)
        if size > self._limit:
            raise LimitExceededError(
                f"a join() result would be larger than {self._limit} bytes (max_query_result_bytes)"
            )
        self._budget.spend(size // BYTES_PER_UNIT)
        return separator.join(array)


class _BoundedInterpreter(TreeInterpreter):
    """JMESPath's interpreter, counting its steps against the limit and the budget."""

    def __init__(self, budget: Budget) -> None:
        self._bounded_functions = _BoundedFunctions(budget)
        super().__init__(Options(custom_functions=self._bounded_functions))
        self._methods: dict[str, Callable[..., Any]] = {}
        self.reset(budget)

    def reset(self, budget: Budget) -> None:
        """Ready for one more query evaluation, spending from `budget`."""
        self._budget = self._bounded_functions._budget = budget
        self._bounded_functions._limit = budget.limits.max_query_result_bytes
        self._steps_left = budget.limits.max_query_steps
        self._unspent = 0  # steps visited and not yet spent from the budget (spent by 16s)

    def visit(self, node: _TreeNode, *args: Any, **kwargs: Any) -> Any:
        # Visitor.visit, with one step counted: the hot path of every query, so inlined.
        self._steps_left -= 1
        self._unspent += 1
        if self._unspent >= _STEPS_PER_SPEND or self._steps_left < 0:
            self._count(0)
        node_type = node["type"]
        method = self._methods.get(node_type)
        if method is None:
            method = self._methods[node_type] = getattr(self, f"visit_{node_type}")
        return method(node, *args, **kwargs)

    def visit_flatten(self, node: _TreeNode, value: Any) -> Any:
        result = super().visit_flatten(node, value)
        if isinstance(result, list):
            self._count(len(result))
        return result

    def settle(self) -> None:
        """Spend the steps visited since the last spending (at the end of a query)."""
        if self._unspent:
            self._count(0)

    def _count(self, steps: int) -> None:
        """Count `steps` more and spend what is unspent; raise past max_query_steps."""
        self._steps_left -= steps
        if self._steps_left < 0:
            limit = self._budget.limits.max_query_steps
            raise LimitExceededError(
                f"a JMESPath expression took more than {limit} steps (max_query_steps)"
            )
        self._budget.spend(self._unspent + steps)
        self._unspent = 0


_THREAD = threading.local()


def _interpreter(budget: Budget) -> _BoundedInterpreter:
    """This thread's interpreter, reset for one query (building one per query cost 10%)."""
    interpreter: _BoundedInterpreter | None = getattr(_THREAD, "interpreter", None)
    if interpreter is None:
        interpreter = _THREAD.interpreter = _BoundedInterpreter(budget)
    else:
        interpreter.reset(budget)
    return interpreter


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
    return Query(parsed, _plain_path(parsed.parsed))


def _one_line(exc: BaseException) -> str:
    # JMESPath messages span lines (expression, caret) and may quote a whole document: keep
    # them short enough for a note.
    lines = (line.strip() for line in str(exc).splitlines())
    text = " ".join(line for line in lines if line and line != "^") or type(exc).__name__
    return text if len(text) <= _MAX_REASON_CHARS else text[: _MAX_REASON_CHARS - 3] + "..."
