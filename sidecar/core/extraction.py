"""Extractions: copy values out of the response body into workflow variables.

Like conditions, extractions are compiled once per node (JMESPath parsed, defaults cast) and
applied to each response without parsing. `apply` reports every extraction, failures included,
in the order the node lists them, and never raises: a value that cannot be found or converted is
a result with a status and a message, and the caller decides what a required failure means.

    >>> from sidecar.core.model.node import Extraction
    >>> compiled = compile_extractions([Extraction(variable="total", path="order.total",
    ...                                            cast=CastType.INTEGER)])
    >>> compiled.apply({"order": {"total": "42"}}, has_document=True)[0]
    {'total': 42}

Statuses. EXTRACTED: the expression yielded a value and the cast (if any) succeeded. DEFAULTED:
there was no value (the expression yielded null, failed at run time, or there was no JSON
document) and the extraction has a default. MISSING: no value and no default. NO_DOCUMENT: no
JSON document and no default. CAST_FAILED: a value was found but the cast refused it; the default
is not used in that case, because a value of the wrong type is a contract problem worth seeing.

Casts:

    cast      accepts                                         gives
    (none)    any value                                       the value, integral floats as ints
    STRING    string, number, boolean; list or object         the text (5.0 -> "5"); compact JSON
    NUMBER    number, or a string that reads as one           the number ("5.0" -> 5, "1e3" -> 1000)
    INTEGER   integral number, or a string reading as one     an integer ("5.0" -> 5; "5.5" fails)
    BOOLEAN   boolean, or "true" / "false" in any case        the boolean
    JSON      any value                                       compact JSON text ("a" -> "\\"a\\"")

Booleans are never numbers, NaN and infinities never cast to NUMBER or INTEGER, and JSON refuses
them (they are not JSON). A default is cast like an extracted value when the node is compiled, so
a default that does not fit its cast is refused there (`extractions[i].default_value`) instead of
failing on every call.
"""

from __future__ import annotations

import json
import reprlib
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sidecar.core import values
from sidecar.core.budget import (
    BYTES_PER_UNIT,
    AnswerTooLargeError,
    Budget,
    BudgetExhaustedError,
    LimitExceededError,
    unbounded,
    value_floor,
)
from sidecar.core.model.failures import CastError
from sidecar.core.model.node import CastType, Extraction
from sidecar.core.model.outcome import ExtractionResult, ExtractionStatus
from sidecar.core.query import Query, compile_query
from sidecar.errors import FieldViolation, InvalidArgumentError

_NO_DEFAULT: Final = object()
_PREVIEW_CHARS: Final = 80


class CompiledExtractions:
    """A node's extractions, ready to be applied to any number of documents::

        compiled = compile_extractions(node.extractions)       # once per node
        variables, results = compiled.apply(body, has_document=True)
        required_failures(results)                             # () when none failed

    The module docstring has a runnable example.
    """

    __slots__ = ("_extractions", "roots")

    def __init__(self, extractions: Sequence[_CompiledExtraction]) -> None:
        self._extractions = tuple(extractions)
        # The top-level fields of a document these queries read, when every one is a plain
        # path (`status`, `carrier.name`); None when any other JMESPath may read anything (`*`,
        # `@`, `keys(@)`). A caller holding the document in another form reads only these.
        fields = [extraction.query.fields for extraction in self._extractions]
        self.roots: frozenset[str] | None = (
            None if None in fields else frozenset(path[0] for path in fields if path)
        )

    def __len__(self) -> int:
        return len(self._extractions)

    @property
    def models(self) -> list[Extraction]:
        """The extractions as compiled, their default values `frozen` (what a compiled node
        keeps of them)."""
        return [extraction.extraction for extraction in self._extractions]

    def apply(
        self,
        document: Any,
        *,
        has_document: bool,
        budget: Budget | None = None,
        max_answer_bytes: int | None = None,
    ) -> tuple[dict[str, Any], tuple[ExtractionResult, ...]]:
        """The variables that were set, and one result per extraction in the node's order.

        Raises BudgetExhaustedError or LimitExceededError when the evaluation must stop, and
        AnswerTooLargeError when the values alone encode to more than `max_answer_bytes` (the
        gRPC message limit): 64 extractions of `@` from a 1 MB document built a 64 MB answer
        (726 MiB of peak RSS, 2 s on the event loop) only for grpc to refuse it.
        """
        budget = budget or unbounded()
        variables: dict[str, Any] = {}
        results: list[ExtractionResult] = []
        answer_bytes = 0
        for extraction in self._extractions:
            budget.spend()
            result = extraction.apply(document, has_document, budget)
            if result.succeeded:
                variables[result.variable] = result.value
                answer_bytes += result.value_bytes
            results.append(result)
        if max_answer_bytes is not None and answer_bytes > max_answer_bytes:
            raise AnswerTooLargeError(
                f"the extracted values alone would take at least {answer_bytes} bytes, over the "
                f"{max_answer_bytes}-byte gRPC message limit (max_message_bytes); extract less"
            )
        return variables, tuple(results)


