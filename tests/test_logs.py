"""Log lines: JSON (the default) and text, with the trace and span ids of the current span."""

from __future__ import annotations

import datetime as dt
import io
import json
import logging
import re
import traceback
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from opentelemetry.sdk.trace import TracerProvider

from sidecar.telemetry.logs import (
    JsonFormatter,
    JsonLine,
    TextFormatter,
    configure_logging,
)


def record(text: str, *, exc_info: Any = None, **fields: Any) -> logging.LogRecord:
    entry = logging.LogRecord("sidecar.test", logging.WARNING, __file__, 1, text, (), exc_info)
    if fields:
        entry.fields = fields
    return entry


@pytest.fixture
def root_logging() -> Iterator[None]:
    """configure_logging replaces the root handlers: put pytest's back afterwards."""
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_json_line_has_the_fields_and_an_iso_utc_timestamp() -> None:
    entry = json.loads(JsonFormatter().format(record("hello %s", connector="c")))

    assert set(entry) == {"timestamp", "level", "logger", "message", "connector"}
    assert (entry["level"], entry["logger"], entry["connector"]) == ("WARNING", "sidecar.test", "c")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", entry["timestamp"])


def test_fields_cannot_overwrite_the_reserved_keys() -> None:
    entry = json.loads(JsonFormatter().format(record("real", message="forged", trace_id="x")))

    assert entry["message"] == "real"
    assert "trace_id" not in entry  # outside a span: no ids, and none forged


def test_json_and_text_lines_inside_a_span_carry_its_ids() -> None:
    provider = TracerProvider()
    with provider.get_tracer("test").start_as_current_span("work") as span:
        entry = json.loads(JsonFormatter().format(record("inside")))
        text = TextFormatter().format(record("inside", outcome="MATCHED"))
    ids = span.get_span_context()
    assert (entry["trace_id"], entry["span_id"]) == (f"{ids.trace_id:032x}", f"{ids.span_id:016x}")
    assert text.endswith(
        f"WARNING sidecar.test: inside outcome=MATCHED trace_id={ids.trace_id:032x} "
        f"span_id={ids.span_id:016x}"
    )


def test_an_exception_stays_inside_its_json_line_and_below_its_text_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError as error:
        exc_info = (type(error), error, error.__traceback__)
    entry = json.loads(JsonFormatter().format(record("failed", exc_info=exc_info)))
    text = TextFormatter().format(record("failed", exc_info=exc_info, outcome="ERROR"))

    assert entry["exception"].endswith("ValueError: boom")
    first, *rest = text.splitlines()
    assert first.endswith("failed outcome=ERROR")
    assert rest[-1] == traceback.format_exception_only(ValueError, exc_info[1])[0].strip()


@pytest.mark.parametrize(("log_format", "json_lines"), [("json", True), ("text", False)])
@pytest.mark.usefixtures("root_logging")
def test_configure_logging_writes_the_chosen_format(log_format: str, json_lines: bool) -> None:
    stream = io.StringIO()
    configure_logging("INFO", log_format, stream)

    logging.getLogger("sidecar.test").info("ready")
    logging.getLogger("sidecar.test").debug("not shown")

    (line,) = stream.getvalue().splitlines()
    if json_lines:
        assert json.loads(line)["message"] == "ready"
    else:
        assert line.endswith("INFO sidecar.test: ready")


# -- the evaluation line written without a LogRecord -----------------------------------------------


