"""The answer of a call that runs as a task: instead of a socket, it goes to the task.
Progress notifications in the agent's SSE stream become task progress; the final
JSON-RPC response becomes the task's result or error.

It can also be put in front of a client's live answer and take over half-way (a 2025-era
client dropped its connection, or a 2026-era call ran long and became a task): paths
deliver whole SSE events, so taking over never splits an event.

``read_response`` is the one reading of an agent's answer for whoever keeps it (tasks
here, the fan-out's and pipelines' sub-calls in ``builtins.invoker``): a success only for
a JSON-RPC response with an object ``result``; an error object passed on only in its
JSON-RPC shape, bounded; anything else is the agent's failure (upstream_error).
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
# An agent's error passed on: its message cut to this many characters, its data dropped
# when its JSON is larger (it lands in task records, fan-out results and logs).
MAX_ERROR_MESSAGE = 1024
MAX_ERROR_DATA = 4096


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
        return read_response(response)


def read_response(
    message: Any, request_id: Any = jsonrpc.ANY_ID
) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    """(result, error) of an agent's answer to one call, exactly one of them set: its
    ``result`` only when ``message`` is a JSON-RPC response (to ``request_id``, when given)
    whose result is an object; its error only as ``agent_error`` passes it; anything else
    (a notification, another id, a null or string result, an error that is no error object)
    is an upstream_error of ours, never a success."""
    problem = jsonrpc.response_problem(message, request_id)  # the one check, the direct path's too
    if problem is not None:
        return None, _malformed(problem, message)
    if "error" in message:
        error = agent_error(message["error"])
        return None, error if error is not None else _malformed("an error code out of range", message["error"])
    return message["result"], None


def agent_error(error: Any) -> dict[str, Any] | None:
    """An agent's JSON-RPC error object as it may be passed on: its integer ``code``, its
    ``message`` (cut to MAX_ERROR_MESSAGE characters) and its ``data`` when that is small;
    None when it is not ``{code: integer, message: string}``."""
    if not isinstance(error, dict):
        return None
    code, message = error.get("code"), error.get("message")
    if type(code) is not int or not -(2**53) < code < 2**53 or not isinstance(message, str):
        return None
    kept: dict[str, Any] = {"code": code, "message": message[:MAX_ERROR_MESSAGE]}
    if "data" in error and _json_size(error["data"]) <= MAX_ERROR_DATA:
        kept["data"] = error["data"]
    return kept


def _json_size(value: Any) -> int:
    try:
        return len(orjson.dumps(value))
    except orjson.JSONEncodeError:  # nested past what orjson writes: it could not be passed on
        return MAX_ERROR_DATA + 1


def _malformed(what: str, value: Any) -> dict[str, Any]:
    try:
        shown = orjson.dumps(value)[:200]
    except orjson.JSONEncodeError:
        shown = b"(nested too deep to show)"
    return UpstreamError(f"The agent answered with {what}: {shown!r}").to_jsonrpc()