def compile_extractions(
    extractions: Sequence[Extraction], *, field_prefix: str = "extractions"
) -> CompiledExtractions:
    """Compile every extraction, or raise InvalidArgumentError naming every bad field at once."""
    violations: list[FieldViolation] = []
    compiled: list[_CompiledExtraction] = []
    first_index: dict[str, int] = {}
    for index, extraction in enumerate(extractions):
        field = f"{field_prefix}[{index}]"
        earlier = first_index.setdefault(extraction.variable, index)
        if earlier != index:
            violations.append(
                FieldViolation(
                    f"{field}.variable",
                    f"{extraction.variable!r} is already extracted by extraction {earlier}",
                )
            )
        try:
            query = compile_query(extraction.path)
        except ValueError as exc:
            violations.append(FieldViolation(f"{field}.path", str(exc)))
            continue
        cast = _CASTS[extraction.cast]
        default: Any = _NO_DEFAULT
        if extraction.default_value is not None:
            try:
                default = cast(extraction.default_value)
            except CastError as exc:
                description = f"default_value {_preview(extraction.default_value)} {exc}"
                violations.append(FieldViolation(f"{field}.default_value", description))
                continue
        # Kept as long as the compiled form, so `frozen` (the collector walks no list of it).
        if isinstance(default, list | dict):
            default = values.frozen(default)
        if isinstance(extraction.default_value, list | dict):
            frozen_default = values.frozen(extraction.default_value)
            extraction = extraction.model_copy(update={"default_value": frozen_default})
        default_bytes = 0 if default is _NO_DEFAULT else value_floor(default)
        compiled.append(_CompiledExtraction(extraction, query, cast, default, default_bytes))
    if violations:
        raise InvalidArgumentError(violations)
    return CompiledExtractions(compiled)


def required_failures(results: Iterable[ExtractionResult]) -> tuple[ExtractionResult, ...]:
    """The required extractions that set no value; non-empty means EXTRACTION_FAILED."""
    return tuple(result for result in results if result.required and not result.succeeded)