@pytest.mark.usefixtures("root_logging")
def test_a_line_written_directly_is_the_line_the_formatter_writes() -> None:
    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    logger = logging.getLogger("sidecar.test.direct")
    line = JsonLine(logger, "node evaluated", fixed=("connector", "n"), varying=("latency_ms",))
    fields = line.fields(("c", None), (1.5,))
    provider = TracerProvider()

    with provider.get_tracer("test").start_as_current_span("work"):
        written = line.write(("c", None), (1.5,))
        logger.info("node evaluated", extra={"fields": fields})

    direct, formatted = (json.loads(line) for line in stream.getvalue().splitlines())
    assert written
    assert list(direct) == list(formatted)  # the same keys in the same order
    assert {**direct, "timestamp": ""} == {**formatted, "timestamp": ""}
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", direct["timestamp"])
    assert direct["message"] == "node evaluated"
    with pytest.raises(ValueError, match="reserved"):  # a field cannot forge the message
        JsonLine(logger, "node evaluated", fixed=("message",), varying=())


@pytest.mark.parametrize("into", ["a StringIO", "a file"])
@pytest.mark.usefixtures("root_logging")
def test_a_line_of_kept_fields_is_the_line_the_formatter_writes_byte_for_byte(
    into: str, tmp_path: Path
) -> None:
    # A file's lines go straight to its descriptor, a StringIO's through its write().
    path = tmp_path / "log.jsonl"
    stream: Any = io.StringIO() if into == "a StringIO" else path.open("w", encoding="utf-8")
    configure_logging("INFO", "json", stream)
    logger = logging.getLogger("sidecar.test.kept")
    line = JsonLine(logger, "node evaluated", fixed=("connector", "node", "index"), varying=("ms",))
    provider = TracerProvider()
    calls = [
        (("c", 'n\u00e9\n"1"', None), (1.5,)),  # escapes, non-ASCII as is, null
        (("c", 'n\u00e9\n"1"', None), (0.001,)),  # the kept text again
        (("c", "n2", 3), (float("nan"),)),  # NaN as the encoder writes it
        (("c", "n2", 3), (2,)),  # an int
    ]

    with provider.get_tracer("test").start_as_current_span("work"):
        for fixed, varying in calls:
            assert line.write(fixed, varying)
            logger.info("node evaluated", extra={"fields": line.fields(fixed, varying)})
    assert line.write(*calls[0])  # outside any span: no ids
    logger.info("node evaluated", extra={"fields": line.fields(*calls[0])})

    if into == "a file":
        stream.close()
    text = stream.getvalue() if into == "a StringIO" else path.read_text(encoding="utf-8")
    lines = text.splitlines()
    assert len(lines) == 2 * len(calls) + 2
    for direct, formatted in zip(lines[::2], lines[1::2], strict=True):
        stamp = re.compile(r'"timestamp": "[^"]*"')
        assert stamp.sub("", direct) == stamp.sub("", formatted)
    assert "trace_id" in lines[0]
    assert "trace_id" not in lines[-2]


def test_a_kept_line_refuses_fields_the_line_itself_writes() -> None:
    with pytest.raises(ValueError, match="message"):
        JsonLine(logging.getLogger("x"), "m", fixed=("message",), varying=())
    with pytest.raises(ValueError, match="distinct"):
        JsonLine(logging.getLogger("x"), "m", fixed=("a",), varying=("a",))


@pytest.mark.parametrize(
    "configuration",
    ["text", "second handler", "filter", "warning", "not propagated"],
)
@pytest.mark.usefixtures("root_logging")
def test_anything_but_the_plain_json_configuration_is_left_to_logging(configuration: str) -> None:
    stream = io.StringIO()
    configure_logging(
        "WARNING" if configuration == "warning" else "INFO",
        "text" if configuration == "text" else "json",
        stream,
    )
    logger = logging.getLogger(f"sidecar.test.{configuration.replace(' ', '_')}")
    if configuration == "second handler":
        logger.addHandler(logging.NullHandler())
    if configuration == "filter":
        logging.getLogger().handlers[0].addFilter(lambda record: True)
    if configuration == "not propagated":
        logger.propagate = False
    try:
        line = JsonLine(logger, "node evaluated", fixed=("connector",), varying=())
        assert not line.write(("c",), ())
    finally:
        logger.handlers.clear()
        logger.propagate = True
    assert stream.getvalue() == ""


