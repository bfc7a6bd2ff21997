"""TaskSink: the answer of a call run as a task, and taking over a live response."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import orjson

from edgefleet.dispatcher.tasks.sink import TaskSink

SSE = [(b"content-type", b"text/event-stream"), (b"edgefleet-route", b"region=eu-west; replica=r1; path=direct")]


def event(message: dict[str, Any]) -> bytes:
    return b"event: message\ndata: " + orjson.dumps(message) + b"\n\n"


PROGRESS = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progressToken": "t", "progress": 3, "total": 10, "message": "3/10"}}
ANSWER = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "done"}], "isError": False}}


def recording_client() -> tuple[list[dict[str, Any]], Callable[[dict[str, Any]], Awaitable[None]]]:
    """A client's ASGI send that keeps what it is sent."""
    delivered: list[dict[str, Any]] = []

    async def client(message: dict[str, Any]) -> None:
        delivered.append(message)

    return delivered, client


async def test_sse_progress_and_answer_split_across_chunks() -> None:
    seen: list[dict[str, Any]] = []
    sink = TaskSink(on_progress=seen.append)
    await sink({"type": "http.response.start", "status": 200, "headers": SSE})
    stream = event(PROGRESS) + event(ANSWER)
    for i in range(0, len(stream), 7):  # events cut anywhere, CR-free
        await sink({"type": "http.response.body", "body": stream[i:i + 7], "more_body": True})
    await sink({"type": "http.response.body", "body": b""})
    assert seen == [PROGRESS["params"]]
    assert sink.outcome() == (ANSWER["result"], None)
    assert sink.route["region"] == "eu-west" and sink.route["replica"] == "r1"


async def test_json_answer_and_errors() -> None:
    sink = TaskSink()
    await sink({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await sink({"type": "http.response.body", "body": orjson.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -31004, "message": "x"}})})
    assert sink.outcome() == (None, {"code": -31004, "message": "x"})
    empty = TaskSink()
    result, error = empty.outcome()
    assert result is None and error is not None and error["data"]["code"] == "upstream_error"


async def test_take_over_a_live_sse_stream_between_events() -> None:
    delivered, client = recording_client()
    sink = TaskSink(forward=client)
    await sink({"type": "http.response.start", "status": 200, "headers": SSE})
    await sink({"type": "http.response.body", "body": event(PROGRESS), "more_body": True})
    forward = await sink.take_over()
    assert forward is client and len(delivered) == 2
    await sink({"type": "http.response.body", "body": event(ANSWER), "more_body": True})
    await sink({"type": "http.response.body", "body": b""})
    assert len(delivered) == 2  # the rest is kept, not sent
    assert sink.outcome() == (ANSWER["result"], None)
    assert sink.progress == PROGRESS["params"]


async def test_no_take_over_once_the_answer_is_on_its_way() -> None:
    async def client(message: dict[str, Any]) -> None:
        pass

    json_started = TaskSink(forward=client)
    await json_started({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    assert await json_started.take_over() is None  # its body may not be split
    finished = TaskSink(forward=client)
    await finished({"type": "http.response.start", "status": 200, "headers": SSE})
    await finished({"type": "http.response.body", "body": event(ANSWER)})
    assert await finished.take_over() is None
    assert finished.forward is client


async def test_a_take_over_given_back_relays_the_rest_of_the_answer() -> None:
    # The call could not become a task (its owner is at the open-task cap): the client's
    # stream goes on where it stopped, and ends with the answer.
    delivered, client = recording_client()
    sink = TaskSink(forward=client)
    await sink({"type": "http.response.start", "status": 200, "headers": SSE})
    await sink({"type": "http.response.body", "body": event(PROGRESS), "more_body": True})
    forward = await sink.take_over()
    assert forward is client
    await sink.give_back(forward)
    await sink({"type": "http.response.body", "body": event(ANSWER), "more_body": True})
    await sink({"type": "http.response.body", "body": b""})
    assert [m.get("body", b"") for m in delivered[1:]] == [event(PROGRESS), event(ANSWER), b""]
    assert delivered[-1].get("more_body", False) is False


async def test_what_arrives_while_the_task_is_being_created_reaches_the_client_on_give_back() -> None:
    # Between take_over and give_back the dispatcher waits on Redis; the agent may answer
    # meanwhile. That answer must still reach the client, in order.
    delivered, client = recording_client()
    sink = TaskSink(forward=client)
    await sink({"type": "http.response.start", "status": 200, "headers": SSE})
    forward = await sink.take_over()
    assert forward is client
    await sink({"type": "http.response.body", "body": event(PROGRESS), "more_body": True})
    await sink({"type": "http.response.body", "body": event(ANSWER), "more_body": True})
    assert len(delivered) == 1  # held, not sent, while taken over
    await sink.give_back(forward)
    await sink({"type": "http.response.body", "body": b""})
    assert [m.get("body", b"") for m in delivered[1:]] == [event(PROGRESS), event(ANSWER), b""]


async def test_an_adopted_call_holds_nothing_back() -> None:
    _, client = recording_client()
    sink = TaskSink(forward=client)
    await sink({"type": "http.response.start", "status": 200, "headers": SSE})
    assert await sink.take_over() is not None
    sink.detach()  # adopted: the task keeps the answer, the client is no longer waiting for it
    await sink({"type": "http.response.body", "body": event(ANSWER), "more_body": True})
    assert sink.held is None and sink.answer is not None
