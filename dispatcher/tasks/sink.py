"""An ASGI ``send`` for a call that runs as a task: instead of a socket, the answer goes to
the task. Progress notifications in the agent's SSE stream become task progress; the final
JSON-RPC response becomes the task's result or error.

It can also be put in front of a client's live response and take over half-way (a 2025-era
client dropped its connection, or a 2026-era call ran long and became a task): it keeps
only the unfinished tail of the stream, so taking over never splits an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from edgefleet.shared import jsonrpc

Send = Callable[[dict[str, Any]], Awaitable[None]]
ProgressHook = Callable[[dict[str, Any]], None]
_ROUTE = b"edgefleet-route"


class TaskSink:
    __slots__ = ("on_progress", "sse", "body", "tail", "answer", "started", "finished", "route", "progress", "forward", "lock", "held")

    def __init__(self, on_progress: ProgressHook | None = None, forward: Send | None = None) -> None:
        self.on_progress = on_progress
        self.forward = forward  # the client's send while one is attached
        self.sse = False
        self.body = bytearray()  # a plain JSON answer (not SSE)
        self.tail = b""  # SSE: bytes after the last complete event
        self.answer: dict[str, Any] | None = None
        self.started = False
        self.finished = False
        self.route: dict[str, str] = {}
        self.progress: dict[str, Any] | None = None  # the last progress report seen
        self.lock = asyncio.Lock()  # one message at a time reaches the client; take_over waits its turn
        # Taken over but not yet adopted as a task: what arrives meanwhile, for give_back.
        self.held: list[dict[str, Any]] | None = None

    async def __call__(self, message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            self.started = True
            headers = dict(message.get("headers", ()))
            self.sse = headers.get(b"content-type", b"").startswith(b"text/event-stream")
            raw = headers.get(_ROUTE, b"").decode()
            self.route = {k.strip(): v for k, _, v in (p.partition("=") for p in raw.split(";")) if k.strip()}
        else:
            chunk = message.get("body", b"")
            if self.sse:
                self._events(chunk)
            else:
                self.body += chunk  # parsed only if the answer is needed (outcome())
            if not message.get("more_body", False):
                self.finished = True
        async with self.lock:
            if self.forward is not None:
                await self.forward(message)
            elif self.held is not None:
                self.held.append(message)

    def detach(self) -> None:
        """The client is gone (or the call is a task now): from now on the answer is kept, not sent."""
        self.forward = None
        self.held = None

    async def take_over(self) -> Send | None:
        """Stop forwarding, between two messages; returns the client's send (None: already
        detached). The executor relays whole SSE events, so the client's stream ends at an
        event boundary and the caller may append its own final event to it."""
        async with self.lock:
            if self.finished or (self.started and not self.sse):
                return None  # the answer is (being) delivered: nothing to take over
            forward, self.forward = self.forward, None
            if forward is not None:
                self.held = []
            return forward

    async def give_back(self, forward: Send) -> None:
        """Taking over failed: the client gets the answer after all, including what the
        agent sent while the task was being created."""
        async with self.lock:
            for message in self.held or ():
                await forward(message)
            self.held = None
            self.forward = forward

    def _events(self, chunk: bytes) -> None:
        if self.forward is not None and self.on_progress is None and b"notifications/progress" not in chunk:
            # An ordinary call, relayed as it comes: only event boundaries matter (for a
            # take-over), not the JSON inside.
            if chunk.endswith((b"\n\n", b"\r\n\r\n")):
                self.tail = b""
            else:
                self.tail += chunk
            return
        data = self.tail + chunk
        lf, crlf = data.rfind(b"\n\n"), data.rfind(b"\r\n\r\n")
        cut = max(lf + 2 if lf >= 0 else 0, crlf + 4 if crlf >= 0 else 0)
        if cut == 0:
            self.tail = data
            return
        complete, self.tail = data[:cut], data[cut:]
        for event in jsonrpc.sse_messages(complete):
            if jsonrpc.is_response(event):
                self.answer = event
            elif isinstance(event, dict) and event.get("method") == "notifications/progress":
                params = event.get("params")
                if isinstance(params, dict):
                    self.progress = params
                    if self.on_progress is not None:
                        self.on_progress(params)

    def outcome(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(result, error) of the finished call: one of the two, or (None, error) when the
        stream ended without an answer."""
        answer = self.answer
        if answer is None and not self.sse and self.body:
            answer = jsonrpc.last_response(bytes(self.body), sse=False)
        if answer is None:
            return None, {"code": -31002, "message": "The agent's answer ended without a JSON-RPC response.",
                          "data": {"code": "upstream_error"}}
        if isinstance(answer.get("error"), dict):
            return None, answer["error"]
        result = answer.get("result")
        if isinstance(result, dict):
            return result, None
        return None, {"code": -31002, "message": f"The agent answered with a malformed result: {orjson.dumps(result)[:200]!r}",
                      "data": {"code": "upstream_error"}}
