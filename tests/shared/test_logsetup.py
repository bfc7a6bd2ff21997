"""The batched call line: the same JSON object or text line as a log record would be, in the
order events happened, and never lost at a flush or shutdown."""

from __future__ import annotations

import asyncio
import io
import logging
from collections.abc import Iterator

import orjson
import pytest

from edgefleet.shared import logsetup

FIELDS = {"tool": "echo.echo", "outcome": "ok", "code": None, "duration_ms": 1.234, "attempts": 1}
IDS = ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7")


@pytest.fixture
def root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    try:
        yield
    finally:
        logsetup.configure("info", "json", stream=io.StringIO())  # drop the test's stream
        root.handlers[:] = handlers
        root.setLevel(level)


def test_a_json_line_holds_what_the_record_would(root_logger: None) -> None:
    stream = io.StringIO()
    logsetup.configure("info", "json", stream=stream)
    calls = logging.getLogger("edgefleet.calls")
    calls.info("call via logging", extra={**FIELDS, "trace_id": IDS[0], "span_id": IDS[1]})
    logsetup.line(calls, logging.INFO, "call batched", FIELDS, IDS)  # no loop running: written at once
    via_logging, batched = (orjson.loads(line) for line in stream.getvalue().splitlines())
    for entry in (via_logging, batched):
        assert entry.pop("ts").endswith("Z")
    assert batched == {**via_logging, "msg": "call batched"}
    assert batched["trace_id"] == IDS[0] and batched["code"] is None and batched["logger"] == "edgefleet.calls"


def test_a_text_line_reads_like_the_formatter_s(root_logger: None) -> None:
    stream = io.StringIO()
    logsetup.configure("info", "text", stream=stream)
    calls = logging.getLogger("edgefleet.calls")
    calls.info("call via logging", extra={"trace_id": IDS[0]})
    logsetup.line(calls, logging.INFO, "call batched", FIELDS, IDS)
    logsetup.line(calls, logging.WARNING, "call untraced", FIELDS, None)
    first, second, third = stream.getvalue().splitlines()
    assert first.split(" ", 1)[1] == f"INFO    edgefleet.calls: call via logging  trace={IDS[0]}"
    assert second.split(" ", 1)[1] == f"INFO    edgefleet.calls: call batched  trace={IDS[0]}"
    assert third.split(" ", 1)[1] == "WARNING edgefleet.calls: call untraced"


async def test_lines_wait_for_the_batch_but_never_for_longer_than_other_records(root_logger: None) -> None:
    stream = io.StringIO()
    logsetup.configure("info", "json", stream=stream)
    calls = logging.getLogger("edgefleet.calls")
    for n in range(3):
        logsetup.line(calls, logging.INFO, f"call {n}", FIELDS, None)
    assert stream.getvalue() == ""  # batched while the loop runs
    logging.getLogger("edgefleet.other").warning("something else")  # writes the batch first
    assert [orjson.loads(line)["msg"] for line in stream.getvalue().splitlines()] == [
        "call 0",
        "call 1",
        "call 2",
        "something else",
    ]
    logsetup.line(calls, logging.INFO, "call 3", FIELDS, None)
    await asyncio.sleep(logsetup.FLUSH_INTERVAL_S * 3)  # the timer writes it
    assert orjson.loads(stream.getvalue().splitlines()[-1])["msg"] == "call 3"
    logsetup.line(calls, logging.INFO, "call 4", FIELDS, None)
    logging.getLogger().handlers[0].flush()  # what logging.shutdown does at exit
    assert orjson.loads(stream.getvalue().splitlines()[-1])["msg"] == "call 4"


def test_with_other_handlers_the_line_goes_through_logging(root_logger: None, caplog: pytest.LogCaptureFixture) -> None:
    # caplog's handler is on the root logger: the batch is not the only way out, so logging it is.
    with caplog.at_level(logging.INFO, logger="edgefleet.calls"):
        logsetup.line(logging.getLogger("edgefleet.calls"), logging.INFO, "call x", FIELDS, IDS)
    (record,) = caplog.records
    assert (
        record.getMessage() == "call x"
        and record.__dict__["trace_id"] == IDS[0]
        and record.__dict__["tool"] == "echo.echo"
    )
