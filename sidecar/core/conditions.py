"""Branch conditions: compiled once per node, then judged against each response.

Compiling turns every expression (JMESPath, RE2 regular expression) and operand into ready-made
closures, so `CompiledBranches.decide` does no parsing and cannot fail on a caller's input: a
malformed node is refused at compile time with every bad field named, and whatever the response
or the variables hold, `decide` answers rather than raises (a condition that cannot be judged is
false, with a note saying why).

    >>> from sidecar.core.model.node import Branch
    >>> branches = compile_branches([Branch.model_validate({"target": "ok", "conditions": [
    ...     {"subject": {"kind": "BODY", "path": "order.total"}, "operator": "GREATER_THAN",
    ...      "operand": 100}]})])
    >>> view = ResponseView(200, {}, {"order": {"total": "150.0"}}, True, {})
    >>> branches.decide(view, explain=False).index
    0

Subjects. STATUS is the HTTP status (absent when there was no response, status 0). BODY is a
JMESPath over the parsed JSON body (absent when the body is not JSON or the expression yields
null). HEADER is a response header, looked up case-insensitively. VARIABLE is a request variable,
by dotted path. An absent subject behaves as null in every operator below.

Comparison table (the first row that applies decides; `ignore_case` casefolds text):

    operator                 subject / operand                    rule
    EQUALS                   operand null                         subject is null or absent
                             subject null or absent               false
                             both read as numbers (1)             numeric equality: "05" == 5
                             either is a boolean                  other side as boolean (2)
                             both scalars                         text equality (3)
                             both lists, or both objects          structural equality (4)
                             anything else                        false
    NOT_EQUALS               any                                  not EQUALS
    GREATER_THAN ... (5)     both read as numbers                 numeric order
                             both strings, neither numeric        lexicographic order
                             anything else                        false
    CONTAINS                 list subject                         an element EQUALS the operand
                             object subject                       the operand text is a key
                             scalar subject, scalar operand       operand text is a substring
                             anything else                        false
    STARTS_WITH, ENDS_WITH   scalar subject, scalar operand       text prefix / suffix
    MATCHES                  scalar subject                       RE2 search (not full match)
    IN                       operand list                         subject EQUALS some element
    EXISTS                   any                                  present and not null
    IS_EMPTY                 any                                  absent, null, "", [] or {}
    STATUS_CLASS "2xx"       subject reads as a number            200 <= n <= 299
    BETWEEN [lo, hi]         subject reads as a number            lo <= n <= hi
    NOT_CONTAINS, NOT_IN, NOT_EXISTS, IS_NOT_EMPTY                  the negation of the above

    (1) a number, or a string that reads as one: "5", " 05 ", "5.0", "1e3"; booleans never do.
    (2) a boolean, or "true" / "false" in any case, spaces ignored; anything else is unequal.
    (3) strings as-is, numbers in canonical form (5.0 -> "5", 1e21 -> "1e+21").
    (4) after turning integral floats into integers, so a Struct's [1.0] equals [1].
    (5) GREATER_THAN, GREATER_THAN_OR_EQUAL, LESS_THAN, LESS_THAN_OR_EQUAL.

Negations are exact: an absent subject is NOT_EQUALS "x", NOT_CONTAINS "x" and NOT_IN ["x"].
A quantifier (ANY, ALL, NONE) applies the operator to each element of a list subject; over an
empty list ANY is false, ALL and NONE are true; a subject that is not a list makes it false.
A branch's conditions combine with ALL (an empty list holds) or ANY (an empty list does not).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Final, cast

import re2

from sidecar.core import values
from sidecar.core.budget import BYTES_PER_UNIT, Budget, LimitExceededError, json_size, unbounded
from sidecar.core.model.base import record
from sidecar.core.model.failures import EvaluationFailure
from sidecar.core.model.node import (
    Branch,
    Combinator,
    Condition,
    Operator,
    Quantifier,
    Subject,
    SubjectKind,
    operand_problem,
)
from sidecar.core.model.outcome import BranchExplanation, ConditionExplanation
from sidecar.core.placeholders import parse_variable_path
from sidecar.core.query import compile_query
from sidecar.errors import FieldViolation, InvalidArgumentError

REGEX_MAX_MEMORY_BYTES: Final = 1024 * 1024
# Subject bytes x regex program size RE2 gets through in about a microsecond at worst (measured:
# `.{100,1000}c`, 8,905 instructions, over 250 KB took 148 ms).
REGEX_BYTE_STATES_PER_UNIT: Final = 16 * 1024
"""RE2's memory budget per MATCHES regex unless the caller gives one (the setting's default)."""


@record
class ResponseView:
    """What conditions may look at: the response, already parsed, and the request variables."""

    status: int
    headers: Mapping[str, str]
    body: Any
    body_is_json: bool
    variables: Mapping[str, Any]
    # The evaluation's budget: every condition, list element and query step spends from it.
    budget: Budget = field(default_factory=unbounded)


@record
class BranchDecision:
    """The first branch that held (None when none did), and how each was judged if asked."""

    index: int | None
    explanations: tuple[BranchExplanation, ...] = ()


# A test judges a subject value (None when absent) and says how it compared.
_Test = Callable[[Any, Budget], tuple[bool, str]]
# A resolver finds the subject in a response: (present, value, note when absent).
_Resolver = Callable[[ResponseView], tuple[bool, Any, str]]

_NUMBERS: Final = "compared as numbers"
_BOOLEANS: Final = "compared as booleans"
_STRINGS: Final = "compared as strings"
_STRINGS_FOLDED: Final = "compared as strings, ignoring case"
_JSON: Final = "compared as JSON values"
_NULL: Final = "compared with null"
_ORDER_TEXT: Final = "ordered as strings"
_ORDER_FOLDED: Final = "ordered as strings, ignoring case"


class CompiledBranches:
    """A node's branches, ready to be judged against any number of responses::

        compiled = compile_branches(node.branches)   # once, when the node is compiled
        compiled.decide(view, explain=False).index   # per response: 0, 1 ... or None

    The module docstring has a runnable example.
    """

    __slots__ = ("_branches",)

    def __init__(self, branches: Sequence[_CompiledBranch]) -> None:
        self._branches = tuple(branches)

    def decide(
        self, view: ResponseView, *, explain: bool, value_bytes: int | None = None
    ) -> BranchDecision:
        """The first branch whose conditions hold; with `explain`, how every branch was judged.

        Without `explain` evaluation stops at the first condition that settles a branch, and at
        the first branch that holds. With it, every condition of every branch up to the winner is
        evaluated, so the explanation shows all the reasons; later branches are listed as not
        evaluated. Each subject value shown is cut to `max_explain_value_bytes`, or to
        `value_bytes` when the caller holds it lower (so a node's values fit the answer).
        """
        if not explain:
            for index, branch in enumerate(self._branches):
                if branch.holds(view):
                    return BranchDecision(index)
            return BranchDecision(None)
        winner: int | None = None
        explanations: list[BranchExplanation] = []
        for index, branch in enumerate(self._branches):
            if winner is not None:
                explanations.append(BranchExplanation(index, branch.target, False, False))
                continue
            judged = tuple(condition.explain(view, value_bytes) for condition in branch.conditions)
            matched = branch.combine(judged_condition.result for judged_condition in judged)
            explanations.append(BranchExplanation(index, branch.target, True, matched, judged))
            if matched:
                winner = index
        return BranchDecision(winner, tuple(explanations))


def compile_branches(
    branches: Sequence[Branch], *, regex_max_memory_bytes: int = REGEX_MAX_MEMORY_BYTES
) -> CompiledBranches:
    """Compile every branch, or raise InvalidArgumentError naming every bad field at once.

    `regex_max_memory_bytes` is RE2's memory budget for each MATCHES regex (its max_mem).
    """
    violations: list[FieldViolation] = []
    compile_condition = partial(_compile_condition, regex_max_memory=regex_max_memory_bytes)
    compiled = [
        _CompiledBranch(
            branch.target,
            branch.combinator,
            tuple(
                compile_condition(condition, f"branches[{b}].conditions[{c}]", violations)
                for c, condition in enumerate(branch.conditions)
            ),
        )
        for b, branch in enumerate(branches)
    ]
    if violations:
        raise InvalidArgumentError(violations)
    return CompiledBranches(compiled)


@dataclass(frozen=True, slots=True)
class _CompiledBranch:
    target: str
    combinator: Combinator
    conditions: tuple[_CompiledCondition, ...]

    def holds(self, view: ResponseView) -> bool:
        """Whether the branch holds, judging conditions only until one settles it (a loop,
        not a generator into any()/all(): this runs for every condition of every call)."""
        if self.combinator is Combinator.ANY:
            for condition in self.conditions:  # noqa: SIM110 (see above)
                if condition._judge(view)[0]:
                    return True
            return False
        for condition in self.conditions:  # noqa: SIM110 (see above)
            if not condition._judge(view)[0]:
                return False
        return True

    def combine(self, results: Iterable[bool]) -> bool:
        # any()/all() short-circuit over a generator; a tuple has been evaluated in full already.
        return any(results) if self.combinator is Combinator.ANY else all(results)


@dataclass(frozen=True, slots=True)
class _CompiledCondition:
    condition: Condition
    resolve: _Resolver
    test: _Test

    def explain(self, view: ResponseView, value_bytes: int | None = None) -> ConditionExplanation:
        result, present, value, note = self._judge(view)
        condition = self.condition
        setting = view.budget.limits.max_explain_value_bytes
        limit = setting if value_bytes is None else min(value_bytes, setting)
        size = json_size(value, limit, view.budget)
        if size > limit:  # a 1 KB request must not copy every subject into the answer
            shown = f"truncated to {limit} characters" if isinstance(value, str) else "not shown"
            value = _preview(value, limit)
            why = (
                "max_explain_value_bytes"
                if limit == setting
                else f"max_explain_value_bytes, held to {limit} so that the values of every "
                "condition fit the answer's max_message_bytes"
            )
            note = f"{note}; the value is over {limit} bytes, {shown} ({why})"
        return ConditionExplanation(
            condition.subject, condition.operator, condition.operand, value, present, result, note
        )

    def _judge(self, view: ResponseView) -> tuple[bool, bool, Any, str]:
        present, value = False, None
        view.budget.spend()
        try:
            present, value, absence = self.resolve(view)
            result, note = self.test(value if present else None, view.budget)
        except EvaluationFailure:  # the budget ran out or a limit was reached: stop judging
            raise
        except Exception as exc:  # decide() answers whatever the input holds
            return False, present, value, f"could not be evaluated: {type(exc).__name__}"
        return result, present, value, note if present else absence


def _compile_condition(
    condition: Condition, field: str, violations: list[FieldViolation], regex_max_memory: int
) -> _CompiledCondition:
    resolve = _compile_subject(condition.subject, f"{field}.subject.path", violations)
    test = _compile_test(condition, f"{field}.operand", violations, regex_max_memory)
    if condition.quantifier is not None:
        test = partial(_quantified, quantifier=condition.quantifier, test=test)
    return _CompiledCondition(condition, resolve, test)


def _compile_subject(subject: Subject, field: str, violations: list[FieldViolation]) -> _Resolver:
    kind, path = subject.kind, subject.path
    if kind is SubjectKind.STATUS:
        return lambda view: (True, view.status, "") if view.status else (False, None, _NO_STATUS)
    if kind is SubjectKind.HEADER:
        name = path.lower()
        return lambda view: _present_or(view.headers.get(name), "header absent")
    if kind is SubjectKind.VARIABLE:
        segments = parse_variable_path(path)  # the model has validated it
        return partial(_variable, segments=segments)
    try:
        query = compile_query(path)
    except ValueError as exc:
        violations.append(FieldViolation(field, str(exc)))
        return lambda view: (False, None, "invalid expression")

    def body(view: ResponseView) -> tuple[bool, Any, str]:
        if not view.body_is_json:
            return False, None, "response body is not JSON"
        found, failure = query.find(view.body, view.budget)
        return _present_or(found, failure or "subject absent: the expression yielded null")

    return body


_NO_STATUS: Final = "subject absent: no response"


def _variable(view: ResponseView, segments: tuple[str, ...]) -> tuple[bool, Any, str]:
    value = values.lookup(view.variables, segments)
    return (False, None, "variable absent") if value is values.MISSING else (True, value, "")


def _present_or(value: Any, absence: str) -> tuple[bool, Any, str]:
    return (False, None, absence) if value is None else (True, value, "")


@dataclass(frozen=True, slots=True)
class _Operand:
    """Every form of an operand a comparison may need, computed once at compile time."""

    raw: Any
    number: float | int | None
    boolean: bool | None
    text: str | None
    folded: str | None
    structure: Any

    @classmethod
    def of(cls, raw: Any) -> _Operand:
        return cls(*cls.row(raw))

    @staticmethod
    def row(raw: Any) -> tuple[Any, ...]:
        """The same forms as a plain tuple (the fields in order), for an IN operand's elements.

        A plain tuple of scalars is one the garbage collector stops tracking: an IN list of
        120,000 strings compiled to objects took 120,000 objects into every full collection,
        each one a pause of the whole process (issue 14: 100-300 ms event-loop stalls).
        """
        text = _text(raw)
        container = isinstance(raw, list | tuple | dict)
        structure = values.normalise_numbers(raw, frozen=True) if container else None
        folded = text.casefold() if text is not None else None
        # A container's raw form is only asked its kind (`_kind`, tuple or not): the frozen
        # structure answers the same, and is not a third copy of the operand.
        raw = structure if container else raw
        return raw, values.as_number(raw), values.as_boolean(raw), text, folded, structure


def _text(value: Any) -> str | None:
    try:
        return values.scalar_text(value)
    except ValueError:  # an integer beyond Python's int-to-text digit limit
        return None


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list | tuple):  # a compiled operand's lists are tuples
        return "list"
    if isinstance(value, Mapping):
        return "object"
    return "number" if values.is_number(value) else type(value).__name__


def _equals(subject: Any, operand: _Operand, folding: bool, budget: Budget) -> tuple[bool, str]:
    return _equals_read(subject, _read(subject, folding, budget), operand, folding, budget)


def _read(subject: Any, folding: bool, budget: Budget) -> tuple[Any, str | None, str | None]:
    """The forms of a subject EQUALS compares: its number, its text and (with `folding`) that
    text casefolded, whose length is spent. Read once per subject, not once per element of an
    IN operand (a number's regex and a casefold each, 99,000 times per evaluation before)."""
    if subject is None:
        return None, None, None
    text = _text(subject)
    folded = None
    if folding and text is not None:
        budget.spend(len(text) // BYTES_PER_UNIT)  # casefold copies the text
        folded = text.casefold()
    return values.as_number(subject), text, folded


def _equals_read(
    subject: Any,
    read: tuple[Any, str | None, str | None],
    operand: _Operand,
    folding: bool,
    budget: Budget,
) -> tuple[bool, str]:
    """EQUALS of a subject, given its forms (`_read`), with an operand."""
    if operand.raw is None or subject is None:
        return subject is None and operand.raw is None, _NULL
    number, text, folded = read
    if number is not None and operand.number is not None:
        return number == operand.number, _NUMBERS
    if isinstance(subject, bool) or isinstance(operand.raw, bool):
        boolean = values.as_boolean(subject)
        return boolean is not None and boolean == operand.boolean, _BOOLEANS
    if text is not None and operand.text is not None:
        if folding:
            return folded == operand.folded, _STRINGS_FOLDED
        return text == operand.text, _STRINGS
    same_shape = isinstance(subject, list if isinstance(operand.raw, tuple) else Mapping)
    if operand.structure is not None and same_shape:  # compiled operands are frozen: tuples
        return _same_structure(subject, operand.structure, budget), _JSON
    return False, f"not comparable: {_kind(subject)} and {_kind(operand.raw)}"


def _same_structure(subject: Any, structure: Any, budget: Budget) -> bool:
    """Structural equality (4) of a subject with an operand's compiled `structure`, walked side
    by side, a unit spent a pair: it stops at the first difference and reads no more of the
    subject than the operand holds. (Normalising the whole subject first held the loop 2.8 s
    for 64 `EQUALS [1]` on a list of 200,000 values, unsliced.) Python's == already equates
    1.0 and 1, which is all the normalising did for equality."""
    budget.spend()
    if isinstance(structure, tuple):
        return (
            isinstance(subject, list)
            and len(subject) == len(structure)
            and all(_same_structure(*pair, budget) for pair in zip(subject, structure, strict=True))
        )
    if isinstance(structure, dict):
        return (
            isinstance(subject, Mapping)
            and len(subject) == len(structure)
            and all(
                key in subject and _same_structure(subject[key], item, budget)
                for key, item in structure.items()
            )
        )
    return bool(subject == structure)


def _equals_test(
    subject: Any, budget: Budget, operand: _Operand, folding: bool
) -> tuple[bool, str]:
    return _equals(subject, operand, folding, budget)


def _text_pair(
    subject: Any, operand: _Operand, folding: bool, budget: Budget
) -> tuple[str, str] | None:
    """Subject and operand as the text a comparison reads (casefolded with `folding`); the
    subject's length is spent, since casefolding and searching it read it whole (64 such
    conditions on a 1 MB string held the loop 20-60 ms unspent)."""
    text = _text(subject)
    if text is None or operand.text is None or operand.folded is None:
        return None
    budget.spend(len(text) // BYTES_PER_UNIT)
    return (text.casefold(), operand.folded) if folding else (text, operand.text)


def _compile_test(
    condition: Condition,
    field: str,
    violations: list[FieldViolation],
    regex_max_memory: int = 0,
) -> _Test:
    op, raw, folding = condition.operator, condition.operand, condition.ignore_case
    problem = operand_problem(op, raw)
    if problem:
        violations.append(FieldViolation(field, problem))
        return lambda value, budget: (False, "invalid operand")
    # From here on the operand has the shape operand_problem asks of it.
    if op in _NEGATIONS:
        positive = condition.model_copy(update={"operator": _NEGATIONS[op]})
        return partial(_negated, test=_compile_test(positive, field, violations, regex_max_memory))
    if op in _ORDERINGS:
        return partial(_ordered, operand=_Operand.of(raw), folding=folding, accept=_ORDERINGS[op])
    if op is Operator.EQUALS:
        return partial(_equals_test, operand=_Operand.of(raw), folding=folding)
    if op is Operator.IN:
        elements = tuple(_Operand.row(item) for item in cast(list[Any], raw))
        return partial(_is_in, elements=elements, folding=folding)
    if op is Operator.CONTAINS:
        return partial(_contains, operand=_Operand.of(raw), folding=folding)
    if op in (Operator.STARTS_WITH, Operator.ENDS_WITH):
        starts = op is Operator.STARTS_WITH
        return partial(_affix, operand=_Operand.of(raw), folding=folding, starts=starts)
    if op is Operator.MATCHES:
        return _compile_matches(raw, folding, field, violations, regex_max_memory)
    if op is Operator.EXISTS:
        return lambda value, budget: (value is not None, f"{_kind(value)} value")
    if op is Operator.IS_EMPTY:
        return lambda value, budget: (
            value is None or value in ("", [], {}),
            f"{_kind(value)} value",
        )
    if op is Operator.STATUS_CLASS:
        hundreds = int(cast(str, raw)[0]) * 100
        return partial(_in_range, low=hundreds, high=hundreds + 99, note=f"status class {raw}")
    assert op is Operator.BETWEEN, op  # every other operator has returned above
    low, high = cast(list[float], raw)
    return partial(_in_range, low=low, high=high, note=f"between {low} and {high}")


_NEGATIONS: Final = {
    Operator.NOT_EQUALS: Operator.EQUALS,
    Operator.NOT_CONTAINS: Operator.CONTAINS,
    Operator.NOT_IN: Operator.IN,
    Operator.NOT_EXISTS: Operator.EXISTS,
    Operator.IS_NOT_EMPTY: Operator.IS_EMPTY,
}
_ORDERINGS: Final = {
    Operator.GREATER_THAN: (1,),
    Operator.GREATER_THAN_OR_EQUAL: (0, 1),
    Operator.LESS_THAN: (-1,),
    Operator.LESS_THAN_OR_EQUAL: (-1, 0),
}


def _negated(value: Any, budget: Budget, test: _Test) -> tuple[bool, str]:
    held, note = test(value, budget)
    return not held, note


def _ordered(
    value: Any, budget: Budget, operand: _Operand, folding: bool, accept: tuple[int, ...]
) -> tuple[bool, str]:
    number = values.as_number(value)
    if number is not None and operand.number is not None:
        return (number > operand.number) - (number < operand.number) in accept, _NUMBERS
    pair = _text_pair(value, operand, folding, budget)
    both_text = isinstance(value, str) and isinstance(operand.raw, str)
    if both_text and pair is not None and number is None and operand.number is None:
        left, right = pair
        return (left > right) - (left < right) in accept, _ORDER_FOLDED if folding else _ORDER_TEXT
    return False, f"not ordered: {_kind(value)} and {_kind(operand.raw)}"


def _is_in(
    value: Any, budget: Budget, elements: tuple[tuple[Any, ...], ...], folding: bool
) -> tuple[bool, str]:
    read = _read(value, folding, budget)
    for index, element in enumerate(elements):
        budget.spend()  # an operand of 99,000 elements held the loop 70-300 ms unsliced
        held, note = _equals_read(value, read, _Operand(*element), folding, budget)
        if held:
            return True, f"equal to operand[{index}], {note}"
    return False, "equal to no element of the operand"


def _contains(value: Any, budget: Budget, operand: _Operand, folding: bool) -> tuple[bool, str]:
    if isinstance(value, list):
        budget.spend(len(value))
        held = any(_equals(item, operand, folding, budget)[0] for item in value)
        return held, "list elements compared with EQUALS"
    if isinstance(value, Mapping):
        if operand.text is None or operand.folded is None:
            return False, f"an object key cannot be a {_kind(operand.raw)}"
        if folding:  # every key casefolded: 64 such conditions on 100,000 keys held the loop 0.3 s
            budget.spend(len(value))
            keys = (key.casefold() for key in value if isinstance(key, str))
            return operand.folded in keys, "object keys compared, ignoring case"
        return operand.text in value, "object keys compared"
    pair = _text_pair(value, operand, folding, budget)
    if pair is None:
        return False, f"not text: {_kind(value)} and {_kind(operand.raw)}"
    return pair[1] in pair[0], _STRINGS_FOLDED if folding else _STRINGS


def _affix(
    value: Any, budget: Budget, operand: _Operand, folding: bool, starts: bool
) -> tuple[bool, str]:
    pair = _text_pair(value, operand, folding, budget)
    if pair is None:
        return False, f"not text: {_kind(value)} and {_kind(operand.raw)}"
    held = pair[0].startswith(pair[1]) if starts else pair[0].endswith(pair[1])
    return held, _STRINGS_FOLDED if folding else _STRINGS


def _compile_matches(
    pattern: Any, folding: bool, field: str, violations: list[FieldViolation], max_memory: int
) -> _Test:
    options = re2.Options()
    options.case_sensitive = not folding
    options.log_errors = False
    # RE2's DFA cache per regex; 64 regexes at RE2's default 8 MiB could hold 512 MiB.
    options.max_mem = max_memory or REGEX_MAX_MEMORY_BYTES
    try:
        regex = re2.compile(pattern, options)
    except (re2.error, TypeError, UnicodeError) as exc:
        first = exc.args[0] if exc.args else ""
        detail = first.decode(errors="replace") if isinstance(first, bytes) else str(exc)
        description = (
            f"invalid regular expression: {detail}; use RE2 syntax "
            "(no backreferences or look-around), e.g. ^[A-Z]{2}[0-9]{4}$"
        )
        violations.append(FieldViolation(field, description))
        return lambda value, budget: (False, "invalid regular expression")
    return partial(_matches, regex=regex)


def _matches(value: Any, budget: Budget, regex: Any) -> tuple[bool, str]:
    text = _text(value)
    if text is None:
        return False, f"not text: {_kind(value)}"
    # Encoding here lets a lone surrogate from a JSON body through where re2 would raise.
    subject = text.encode("utf-8", "surrogatepass")
    limit = budget.limits.max_regex_subject_bytes
    if len(subject) > limit:  # RE2 is linear, but 64 regexes over 250 KB took seconds
        raise LimitExceededError(
            f"a MATCHES subject is {len(subject)} bytes, over {limit} (max_regex_subject_bytes)"
        )
    # RE2's slow engine costs about subject x program; spent before the search, so a costly
    # one moves off the event loop before it starts.
    budget.spend(1 + len(subject) * regex.programsize // REGEX_BYTE_STATES_PER_UNIT)
    return regex.search(subject) is not None, "regex search"


def _in_range(value: Any, budget: Budget, low: float, high: float, note: str) -> tuple[bool, str]:
    number = values.as_number(value)
    if number is None:
        return False, f"not a number: {_kind(value)}"
    return low <= number <= high, note


def _quantified(
    value: Any, budget: Budget, quantifier: Quantifier, test: _Test
) -> tuple[bool, str]:
    if not isinstance(value, list):
        return False, f"quantifier {quantifier} needs a list subject, got {_kind(value)}"
    held = 0
    for item in value:
        budget.spend()
        held += test(item, budget)[0]
    wanted = {Quantifier.ANY: held > 0, Quantifier.ALL: held == len(value)}
    return wanted.get(quantifier, held == 0), f"{quantifier}: {held} of {len(value)} elements held"


def _preview(value: Any, limit: int) -> Any:
    """What an explanation shows of a value over the limit: a string's start, else nothing."""
    if isinstance(value, str):
        return value[:limit]
    return f"<{_kind(value)} over {limit} bytes>"
