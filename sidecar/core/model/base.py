"""The bases every domain model shares: validated models, and the records made on every call."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TypeVar, dataclass_transform

from pydantic import BaseModel, ConfigDict

T = TypeVar("T")


class FrozenModel(BaseModel):
    """Immutable once validated; unknown fields are refused so typos are reported, not ignored."""

    model_config = ConfigDict(frozen=True, extra="forbid")


@dataclass_transform(frozen_default=True, field_specifiers=(field,))
def record(cls: type[T]) -> type[T]:
    """A dataclass frozen to the type checker and plain at run time, for what every call makes
    (an outcome, a response, a request on its way out).

    mypy refuses any assignment to a record's field, as for a frozen dataclass, and a record
    hashes and compares by its fields as one does; what it leaves out is frozen's run-time
    guard, which makes `__init__` set each field through `object.__setattr__`: 1.1 us for 16
    fields, against 0.15 us by plain assignment, and an evaluation makes a dozen of them.

    >>> @record
    ... class Point:
    ...     x: int
    ...     y: int = 0
    >>> Point(1) == Point(1, 0), hash(Point(1)) == hash(Point(1, 0))
    (True, True)
    """
    return dataclass(slots=True, unsafe_hash=True)(cls)
