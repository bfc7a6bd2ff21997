"""Long-lived streams from agent replicas: ``subscriptions/listen`` responses (2026-07-28)
and the GET streams of 2025-era sessions, read message by message.

Two parts, kept apart so the HTTP client can change under them:

- ``open_stream``: the ONE function that does HTTP here (aiohttp today, like the rest of
  the upstream code; moving to ``dispatcher.http1`` means rewriting this function only).
  Streams get their own client (``StreamClient``), never the call pool: a listen holds its
  connection for hours, and must not take a slot a tool call needs.
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

import aiohttp
import orjson

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
    _response: aiohttp.ClientResponse

    async def chunks(self) -> AsyncIterator[bytes]:
        """The body as it arrives; ``StreamFailed`` when the connection breaks."""
        try:
            async for chunk in self._response.content.iter_any():
                yield chunk
        except (TimeoutError, aiohttp.ClientError) as exc:
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
    """The HTTP client of long-lived upstream streams (one per dispatcher)."""

    def __init__(self, connect_timeout_s: float) -> None:
        self.connect_timeout_s = connect_timeout_s
        self._session: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        self._session = aiohttp.ClientSession(
            # No pool limit of its own: the stream counts are bounded where streams are opened.
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=0, keepalive_timeout=30),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    async def aclose(self) -> None:
        if self._session is not None:
            await self._session.close()
            self._session = None

    @contextlib.asynccontextmanager
    async def open(
        self, method: str, url: str, headers: dict[str, str], body: bytes | None = None
    ) -> AsyncIterator[Opened]:
        if self._session is None:
            raise StreamFailed("the stream client is not started", opened=False)
        async with open_stream(self._session, method, url, headers, body, self.connect_timeout_s) as opened:
            yield opened


@contextlib.asynccontextmanager
async def open_stream(
    session: aiohttp.ClientSession,
    method: str,
    url: str,
    headers: dict[str, str],
    body: bytes | None,
    connect_timeout_s: float,
) -> AsyncIterator[Opened]:
    """One long-lived request to a replica: yields once the response head is in; the
    connection is dropped (never drained) when the block ends."""
    timeout = aiohttp.ClientTimeout(total=None, sock_connect=connect_timeout_s, connect=connect_timeout_s * 2)
    try:
        response = await session.request(method, url, data=body, headers=headers, timeout=timeout)
    except (aiohttp.ClientConnectorError, aiohttp.ConnectionTimeoutError) as exc:
        raise StreamFailed(f"cannot connect to {url}: {type(exc).__name__}", opened=False) from None
    except (TimeoutError, aiohttp.ClientError) as exc:
        raise StreamFailed(f"{url} did not answer: {type(exc).__name__}", opened=True) from None
    try:
        yield Opened(response.status, response.headers.get("content-type", ""), response)
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