@pytest.mark.usefixtures("root_logging")
def test_a_library_lines_structured_fields_stay_in_the_json_line() -> None:
    # stamina's own logging hook, as the egress's retries call it (issue 15).
    from stamina.instrumentation import RetryDetails
    from stamina.instrumentation._logging import init_logging

    stream = io.StringIO()
    configure_logging("INFO", "json", stream)
    init_logging()(
        RetryDetails(
            name="send",
            args=(),
            kwargs={},
            retry_num=2,
            wait_for=0.25,
            waited_so_far=0.5,
            caused_by=ConnectionResetError("reset"),
        )
    )

    entry = json.loads(stream.getvalue())
    assert entry["message"] == "stamina.retry_scheduled"
    assert (entry["stamina.retry_num"], entry["stamina.wait_for"]) == (2, 0.25)
    assert entry["stamina.caused_by"] == "ConnectionResetError('reset')"


def test_extra_attributes_never_overwrite_the_reserved_keys() -> None:
    entry = logging.LogRecord("lib", logging.INFO, __file__, 1, "real", (), None)
    entry.__dict__.update({"level": "forged", "custom": {"n": 1}})

    line = json.loads(JsonFormatter().format(entry))

    assert (line["level"], line["custom"]) == ("INFO", {"n": 1})


@pytest.mark.parametrize("hostile", ["a\r\nFORGED INFO x: y", "a\nb", "a\x1b[2Jb", "a\u2028b"])
def test_a_text_line_escapes_control_characters_in_message_and_fields(hostile: str) -> None:
    text = TextFormatter().format(record("node %s", node_id=hostile))
    entry = logging.LogRecord(
        "sidecar.test", logging.WARNING, __file__, 1, "node %s", (hostile,), None
    )

    assert len(text.splitlines()) == 1
    assert len(TextFormatter().format(entry).splitlines()) == 1
    assert "\x1b" not in text
    assert repr(hostile)[1:-1] in TextFormatter().format(entry)


@pytest.mark.parametrize(
    "created",
    [
        0.0,
        1764766800.0,
        1764766800.00049,
        1764766800.0005,
        1764766800.99949,
        1764766800.9995,
        1764766800.9999994,
        1764766800.9999996,  # rounds up into the next second, as datetime does
        1764766801.25,
        1764766859.9999999,  # ... and into the next minute
        2000000000.123456,
    ],
)
def test_a_timestamp_is_the_one_datetime_would_write(created: float) -> None:
    def expected(at: float) -> str:
        moment = dt.datetime.fromtimestamp(at, dt.UTC)
        return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"

    def written(at: float) -> str:
        entry = record("tick")
        entry.created = at
        return str(json.loads(JsonFormatter().format(entry))["timestamp"])

    assert written(created) == expected(created)
    assert written(created - 86400.0) == expected(created - 86400.0)  # not the second remembered
    assert written(created) == expected(created)


@pytest.mark.usefixtures("root_logging")
def test_a_closed_log_file_is_never_written_through_its_old_descriptor(tmp_path: Path) -> None:
    # The line goes to a file stream's descriptor; once that stream is closed, the number may
    # belong to another file, which must not receive the line.
    stream = (tmp_path / "log.jsonl").open("w", encoding="utf-8")
    configure_logging("INFO", "json", stream)
    logger = logging.getLogger("sidecar.test.closed")
    line = JsonLine(logger, "node evaluated", fixed=("connector",), varying=())
    assert line.write(("c",), ())
    descriptor = stream.fileno()
    stream.close()
    other = (tmp_path / "other.txt").open("w", encoding="utf-8")
    try:
        assert other.fileno() == descriptor  # the lowest free number: the one just closed
        assert not line.write(("c",), ())  # refused, as a closed stream's write always was
    finally:
        other.close()
    assert (tmp_path / "other.txt").read_text() == ""
