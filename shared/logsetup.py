"""Logging for every edgefleet process: JSON lines in production, readable text for dev."""

from __future__ import annotations

import logging
import sys
import time
from typing import TextIO

import orjson

from edgefleet.shared import telemetry
from edgefleet.shared.printable import printable

_RESERVED = set(logging.LogRecord("", 0, "", 0, "", (), None).__dict__) | {"message", "asctime"}


class TraceContextFilter(logging.Filter):
    """Stamps each record with the trace and span ids current where it was logged."""

    def filter(self, record: logging.LogRecord) -> bool:
        found = telemetry.ids()
        if found is not None:
            record.trace_id, record.span_id = found
        return True


class TextFormatter(logging.Formatter):
    """For humans (``edgefleet dev``): time, level, logger, message, and the trace id. One
    record is one line: control characters in the message (a tool name a client made up, an
    agent's error text) are escaped, so nothing can forge a line or colour the terminal; a
    traceback, ours, follows on its own lines."""

    def __init__(self) -> None:
        super().__init__("%(asctime)s %(levelname)-7s %(name)s: %(message)s", "%H:%M:%S")

    def formatMessage(self, record: logging.LogRecord) -> str:
        record.message = printable(record.message)
        return super().formatMessage(record)

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        trace_id = getattr(record, "trace_id", None)
        return f"{line}  trace={trace_id}" if trace_id else line


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        entry.update({k: v for k, v in record.__dict__.items() if k not in _RESERVED})
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return orjson.dumps(entry, default=str).decode()


def configure(level: str = "info", fmt: str = "json", *, stream: TextIO | None = None) -> None:
    handler = logging.StreamHandler(stream or sys.stderr)
    if fmt == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(TextFormatter())
    handler.addFilter(TraceContextFilter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # uvicorn's own access log would double every call; our call log replaces it.
    logging.getLogger("uvicorn.access").disabled = True
