"""Branch conditions as plain data: one builder for the model's spelling and the wire's.

`condition` gives what `Condition.model_validate` reads (and what a connectors-file node holds);
`on_the_wire` respells it for `json_format.ParseDict` into the proto, whose enums carry their
type as a prefix (`SUBJECT_KIND_BODY`, `OPERATOR_EQUALS`, `QUANTIFIER_ANY`).

    >>> condition("GREATER_THAN", 5)
    {'subject': {'kind': 'BODY', 'path': 'v'}, 'operator': 'GREATER_THAN', 'operand': 5}
    >>> on_the_wire(condition("EXISTS", kind="STATUS"))
    {'subject': {'kind': 'SUBJECT_KIND_STATUS'}, 'operator': 'OPERATOR_EXISTS'}
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NO_OPERAND: Any = object()
"""The default operand: the condition has no `operand` key at all (the model reads None)."""


def condition(
    operator: str,
    operand: Any = NO_OPERAND,
    *,
    kind: str = "BODY",
    path: str = "v",
    subject: Mapping[str, Any] | None = None,
    ignore_case: bool = False,
    quantifier: str | None = None,
    **fields: Any,
) -> dict[str, Any]:
    """A Condition in the model's spelling (kind, operator and quantifier without prefixes).

    The subject is {"kind": kind, "path": path}, without a path for STATUS, unless `subject`
    is given as it is (to see a malformed one refused); `path` defaults to "v", where the
    condition tables put the value under test. `fields` adds any other key, unknown ones too.
    """
    if subject is None:
        subject = {"kind": kind} if kind == "STATUS" else {"kind": kind, "path": path}
    data: dict[str, Any] = {"subject": dict(subject), "operator": operator}
    if operand is not NO_OPERAND:
        data["operand"] = operand
    if ignore_case:
        data["ignore_case"] = True
    if quantifier:
        data["quantifier"] = quantifier
    data.update(fields)
    return data


def on_the_wire(data: Mapping[str, Any]) -> dict[str, Any]:
    """The same condition in the proto's JSON spelling, for ParseDict."""
    wire = dict(data)
    subject = dict(data["subject"])
    subject["kind"] = f"SUBJECT_KIND_{subject['kind']}"
    wire["subject"] = subject
    wire["operator"] = f"OPERATOR_{data['operator']}"
    if "quantifier" in data:
        wire["quantifier"] = f"QUANTIFIER_{data['quantifier']}"
    return wire
