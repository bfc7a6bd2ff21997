"""Logging for every edgefleet process: JSON lines in production, readable text for dev.

The dispatcher writes one info line per tool call. Through ``logging`` that line cost ~25-40
µs of CPU (a LogRecord, a filter, the formatter, and a write syscall per line: the handler
flushes every record), the largest single item of the call path's own bookkeeping. So the
call line takes a shorter road: ``line()`` formats it directly (same fields, same text) and
appends it to the handler's batch, which is written at the latest ``FLUSH_INTERVAL_S``
later, when it grows past ``FLUSH_BYTES``, and always BEFORE any other record goes out
(so lines stay in the order they happened), at exit and at ``logging.shutdown``. A process
killed with -9 loses at most the last ~100 ms of call lines (the audit stream, written in
Redis, loses at most its last batch too). Without ``configure`` (in-process tests), the line
goes through ``logging`` as any other.
"""

from __future__ import annotations

import asyncio
import logging
import sys
import time
from collections.abc import Mapping
from typing import Any, TextIO

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


FLUSH_INTERVAL_S = 0.1
FLUSH_BYTES = 64 * 1024


class BatchingHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A stream handler that also carries a batch of pre-formatted lines (``line()``): the
    batch is written before any record, so the stream's order is the order of events."""

    def __init__(self, stream: TextIO, fmt: str) -> None:
        super().__init__(stream)
        self.json = fmt == "json"
        self.pending: list[str] = []
        self.pending_bytes = 0
        self.timer: asyncio.TimerHandle | None = None
        self._second = -1
        self._stamp = ""

    def add(self, text: str) -> None:
        self.pending.append(text)
        self.pending_bytes += len(text)
        if self.pending_bytes >= FLUSH_BYTES:
            self.write_pending()
        elif self.timer is None:
            try:
                loop = asyncio.get_running_loop()
            except RuntimeError:  # no loop (a thread, a script): write at once
                self.write_pending()
                return
            self.timer = loop.call_later(FLUSH_INTERVAL_S, self.write_pending)

    def write_pending(self) -> None:
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
        if not self.pending:
            return
        pending, self.pending = self.pending, []  # swapped, not cleared: a line added meanwhile is kept
        self.pending_bytes = 0
        text = "".join(pending)
        self.acquire()
        try:
            self.stream.write(text)
            self.stream.flush()
        except (OSError, ValueError):  # a closed or broken stream: as logging would, carry on
            pass
        finally:
            self.release()

    def emit(self, record: logging.LogRecord) -> None:
        if self.pending:
            self.write_pending()
        super().emit(record)

    def flush(self) -> None:
        if self.pending:
            self.write_pending()
        super().flush()

    def stamp(self, now: float) -> str:
        """The line's time as the formatters write it (the second part computed once per second)."""
        second = int(now)
        if second != self._second:
            self._second = second
            self._stamp = time.strftime(
                "%Y-%m-%dT%H:%M:%S" if self.json else "%H:%M:%S", time.gmtime(now) if self.json else time.localtime(now)
            )
        if self.json:
            return f"{self._stamp}.{int((now - second) * 1000):03d}Z"
        return self._stamp


_batching: BatchingHandler | None = None


def line(
    logger: logging.Logger,
    level: int,
    message: str,
    fields: Mapping[str, Any],
    trace_ids: tuple[str, str] | None,
) -> None:
    """Write one record's worth of text for ``logger`` at ``level``, batched (see the module
    docstring): the same JSON object or text line a record with ``extra=fields`` would give."""
    handler = _batching
    if handler is None or logging.getLogger().handlers != [handler]:
        extra = dict(fields)
        if trace_ids is not None:
            extra["trace_id"], extra["span_id"] = trace_ids
        logger.log(level, message, extra=extra)
        return
    now = time.time()
    if handler.json:
        entry: dict[str, Any] = {
            "ts": handler.stamp(now),
            "level": logging.getLevelName(level).lower(),
            "logger": logger.name,
            "msg": message,
            **fields,
        }
        if trace_ids is not None:
            entry["trace_id"], entry["span_id"] = trace_ids
        handler.add(orjson.dumps(entry, default=str).decode() + "\n")
    else:
        text = f"{handler.stamp(now)} {logging.getLevelName(level):<7} {logger.name}: {message}"
        handler.add(f"{text}  trace={trace_ids[0]}\n" if trace_ids is not None else text + "\n")


def configure(level: str = "info", fmt: str = "json", *, stream: TextIO | None = None) -> None:
    global _batching
    if _batching is not None:
        _batching.write_pending()
    handler = BatchingHandler(stream or sys.stderr, fmt)
    _batching = handler
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
