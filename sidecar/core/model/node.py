"""Nodes: what to decide once the API has answered. Sent inline with every EvaluateNode call.

A node calls one connector, tries its branches in order (if / else-if ...), and falls back to the
else target; failures go to the error target. Shapes are checked here; expressions (JMESPath,
regular expressions) are compiled, and so checked, by the engine when the node is compiled.

    >>> Node.model_validate({
    ...     "connector_id": "order-status",
    ...     "branches": [{"target": "show-status", "conditions": [
    ...         {"subject": {"kind": "STATUS"}, "operator": "STATUS_CLASS", "operand": "2xx"}]}],
    ...     "else_target": "not-found", "error_target": "handoff",
    ... }).branches[0].combinator
    <Combinator.ALL: 'ALL'>
"""

from __future__ import annotations

import enum
import re
from typing import Annotated, Self

from pydantic import (
    Field,
    JsonValue,
    StringConstraints,
    ValidationInfo,
    field_validator,
    model_validator,
)

from sidecar.core.model.base import FrozenModel
from sidecar.core.placeholders import TemplateSyntaxError, parse_variable_path

MAX_BRANCHES = 64
MAX_CONDITIONS_PER_BRANCH = 64
MAX_EXTRACTIONS = 128
MAX_EXPRESSION_CHARS = 1024
STATUS_CLASS_PATTERN = re.compile(r"[1-5][xX][xX]")

Target = Annotated[str, StringConstraints(max_length=256)]
Expression = Annotated[str, StringConstraints(max_length=MAX_EXPRESSION_CHARS)]
VariableName = Annotated[
    str,
    StringConstraints(pattern=r"^[A-Za-z_][A-Za-z0-9_]{0,127}$"),
    Field(description="letters, digits and _, starting with a letter or _"),
]


class SubjectKind(enum.StrEnum):
    """What a condition looks at."""

    STATUS = "STATUS"
    BODY = "BODY"
    HEADER = "HEADER"
    VARIABLE = "VARIABLE"


class Operator(enum.StrEnum):
    """A condition's test; the comparison table lives in sidecar.core.conditions."""

    EQUALS = "EQUALS"
    NOT_EQUALS = "NOT_EQUALS"
    GREATER_THAN = "GREATER_THAN"
    GREATER_THAN_OR_EQUAL = "GREATER_THAN_OR_EQUAL"
    LESS_THAN = "LESS_THAN"
    LESS_THAN_OR_EQUAL = "LESS_THAN_OR_EQUAL"
    CONTAINS = "CONTAINS"
    NOT_CONTAINS = "NOT_CONTAINS"
    STARTS_WITH = "STARTS_WITH"
    ENDS_WITH = "ENDS_WITH"
    MATCHES = "MATCHES"
    IN = "IN"
    NOT_IN = "NOT_IN"
    EXISTS = "EXISTS"
    NOT_EXISTS = "NOT_EXISTS"
    IS_EMPTY = "IS_EMPTY"
    IS_NOT_EMPTY = "IS_NOT_EMPTY"
    STATUS_CLASS = "STATUS_CLASS"
    BETWEEN = "BETWEEN"


UNARY_OPERATORS = frozenset(
    {Operator.EXISTS, Operator.NOT_EXISTS, Operator.IS_EMPTY, Operator.IS_NOT_EMPTY}
)


class Quantifier(enum.StrEnum):
    """Apply the operator to each element of a list subject."""

    ANY = "ANY"
    ALL = "ALL"
    NONE = "NONE"


class Combinator(enum.StrEnum):
    """How a branch's conditions combine."""

    ALL = "ALL"
    ANY = "ANY"


class CastType(enum.StrEnum):
    """Conversion applied to an extracted value."""

    STRING = "STRING"
    NUMBER = "NUMBER"
    INTEGER = "INTEGER"
    BOOLEAN = "BOOLEAN"
    JSON = "JSON"


