"""Server-sent events as MCP's streamable HTTP uses them: one JSON-RPC message per event.

The one place that frames an event and the one parser, used on every hop: the
dispatcher relaying an agent's stream (event by event, never half an event), task sinks
reading progress out of a stream, and the agent SDK's bus worker reading its own MCP
server's answer.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import orjson

HEADERS = [
    (b"content-type", b"text/event-stream"),
    (b"cache-control", b"no-cache, no-transform"),
    # Reverse proxies (nginx) buffer responses unless told not to: progress must flow.
    (b"x-accel-buffering", b"no"),
]


def frame(payload: bytes) -> bytes:
    """One event carrying one serialized JSON-RPC message."""
    return b"event: message\ndata: " + payload + b"\n\n"


def boundary(buffer: bytes | bytearray) -> int:
    """Index just past the last complete event in ``buffer`` (0: none yet); LF or CRLF."""
    lf = buffer.rfind(b"\n\n")
    crlf = buffer.rfind(b"\r\n\r\n")
    return max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)


def events(stream: bytes) -> Iterator[tuple[str, bytes]]:
    """(event name, data) of each event in ``stream``: the data lines joined, the name
    ``message`` unless an ``event:`` line says otherwise; events without data (comments,
    keep-alives) are skipped."""
    for event in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        name, data = "message", []
        for line in event.split(b"\n"):
            field, _, value = line.partition(b":")
            value = value[1:] if value.startswith(b" ") else value
            if field == b"data":
                data.append(value)
            elif field == b"event":
                name = value.decode("utf-8", "replace")
        if data:
            yield name, b"\n".join(data)


def payloads(stream: bytes) -> Iterator[bytes]:
    """The data of each event in ``stream``."""
    for _name, data in events(stream):
        yield data


def messages(events: bytes) -> Iterator[Any]:
    """The JSON value of each event in ``events`` (events whose data is not JSON are skipped)."""
    for data in payloads(events):
        try:
            yield orjson.loads(data)
        except orjson.JSONDecodeError:
            continue


def without_resumption(stream: bytes) -> bytes:
    """``stream`` without ``id:`` and ``retry:`` lines and without events that carry no data
    (priming events): an upstream's event ids mean nothing to a client of the dispatcher,
    which offers no resumption, and a client reconnecting with one would fail."""
    if b"id:" not in stream and b"retry:" not in stream:
        return stream
    kept = []
    for event in stream.replace(b"\r\n", b"\n").split(b"\n\n"):
        lines = [line for line in event.split(b"\n") if not line.startswith((b"id:", b"retry:"))]
        if any(line.startswith(b"data:") and line[5:].strip() for line in lines):
            kept.append(b"\n".join(lines) + b"\n\n")
    return b"".join(kept)


class Splitter:
    """Cuts a byte stream into complete events as chunks arrive (a chunk may end anywhere,
    even inside a CRLF)."""

    __slots__ = ("pending",)

    def __init__(self) -> None:
        self.pending = bytearray()

    def feed(self, chunk: bytes) -> bytes:
        """The complete events the stream holds now (b"" when none), oldest first."""
        self.pending += chunk
        cut = boundary(self.pending)
        if not cut:
            return b""
        complete = bytes(self.pending[:cut])
        del self.pending[:cut]
        return complete

    def rest(self) -> bytes:
        """What is left after the stream ended: a last event without its blank line, made
        complete, or b""."""
        rest, self.pending = bytes(self.pending), bytearray()
        return rest + b"\n\n" if rest.strip() else b""
