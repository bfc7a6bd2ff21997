"""Long-lived streams from agent replicas: ``subscriptions/listen`` responses (2026-07-28)
and the GET streams of 2025-era sessions, read message by message.

Two parts, kept apart so the HTTP client can change under them:

- ``StreamClient.open``: the ONE function that does HTTP here, on a ``dispatcher.http1``
  pool of its own, never the call pool: a listen holds its connection for hours, and must
  not take a slot a tool call needs. Connections obey the agent address rules as calls do.
- ``MessageReader``: bytes -> JSON-RPC messages, for an SSE body or for NDJSON (one JSON
  message per line, which the reference server sends as chunked ``application/json``),
  bounded per message: an event larger than ``max_event_bytes`` is skipped whole (up to
  its end of event or line) and counted, never buffered.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson

from edgefleet.dispatcher import http1
from edgefleet.shared import sse

log = logging.getLogger("edgefleet.streams")


class StreamFailed(Exception):
    """The stream could not be opened (``opened`` False: nothing reached the replica that
    it could have acted on) or broke while it was read."""

    def __init__(self, message: str, *, opened: bool) -> None:
        super().__init__(message)
        self.opened = opened


@dataclass(slots=True)
class Opened:
    """A stream whose response head has arrived."""

    status: int
    content_type: str
    _response: http1.Response

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; ``StreamFailed`` when the connection breaks."""
        try:
            while chunk := await self._response.next_chunk():
                yield chunk
        except http1.HTTP1Error as exc:
            raise StreamFailed(f"the stream broke: {type(exc).__name__}", opened=True) from None

    async def read(self, limit: int) -> bytes:
        """A short body (an error answer), at most ``limit`` bytes of it."""
        body = bytearray()
        async for chunk in self.chunks():
            body += chunk
            if len(body) > limit:
                break
        return bytes(body[:limit])

    def close(self) -> None:
        """Drop the connection: that is how the replica learns the stream was cancelled."""
        self._response.close()


class StreamClient:
    """The HTTP client of long-lived upstream streams (one per dispatcher): an http1 pool of
    its own, resolving names and checking every connection's address as the call pool does
    (``UpstreamPool.resolver`` and ``check_peer``: the agent address rules)."""

    def __init__(
        self,
        connect_timeout_s: float,
        *,
        resolver: http1.Resolver | None = None,
        check_peer: http1.PeerCheck | None = None,
        head_timeout_s: float = 30.0,
    ) -> None:
        self.connect_timeout_s = connect_timeout_s
        # A replica that has not even sent its response head by then is hung: the stream
        # moves on (servers send the head at once and the events as they come).
        self.head_timeout_s = head_timeout_s
        self.check_peer = check_peer
        # No per-origin limit that matters: stream counts are bounded where streams are opened.
        self._pool = http1.UpstreamPool(
            max_per_origin=1 << 20, connect_timeout_s=connect_timeout_s, idle_timeout_s=30.0, resolver=resolver
        )

    async def start(self) -> None:
        """Nothing to open ahead: a connection opens per stream."""

    async def aclose(self) -> None:
        await self._pool.aclose()

    @contextlib.asynccontextmanager
    async def open(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> AsyncIterator[Opened]:
        """One long-lived request to a replica: yields once the response head is in; the
        connection is dropped (never drained, never reused) when the block ends."""
        parts = urlsplit(url)
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        pairs = [(k.encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]
        try:
            response = await self._pool.request(
                url,
                method,
                target,
                pairs,
                body or b"",
                head_timeout_s=self.head_timeout_s,
                check_peer=self.check_peer,
            )
        except http1.RequestNotSent as exc:
            raise StreamFailed(f"cannot connect to {url}: {type(exc).__name__}", opened=False) from None
        except http1.HTTP1Error as exc:
            raise StreamFailed(f"{url} did not answer: {type(exc).__name__}", opened=True) from None
        try:
            content_type = response.headers.get(b"content-type", b"").decode("latin-1")
            yield Opened(response.status, content_type, response)
        finally:
            response.close()


class MessageReader:
    """Cuts a stream body into JSON messages: SSE events (``text/event-stream``) or lines
    (anything else: NDJSON). Messages that are not JSON objects are skipped."""

    __slots__ = ("buffer", "max_event_bytes", "oversized", "skipping", "source", "sse")

    def __init__(self, content_type: str, max_event_bytes: int, source: str) -> None:
        self.source = source  # who sends it, for the log
        self.sse = content_type.startswith("text/event-stream")
        self.max_event_bytes = max_event_bytes
        self.buffer = bytearray()
        self.skipping = False  # inside an event too large to keep: dropping up to its end
        self.oversized = 0

    def feed(self, chunk: bytes) -> list[dict[str, Any]]:
        self.buffer += chunk
        out: list[dict[str, Any]] = []
        while True:
            end, width = self._boundary()
            if end < 0:
                if len(self.buffer) > self.max_event_bytes:
                    # No end in sight and already too large: drop what we hold, keep dropping.
                    if not self.skipping:
                        self._oversized()
                        self.skipping = True
                    self.buffer.clear()
                return out
            item = bytes(self.buffer[:end])
            del self.buffer[: end + width]
            if self.skipping:
                self.skipping = False  # that was the tail of the oversized one
                continue
            if len(item) > self.max_event_bytes:
                self._oversized()
                continue
            out.extend(self._parse(item))

    def rest(self) -> list[dict[str, Any]]:
        """A last message without its terminator, when the stream ended."""
        if self.skipping or not self.buffer.strip() or len(self.buffer) > self.max_event_bytes:
            return []
        item, self.buffer = bytes(self.buffer), bytearray()
        return self._parse(item)

    def _oversized(self) -> None:
        self.oversized += 1
        log.warning(
            "a notification from %s was dropped: larger than %d bytes (EDGEFLEET_MAX_EVENT_BYTES)",
            self.source,
            self.max_event_bytes,
        )

    def _boundary(self) -> tuple[int, int]:
        if not self.sse:
            return self.buffer.find(b"\n"), 1
        lf, crlf = self.buffer.find(b"\n\n"), self.buffer.find(b"\r\n\r\n")
        if crlf >= 0 and (lf < 0 or crlf < lf):
            return crlf, 4
        return lf, 2

    def _parse(self, item: bytes) -> list[dict[str, Any]]:
        payloads = [data for name, data in sse.events(item + b"\n\n") if name == "message"] if self.sse else [item]
        out = []
        for payload in payloads:
            payload = payload.strip()
            if not payload:
                continue
            try:
                message = orjson.loads(payload)
            except orjson.JSONDecodeError:
                log.debug("a stream message that is not JSON was skipped")
                continue
            if isinstance(message, dict):
                out.append(message)
        return out