class Subject(FrozenModel):
    """The value a condition tests: the status, a JMESPath over the body, a header or a variable."""

    kind: SubjectKind
    path: Expression = ""

    @model_validator(mode="after")
    def _path_fits_kind(self) -> Self:
        if self.kind is SubjectKind.STATUS:
            if self.path:
                raise ValueError("path must be empty for a STATUS subject")
        elif not self.path:
            raise ValueError(f"path is required for a {self.kind} subject")
        if self.kind is SubjectKind.VARIABLE:
            try:
                parse_variable_path(self.path)
            except TemplateSyntaxError as exc:
                raise ValueError(str(exc)) from exc
        return self


class Condition(FrozenModel):
    """One test: subject, operator, operand."""

    subject: Subject
    operator: Operator
    operand: JsonValue = Field(default=None, validate_default=True)
    ignore_case: bool = False
    quantifier: Quantifier | None = None

    @field_validator("operand")
    @classmethod
    def _operand_fits_operator(cls, operand: JsonValue, info: ValidationInfo) -> JsonValue:
        op = info.data.get("operator")
        if op is None:  # the operator itself is invalid; that is reported on its own field
            return operand
        problem = operand_problem(op, operand)
        if problem:
            raise ValueError(problem)
        return operand


class Branch(FrozenModel):
    """One if / else-if arm: when its conditions hold, the workflow goes to `target`."""

    target: Target
    combinator: Combinator = Combinator.ALL
    conditions: Annotated[tuple[Condition, ...], Field(max_length=MAX_CONDITIONS_PER_BRANCH)] = ()


class Extraction(FrozenModel):
    """Copy one value out of a JSON document into a variable."""

    variable: VariableName
    path: Annotated[Expression, StringConstraints(min_length=1)]
    default_value: JsonValue = None
    required: bool = False
    cast: CastType | None = None


class Node(FrozenModel):
    """An API-conditional workflow node: one connector, ordered branches, else and error targets."""

    id: Annotated[str, StringConstraints(max_length=256)] = ""
    connector_id: Annotated[str, StringConstraints(min_length=1, max_length=64)]
    branches: Annotated[tuple[Branch, ...], Field(max_length=MAX_BRANCHES)] = ()
    else_target: Target = ""
    error_target: Target = ""
    extractions: Annotated[tuple[Extraction, ...], Field(max_length=MAX_EXTRACTIONS)] = ()


def operand_problem(op: Operator, operand: JsonValue) -> str:
    """What is wrong with an operand for an operator ("" when it fits): the one rule set.

    The model checks it when a condition is validated; the compiler (sidecar.core.conditions)
    checks it again, so a condition built without validation cannot reach a judge it does not
    fit.
    """
    if op in UNARY_OPERATORS:
        return f"operand must be unset for {op}" if operand is not None else ""
    if op in (Operator.IN, Operator.NOT_IN):
        return "" if isinstance(operand, list | tuple) else f"operand must be a list for {op}"
    if op is Operator.BETWEEN:
        if not (
            isinstance(operand, list | tuple)
            and len(operand) == 2
            and all(_is_number(bound) for bound in operand)
        ):
            return "operand must be a [low, high] pair of numbers for BETWEEN"
        if operand[0] > operand[1]:  # type: ignore[operator]
            return "operand must be [low, high] with low <= high for BETWEEN"
        return ""
    if op is Operator.STATUS_CLASS:
        if isinstance(operand, str) and STATUS_CLASS_PATTERN.fullmatch(operand):
            return ""
        return 'operand must be a status class "1xx" ... "5xx" for STATUS_CLASS'
    if op is Operator.MATCHES:
        if isinstance(operand, str) and len(operand) <= MAX_EXPRESSION_CHARS:
            return ""
        return (
            f"operand must be a regular expression of at most {MAX_EXPRESSION_CHARS} "
            "characters for MATCHES"
        )
    if operand is None and op not in (Operator.EQUALS, Operator.NOT_EQUALS):
        return f"operand is required for {op}"
    return ""


def _is_number(value: JsonValue) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)
