"""Logging: JSON lines for log pipelines (the default) or readable text for a terminal.

Every line carries the trace and span ids of the span it was written in, so a log search can jump
to the trace and back. Structured fields travel as `extra={"fields": {...}}` (the evaluation line
of `telemetry` does so): JSON puts them at the top level, text appends them as `key=value`.
Libraries pass theirs as plain `extra=` attributes (stamina's `stamina.retry_num`,
`stamina.wait_for` ...): JSON keeps those at the top level too. Text lines escape control
characters (CR, LF, ESC ...) in the message and the fields, so a value from a request (a node id
holding a line feed) cannot forge a line; the traceback alone keeps its newlines.

    {"timestamp": "2026-05-10T08:05:00.123Z", "level": "INFO", "logger": "sidecar.evaluations",
     "message": "node evaluated", "trace_id": "4bf9...", "span_id": "00f0...",
     "connector": "order-status", "outcome": "MATCHED", "reason": "BRANCH_MATCHED", ...}
"""

from __future__ import annotations

import contextlib
import datetime as dt
import io
import json
import logging
import math
import os
import re
import sys
import time
from collections.abc import Mapping
from typing import IO, Any, Final

from opentelemetry import trace

# Keys a field may not overwrite.
_RESERVED = frozenset({"timestamp", "level", "logger", "message", "trace_id", "span_id"})
# What every LogRecord has; any other attribute came from a logging call's `extra=`.
_RECORD_ATTRIBUTES = frozenset(
    {*logging.LogRecord("", 0, "", 0, "", (), None).__dict__, "message", "asctime", "fields"}
)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


def configure_logging(level: str, log_format: str = "json", stream: IO[str] | None = None) -> None:
    """Send every log record to `stream` (stderr) as JSON lines or text; replaces any handler."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(JsonFormatter() if log_format == "json" else TextFormatter())
    logging.basicConfig(level=level.upper(), handlers=[handler], force=True)


def trace_ids() -> tuple[str, str] | None:
    """(trace_id, span_id) in W3C hex of the current span, or None outside any trace."""
    span_context = trace.get_current_span().get_span_context()
    if not span_context.is_valid:
        return None
    return f"{span_context.trace_id:032x}", f"{span_context.span_id:016x}"


class JsonFormatter(logging.Formatter):
    """One JSON object per record: timestamp (ISO 8601 UTC), level, logger, message, ids, fields."""

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "timestamp": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        ids = trace_ids()
        if ids is not None:
            entry["trace_id"], entry["span_id"] = ids
        for key, value in _fields(record).items():
            if key not in _RESERVED:
                entry[key] = value
        for key, value in _extras(record).items():
            if key not in _RESERVED and key not in entry:
                entry[key] = value
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return json.dumps(entry, default=str, ensure_ascii=False)


class TextFormatter(logging.Formatter):
    """`<time> <LEVEL> <logger>: <message> key=value ... trace_id=... span_id=...`."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)s %(name)s: %(message)s")

    def formatMessage(self, record: logging.LogRecord) -> str:  # noqa: N802 (logging's name)
        """The first line, control characters escaped (the traceback is added after it)."""
        return escape_controls(super().formatMessage(record))

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        extras = [
            escape_controls(f"{key}={value}")
            for key, value in (*_fields(record).items(), *_extras(record).items())
        ]
        ids = trace_ids()
        if ids is not None:
            extras += [f"trace_id={ids[0]}", f"span_id={ids[1]}"]
        if not extras:
            return line
        head, newline, rest = line.partition("\n")  # keep a traceback below the first line
        return f"{head} {' '.join(extras)}{newline}{rest}"


def escape_controls(text: str) -> str:
    r"""`text` with control characters written as escapes, so it stays one line.

    >>> escape_controls("node\r\nFORGED INFO line\x1b[31m")
    'node\\r\\nFORGED INFO line\\x1b[31m'
    """
    return _CONTROL.sub(_escaped, text)


