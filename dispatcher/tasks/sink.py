"""The answer of a call that runs as a task: instead of a socket, it goes to the task.
Progress notifications in the agent's SSE stream become task progress; the final
JSON-RPC response becomes the task's result or error.

It can also be put in front of a client's live answer and take over half-way (a 2025-era
client dropped its connection, or a 2026-era call ran long and became a task): paths
deliver whole SSE events, so taking over never splits an event.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import orjson

from edgefleet.dispatcher.paths.answer import Answer
from edgefleet.dispatcher.paths.route import Route
from edgefleet.shared import jsonrpc, sse
from edgefleet.shared.errors import UpstreamError

ProgressHook = Callable[[dict[str, Any]], None]
_PROGRESS = b"notifications/progress"


class TaskSink:
    __slots__ = (
        "on_progress",
        "forward",
        "stream",
        "body",
        "response",
        "started",
        "ended",
        "route",
        "progress",
        "lock",
        "held",
    )

    def __init__(self, on_progress: ProgressHook | None = None, forward: Answer | None = None) -> None:
        self.on_progress = on_progress
        self.forward = forward  # the client's answer while one is attached
        self.stream = False
        self.body = bytearray()  # a plain JSON answer (not SSE)
        self.response: dict[str, Any] | None = None  # the stream's JSON-RPC response, once seen
        self.started = False
        self.ended = False
        self.route: Route | None = None
        self.progress: dict[str, Any] | None = None  # the last progress report seen
        self.lock = asyncio.Lock()  # one message at a time reaches the client; take_over waits its turn
        # Taken over but not yet adopted as a task: what arrives meanwhile, for give_back.
        self.held: list[tuple[str, tuple[Any, ...]]] | None = None

    # -- the Answer side -------------------------------------------------------------------
    async def open_stream(self, route: Route | None) -> None:
        self.started = self.stream = True
        self.route = route
        await self._pass("open_stream", route)

    async def send_events(self, events: bytes) -> None:
        self._events(events)
        await self._pass("send_events", events)

    async def close_stream(self) -> None:
        self.ended = True
        await self._pass("close_stream")

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        self.started = self.ended = True
        self.route = route
        self.body += body  # parsed only if the answer is needed (outcome())
        await self._pass("send_json", status, body, route)

    async def _pass(self, name: str, *args: Any) -> None:
        async with self.lock:
            if self.forward is not None:
                await getattr(self.forward, name)(*args)
            elif self.held is not None:
                self.held.append((name, args))

    # -- attaching and detaching the client -------------------------------------------------
    def detach(self) -> None:
        """The client is gone (or the call is a task now): from now on the answer is kept, not sent."""
        self.forward = None
        self.held = None

    async def take_over(self) -> Answer | None:
        """Stop forwarding, between two messages; returns the client's answer (None: already
        detached, or the answer is already being delivered). The client's stream ends at an
        event boundary, so the caller may append its own final event to it."""
        async with self.lock:
            if self.ended or (self.started and not self.stream):
                return None
            forward, self.forward = self.forward, None
            if forward is not None:
                self.held = []
            return forward

    async def give_back(self, forward: Answer) -> None:
        """Taking over failed: the client gets the answer after all, including what the
        agent sent while the task was being created."""
        async with self.lock:
            for name, args in self.held or ():
                await getattr(forward, name)(*args)
            self.held = None
            self.forward = forward

    # -- reading the answer ----------------------------------------------------------------
    def _events(self, events: bytes) -> None:
        if self.forward is not None and self.on_progress is None and _PROGRESS not in events and b'"id"' not in events:
            return  # an ordinary call relayed as it comes: no progress, no answer to read in it
        for message in sse.messages(events):
            if jsonrpc.is_response(message):
                self.response = message
            elif isinstance(message, dict) and message.get("method") == "notifications/progress":
                params = message.get("params")
                if isinstance(params, dict):
                    self.progress = params
                    if self.on_progress is not None:
                        self.on_progress(params)

    def outcome(self) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
        """(result, error) of the finished call: one of the two, or (None, error) when the
        stream ended without an answer."""
        response = self.response
        if response is None and not self.stream and self.body:
            response = jsonrpc.last_response(bytes(self.body), stream=False)
        if response is None:
            return None, UpstreamError("The agent's answer ended without a JSON-RPC response.").to_jsonrpc()
        if isinstance(response.get("error"), dict):
            return None, response["error"]
        result = response.get("result")
        if isinstance(result, dict):
            return result, None
        return None, UpstreamError(
            f"The agent answered with a malformed result: {orjson.dumps(result)[:200]!r}"
        ).to_jsonrpc()
