"""Where one call's answer goes, whatever path produced it.

A path answers in one of two shapes: the whole JSON-RPC response at once (``send_json``),
or a stream of SSE events (``open_stream``, ``send_events`` with complete events only,
``close_stream``) when the agent streams progress or logs before its result. The
receiver is a client's HTTP response (``HttpAnswer``), a capture for the dispatcher's own
calls (``CapturedAnswer``), or a task (``tasks.sink.TaskSink``); the route travels as a
``Route`` object, never as a header to be parsed back.

Until something is sent an error can still replace the answer (``fail`` raises it to the
caller, who answers it as it should); after that it goes inside the open stream.
"""

from __future__ import annotations

from typing import Any, Protocol

import orjson

from edgefleet.dispatcher.paths.route import Route
from edgefleet.shared import jsonrpc, sse
from edgefleet.shared.asgi import Send
from edgefleet.shared.errors import EdgefleetError, OutcomeUnknown

JSON_HEADERS = [(b"content-type", b"application/json")]


class Answer(Protocol):
    """The receiving end of one call's answer."""

    @property
    def started(self) -> bool:
        """Something was sent: an error can no longer replace the answer."""

    @property
    def ended(self) -> bool:
        """The answer is complete."""

    async def open_stream(self, route: Route | None) -> None:
        """Begin an SSE answer (a no-op when already open)."""

    async def send_events(self, events: bytes) -> None:
        """Complete SSE events (never half of one: a retry must start on a clean line)."""

    async def close_stream(self) -> None:
        """End the SSE answer."""

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        """The whole answer as one JSON body."""


class ForwardingAnswer:
    """An answer passed on to ``inner`` unchanged: the base of the wrappers that change
    some of it (record it, reshape it for an era, catch a round), which override only that."""

    __slots__ = ("inner",)

    def __init__(self, inner: Answer) -> None:
        self.inner = inner

    @property
    def started(self) -> bool:
        return self.inner.started

    @property
    def ended(self) -> bool:
        return self.inner.ended

    async def open_stream(self, route: Route | None) -> None:
        await self.inner.open_stream(route)

    async def send_events(self, events: bytes) -> None:
        await self.inner.send_events(events)

    async def close_stream(self) -> None:
        await self.inner.close_stream()

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        await self.inner.send_json(status, body, route)


async def send_result(answer: Answer, request_id: Any, result: dict[str, Any], route: Route | None) -> None:
    """A successful result, as one JSON body (or the stream's last event when one is open)."""
    await send_message(answer, jsonrpc.result_body(request_id, result), route)


async def send_message(answer: Answer, message: bytes, route: Route | None) -> None:
    """A serialized JSON-RPC response: the whole answer, or the last event of an open stream."""
    if answer.started:
        await answer.send_events(sse.frame(message))
        await answer.close_stream()
    else:
        await answer.send_json(200, message, route)


async def fail(answer: Answer, request_id: Any, error: EdgefleetError) -> None:
    """End the call with ``error``: raised to the caller while nothing was sent (it decides
    the HTTP status), else the open stream's last event, under the client's request id."""
    if not answer.started:
        raise error
    if not answer.ended:
        await answer.send_events(sse.frame(jsonrpc.error_body(request_id, error)))
        await answer.close_stream()


async def json_into_stream(answer: Answer, request_id: Any, body: bytes) -> None:
    """A JSON answer that arrives while a stream is already open (a retry on another
    replica answered in JSON): re-framed as one event, on one line."""
    try:
        line = orjson.dumps(orjson.loads(body))
    except orjson.JSONDecodeError:
        line = jsonrpc.error_body(request_id, OutcomeUnknown(data={"cause": "the agent's answer is not JSON"}))
    await answer.send_events(sse.frame(line))
    await answer.close_stream()


class HttpAnswer:
    """The answer written to a client's HTTP response (raw ASGI)."""

    __slots__ = ("send", "started", "ended")

    def __init__(self, send: Send) -> None:
        self.send = send
        self.started = False
        self.ended = False

    async def open_stream(self, route: Route | None) -> None:
        if not self.started:
            self.started = True
            await self.send({"type": "http.response.start", "status": 200, "headers": _with_route(sse.HEADERS, route)})

    async def send_events(self, events: bytes) -> None:
        await self.send({"type": "http.response.body", "body": events, "more_body": True})

    async def close_stream(self) -> None:
        if not self.ended:
            self.ended = True
            await self.send({"type": "http.response.body", "body": b""})

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        self.started = self.ended = True
        await self.send({"type": "http.response.start", "status": status, "headers": _with_route(JSON_HEADERS, route)})
        await self.send({"type": "http.response.body", "body": body})

    async def end_without_answer(self) -> None:
        """End the response with no JSON-RPC answer in it (2025: after notifications/cancelled
        "no response follows"): an empty event stream, or the open one closed."""
        if not self.started:
            self.started = True
            await self.send(
                {"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"text/event-stream")]}
            )
        await self.close_stream()


def _with_route(headers: list[tuple[bytes, bytes]], route: Route | None) -> list[tuple[bytes, bytes]]:
    return [*headers, route.header()] if route is not None else headers


class CapturedAnswer:
    """An answer kept in memory (the dispatcher's own calls: fan-out sub-tasks, pipeline steps).

    With a ``budget`` (the bytes the sub-calls of one fan-out may hold together), what
    arrives is counted against it as it comes: an answer that would need more than is left
    is dropped whole and what follows is not kept (``overflowed``), so the memory held stays
    within the budget however many sub-calls answer at once. ``release`` gives the bytes back.
    """

    class Budget:
        """Bytes shared by several captured answers (and what their callers keep of them)."""

        __slots__ = ("limit", "used")

        def __init__(self, limit: int) -> None:
            self.limit = limit
            self.used = 0

        def take(self, size: int) -> bool:
            """Count ``size`` more bytes if they fit (no await in here: atomic for asyncio)."""
            if self.used + size > self.limit:
                return False
            self.used += size
            return True

        def give(self, size: int) -> None:
            self.used -= size

    __slots__ = ("route", "parts", "held", "budget", "overflowed", "stream", "started", "ended")

    def __init__(self, budget: CapturedAnswer.Budget | None = None) -> None:
        self.route: Route | None = None
        self.parts: list[bytes] = []  # kept as they came: a JSON body is never copied
        self.held = 0  # bytes in parts, counted against the budget
        self.budget = budget
        self.overflowed = False
        self.stream = False
        self.started = False
        self.ended = False

    async def open_stream(self, route: Route | None) -> None:
        self.route = route
        self.started = self.stream = True

    async def send_events(self, events: bytes) -> None:
        self._keep(events)

    async def close_stream(self) -> None:
        self.ended = True

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        self.route = route
        self.started = self.ended = True
        self._keep(body)

    def _keep(self, data: bytes) -> None:
        if self.overflowed:
            return  # the answer is refused already: nothing more of it is held
        if self.budget is not None and not self.budget.take(len(data)):
            self.overflowed = True
            self.release()
            return
        self.parts.append(bytes(data))  # bytes(b) is b itself; anything else is copied once
        self.held += len(data)

    def release(self) -> None:
        """Drop what it holds and give those bytes back to the budget."""
        if self.budget is not None:
            self.budget.give(self.held)
        self.parts.clear()
        self.held = 0

    def response(self) -> dict[str, Any] | None:
        """The JSON-RPC response it holds (the stream's last one), or None (also when it overflowed)."""
        body = self.parts[0] if len(self.parts) == 1 else b"".join(self.parts)
        return jsonrpc.last_response(body, stream=self.stream)