def _escaped(match: re.Match[str]) -> str:
    return repr(match.group())[1:-1]


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    """Attributes a library passed with `extra=` (stamina's retry fields, for instance)."""
    return {
        key: value
        for key, value in record.__dict__.items()
        if key not in _RECORD_ATTRIBUTES and not key.startswith("_")
    }


def _fields(record: logging.LogRecord) -> Mapping[str, Any]:
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, Mapping) else {}


def _timestamp(created: float) -> str:
    """ISO 8601 UTC with milliseconds, as `datetime.fromtimestamp` rounds `created`.

    strftime costs more than the rest of the evaluation's line together, so the text up to the
    second is made once per second (the rounding is datetime's: half-even to the microsecond,
    carried into the second).

    >>> _timestamp(1764766800.0), _timestamp(1764766800.9999996)
    ('2025-12-03T13:00:00.000Z', '2025-12-03T13:00:01.000Z')
    """
    fraction, whole = math.modf(created)
    micro = round(fraction * 1e6)
    if micro >= 1_000_000:
        whole, micro = whole + 1, micro - 1_000_000
    elif micro < 0:  # before 1970: modf keeps the sign
        whole, micro = whole - 1, micro + 1_000_000
    global _last_second
    second, text = _last_second
    if second != whole:
        text = dt.datetime.fromtimestamp(whole, dt.UTC).strftime("%Y-%m-%dT%H:%M:%S.")
        _last_second = (whole, text)  # one tuple: a thread reads the second and its text
    return f"{text}{micro // 1000:03d}Z"


_last_second: tuple[float, str] = (math.nan, "")  # the second last formatted, and its text


# -- the evaluation line, written directly ------------------------------------------------------

_ENCODER = json.JSONEncoder(default=str, ensure_ascii=False)  # what JsonFormatter's dumps builds


class JsonLine:
    """An INFO line written on the hot path (the evaluation's) as `JsonFormatter` writes it,
    without a LogRecord, and with the fields whose values repeat encoded once per distinct set
    of values; `write` answers False (nothing written) unless logging is configured as
    `configure_logging` leaves it for JSON, and the caller logs as usual.

    The evaluation line may be written on every EvaluateNode call (`evaluation_log_every: 1`):
    a LogRecord, the handler chain and the formatter cost about 100 us of the sidecar's CPU per
    call (bench/run.py); this line 3.8 us in process (bench/results/round2-notes.md). Any other
    configuration (a handler or
    filter added, text format, a test's capture) makes the caller log as usual, so what is
    written never depends on this shortcut.

    `fixed` fields (connector, outcome, reason ...) take few distinct values: their JSON text
    is kept per tuple of values (at most FIXED_SETS_KEPT, then the cache starts over); `varying`
    fields (latencies) are numbers written each time. The line is the formatter's, key for key
    and byte for byte: the JSON of an object is its items' texts joined by ", ", so a kept text
    of some items is the text the encoder writes for them in the whole line. A position holds
    values of one type (1 and True would share a kept text).
    """

    __slots__ = ("_fixed", "_kept", "_logger", "_names", "_template")

    def __init__(
        self,
        logger: logging.Logger,
        message: str,
        *,
        fixed: tuple[str, ...],
        varying: tuple[str, ...],
    ) -> None:
        reserved = _RESERVED.intersection((*fixed, *varying))
        if reserved or len({*fixed, *varying}) != len(fixed) + len(varying):
            raise ValueError(f"fields must be distinct and not reserved: {sorted(reserved)}")
        self._logger = logger
        self._fixed = fixed
        self._names = (*fixed, *varying)
        head = _ENCODER.encode({"level": "INFO", "logger": logger.name, "message": message})
        # The whole line as one %-template (its own text escaped): the timestamp, the trace
        # ids, the kept text of the fixed fields, then each varying field's key and value.
        keys = "".join(f", {_ENCODER.encode(key).replace('%', '%%')}: %s" for key in varying)
        self._template = '{"timestamp": "%s", ' + head[1:-1].replace("%", "%%") + "%s%s" + keys
        self._kept: dict[tuple[Any, ...], str] = {}

    def fields(self, fixed: tuple[Any, ...], varying: tuple[Any, ...]) -> dict[str, Any]:
        """The fields as a mapping, for `logger.info(..., extra={"fields": ...})` when `write`
        did not write (any other logging configuration)."""
        return dict(zip(self._names, (*fixed, *varying), strict=True))

    def write(
        self, fixed: tuple[Any, ...], varying: tuple[Any, ...], *, traced: bool = True
    ) -> bool:
        """Write the line with these values (in the order of the names given); False (nothing
        written) unless logging is configured as `configure_logging` leaves it for JSON.
        `traced=False`: the caller knows no span can be current (traces are off), and the
        context is not searched for one."""
        handler = _plain_json_handler(self._logger)
        if handler is None:
            return False
        text = self._kept.get(fixed)
        if text is None:
            text = _ENCODER.encode(dict(zip(self._fixed, fixed, strict=True)))[1:-1]
            text = f", {text}" if text else ""
            if len(self._kept) >= FIXED_SETS_KEPT:
                self._kept.clear()
            self._kept[fixed] = text
        ids = trace_ids() if traced else None
        traced_by = "" if ids is None else f', "trace_id": "{ids[0]}", "span_id": "{ids[1]}"'
        values = (_timestamp(time.time()), traced_by, text, *map(_number, varying))
        return _emit(handler, f"{self._template % values}}}{handler.terminator}")


