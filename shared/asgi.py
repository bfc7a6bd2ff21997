"""Small raw-ASGI helpers for the MCP endpoint (no framework on the per-call path)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable, MutableMapping
from typing import Any

from edgefleet.shared.errors import PayloadTooLarge

# The ASGI types as Starlette spells them, so the raw endpoint and FastAPI take the same callables.
Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]


# Scope key our server (dispatcher.server) sets: the connection's ``Disconnects``. Other
# ASGI servers do not set it, and the application watches ``receive()`` instead.
SCOPE_DISCONNECTS = "edgefleet.disconnects"


class Disconnects:
    """Callbacks to run when a connection is lost: a call learns that its client went away
    without a task per call waiting on ``receive()`` for ``http.disconnect`` (issue 19)."""

    __slots__ = ("_callbacks", "lost")

    def __init__(self) -> None:
        self._callbacks: set[Callable[[], None]] = set()
        self.lost = False

    def add(self, callback: Callable[[], None]) -> None:
        if self.lost:
            callback()
        else:
            self._callbacks.add(callback)

    def discard(self, callback: Callable[[], None]) -> None:
        self._callbacks.discard(callback)

    def fire(self) -> None:
        self.lost = True
        callbacks, self._callbacks = self._callbacks, set()
        for callback in callbacks:
            callback()


class ClientDisconnected(Exception):
    """The client went away before its request body arrived."""


def header_map(scope: Scope) -> dict[str, str]:
    """Lower-cased header names -> values (the last one wins; duplicates are checked where it matters)."""
    return {name.decode("latin-1"): value.decode("latin-1") for name, value in scope["headers"]}


def body_too_large(limit: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"The request body is larger than {limit} bytes (EDGEFLEET_MAX_BODY_BYTES).")


async def read_body(receive: Receive, limit: int) -> bytes:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] == "http.disconnect":
            raise ClientDisconnected()
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            raise body_too_large(limit)
        chunks.append(chunk)
        if not message.get("more_body", False):
            return chunks[0] if len(chunks) == 1 else b"".join(chunks)


async def respond(
    send: Send,
    status: int,
    body: bytes = b"",
    headers: Iterable[tuple[bytes, bytes]] = (),
    content_type: bytes | None = b"application/json",
) -> None:
    raw_headers = [(b"content-type", content_type)] if content_type and body else []
    raw_headers.extend(headers)
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": body})


class TrackingSend:
    """Wraps ``send`` to know whether the response has started (for clean cancellation)."""

    __slots__ = ("send", "started", "finished")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self.finished = False

    async def __call__(self, message: Message) -> None:
        if message["type"] == "http.response.start":
            self.started = True
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            self.finished = True
        await self.send(message)