@dataclass(frozen=True, slots=True)
class _CompiledExtraction:
    extraction: Extraction
    query: Query
    cast: Callable[[Any], Any]
    default: Any
    default_bytes: int = 0  # value_floor(default)

    def apply(self, document: Any, has_document: bool, budget: Budget) -> ExtractionResult:
        try:
            return self._apply(document, has_document, budget)
        except (BudgetExhaustedError, LimitExceededError):
            raise
        except Exception as exc:  # apply() answers whatever the document holds
            return self._result(ExtractionStatus.MISSING, message=f"failed: {type(exc).__name__}")

    def _apply(self, document: Any, has_document: bool, budget: Budget) -> ExtractionResult:
        if not has_document:
            return self._absent(ExtractionStatus.NO_DOCUMENT, "no JSON document")
        found, failure = self.query.find(document, budget)
        if failure:  # no value, as for null, but the reason is kept
            return self._absent(ExtractionStatus.MISSING, f"{self.extraction.path!r}: {failure}")
        if found is None:
            return self._absent(ExtractionStatus.MISSING, f"{self.extraction.path!r} yielded null")
        found_bytes = 0
        if isinstance(found, list | dict):
            # A cast reads the whole value (normalising copies it, JSON and STRING write it):
            # its size is spent first, so a large one is cast off the loop. 64 extractions of
            # `@` on a 1 MB document held the loop 0.1-0.3 s, on 100,000 numbers 3 s.
            budget.spend(len(found))
            found_bytes = value_floor(found, budget)
            budget.spend(found_bytes // BYTES_PER_UNIT)
        try:
            value = self.cast(found)
        except CastError as exc:
            return self._result(ExtractionStatus.CAST_FAILED, message=f"{_preview(found)} {exc}")
        # A container kept as it is encodes as the one found (its numbers normalised only).
        if isinstance(value, list | dict):
            value_bytes = found_bytes
        else:  # a scalar: value_floor without its walk (this is every call's path)
            value_bytes = len(value) + 2 if isinstance(value, str) else 2
        return self._result(ExtractionStatus.EXTRACTED, value, value_bytes=value_bytes)

    def _absent(self, status: ExtractionStatus, reason: str) -> ExtractionResult:
        if self.default is _NO_DEFAULT:
            return self._result(status, message=f"{reason} and there is no default")
        default = self.default
        if isinstance(default, tuple | dict):  # kept `frozen`; the caller reads plain JSON
            default = values.thawed(default)
        message = f"{reason}; default used"
        return self._result(ExtractionStatus.DEFAULTED, default, message, self.default_bytes)

    def _result(
        self, status: ExtractionStatus, value: Any = None, message: str = "", value_bytes: int = 0
    ) -> ExtractionResult:
        extraction = self.extraction
        return ExtractionResult(
            extraction.variable, status, value, extraction.required, message, value_bytes
        )


def _as_is(value: Any) -> Any:
    return values.normalise_numbers(value)


def _to_string(value: Any) -> str:
    try:
        return values.value_text(value)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CastError("cannot be written as STRING") from exc


def _to_number(value: Any) -> float | int:
    number = values.as_number(value)
    if number is None:
        raise CastError("is not a NUMBER: use a number or a numeric string")
    normalised: float | int = values.normalise_numbers(number)
    return normalised


def _to_integer(value: Any) -> int:
    number = values.as_number(value)
    if number is None:
        raise CastError("is not an INTEGER: use a number or a numeric string")
    if isinstance(number, float):
        if not number.is_integer():
            raise CastError("is not an INTEGER: it has a fractional part")
        return int(number)
    return number


def _to_boolean(value: Any) -> bool:
    boolean = values.as_boolean(value)
    if boolean is None:
        raise CastError('is not a BOOLEAN: use true, false, "true" or "false"')
    return boolean


def _to_json(value: Any) -> str:
    try:
        normalised = values.normalise_numbers(value)
        return json.dumps(normalised, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    except (TypeError, ValueError, RecursionError) as exc:
        raise CastError("cannot be written as JSON") from exc


_CASTS: Final[dict[CastType | None, Callable[[Any], Any]]] = {
    None: _as_is,
    CastType.STRING: _to_string,
    CastType.NUMBER: _to_number,
    CastType.INTEGER: _to_integer,
    CastType.BOOLEAN: _to_boolean,
    CastType.JSON: _to_json,
}


_REPR: Final = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = _PREVIEW_CHARS
_REPR.maxlevel = 3


def _preview(value: Any) -> str:
    """A short repr for messages: bounded in size and depth, so a huge body cannot bloat one."""
    try:
        text = _REPR.repr(value)
    except ValueError:  # an integer beyond Python's int-to-text digit limit
        text = f"<{type(value).__name__} too long to show>"
    return text if len(text) <= _PREVIEW_CHARS else text[: _PREVIEW_CHARS - 3] + "..."