FIXED_SETS_KEPT: Final = 4096


def _number(value: Any) -> str:
    """`value` as the encoder writes it (repr for a finite float or an int: what it calls)."""
    kind = type(value)
    if kind is float and value - value == 0:  # finite: NaN and the infinities have names
        return float.__repr__(value)
    if kind is int:
        return int.__repr__(value)
    return _ENCODER.encode(value)


def _emit(handler: logging.StreamHandler[Any], line: str) -> bool:
    """Write `line` under the handler's lock, as `StreamHandler.emit` does: straight to the
    file descriptor of a file stream (its text layer and buffer would add nothing, the handler
    flushes each line anyway), else written and flushed."""
    stream = handler.stream
    with handler.lock or contextlib.nullcontext():
        try:
            descriptor, encoding, errors = _file_of(stream)
            if descriptor < 0:
                stream.write(line)
                stream.flush()
            else:
                data = line.encode(encoding, errors)
                while data:  # a whole line in one write, unless a signal cut it short
                    data = data[os.write(descriptor, data) :]
        except Exception:  # the stream failed: logging reports it (handleError), as it would
            return False
    return True


def _file_of(stream: IO[str]) -> tuple[int, str, str]:
    """The descriptor, encoding and errors of a text stream over a file (-1 for any other
    stream: a StringIO, a wrapper of a wrapper), worked out once per stream."""
    global _last_stream
    kept, file = _last_stream
    if kept is stream and not stream.closed:  # closed, its descriptor may now be another file's
        return file
    file = (-1, "", "")
    if (
        type(stream) is io.TextIOWrapper
        and type(stream.buffer) is io.BufferedWriter
        and not stream.closed
    ):
        with contextlib.suppress(OSError, ValueError):
            stream.flush()  # what the text layer holds goes first
            file = (stream.fileno(), stream.encoding, stream.errors or "strict")
    _last_stream = (stream, file)
    return file


_last_stream: tuple[object, tuple[int, str, str]] = (None, (-1, "", ""))


def _plain_json_handler(logger: logging.Logger) -> logging.StreamHandler[Any] | None:
    """The one root StreamHandler with a JsonFormatter that an INFO line of `logger` reaches
    untouched (no filter, no other handler on the way); None for any other configuration."""
    if logger.manager.disable >= logging.INFO or not logger.isEnabledFor(logging.INFO):
        return None
    current: logging.Logger | None = logger
    while current is not None:
        if current.filters:
            return None
        if current.handlers:
            if current is not logging.root or len(current.handlers) != 1:
                return None
            handler = current.handlers[0]
            if (
                type(handler) is not logging.StreamHandler
                or type(handler.formatter) is not JsonFormatter
                or handler.filters
                or handler.level > logging.INFO
            ):
                return None
            return handler
        if not current.propagate:
            return None
        current = current.parent
    return None
