"""TaskSink: the answer of a call run as a task, and taking over a live answer."""

from __future__ import annotations

from typing import Any

import orjson

from edgefleet.dispatcher.paths.route import Route
from edgefleet.dispatcher.tasks.sink import TaskSink
from edgefleet.shared import sse

ROUTE = Route("direct", region="eu-west", replica="r1")
PROGRESS = {
    "jsonrpc": "2.0",
    "method": "notifications/progress",
    "params": {"progressToken": "t", "progress": 3, "total": 10, "message": "3/10"},
}
ANSWER = {"jsonrpc": "2.0", "id": 1, "result": {"content": [{"type": "text", "text": "done"}], "isError": False}}


def event(message: dict[str, Any]) -> bytes:
    return sse.frame(orjson.dumps(message))


class RecordingAnswer:
    """A client's answer that keeps what it is sent, in order."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.started = False
        self.ended = False

    async def open_stream(self, route: Route | None) -> None:
        self.started = True
        self.calls.append(("open_stream", (route,)))

    async def send_events(self, events: bytes) -> None:
        self.calls.append(("send_events", (events,)))

    async def close_stream(self) -> None:
        self.ended = True
        self.calls.append(("close_stream", ()))

    async def send_json(self, status: int, body: bytes, route: Route | None) -> None:
        self.started = self.ended = True
        self.calls.append(("send_json", (status, body, route)))

    def events(self) -> list[bytes]:
        return [args[0] for name, args in self.calls if name == "send_events"]


async def test_sse_progress_and_answer_become_task_progress_and_result() -> None:
    seen: list[dict[str, Any]] = []
    sink = TaskSink(on_progress=seen.append)
    await sink.open_stream(ROUTE)
    await sink.send_events(event(PROGRESS))
    await sink.send_events(event(ANSWER))
    await sink.close_stream()
    assert seen == [PROGRESS["params"]]
    assert sink.outcome() == (ANSWER["result"], None)
    assert sink.route is not None and sink.route.fields() == {"region": "eu-west", "replica": "r1"}


async def test_json_answer_and_errors() -> None:
    sink = TaskSink()
    await sink.send_json(
        200, orjson.dumps({"jsonrpc": "2.0", "id": 1, "error": {"code": -31004, "message": "x"}}), ROUTE
    )
    assert sink.outcome() == (None, {"code": -31004, "message": "x"})
    empty = TaskSink()
    result, error = empty.outcome()
    assert result is None and error is not None and error["data"]["code"] == "upstream_error"


async def test_take_over_a_live_sse_stream_between_events() -> None:
    client = RecordingAnswer()
    sink = TaskSink(forward=client)
    await sink.open_stream(ROUTE)
    await sink.send_events(event(PROGRESS))
    forward = await sink.take_over()
    assert forward is client and len(client.calls) == 2
    await sink.send_events(event(ANSWER))
    await sink.close_stream()
    assert len(client.calls) == 2  # the rest is kept, not sent
    assert sink.outcome() == (ANSWER["result"], None)
    assert sink.progress == PROGRESS["params"]


async def test_no_take_over_once_the_answer_is_on_its_way() -> None:
    json_answered = TaskSink(forward=RecordingAnswer())
    await json_answered.send_json(200, orjson.dumps(ANSWER), ROUTE)
    assert await json_answered.take_over() is None  # its body may not be split
    client = RecordingAnswer()
    finished = TaskSink(forward=client)
    await finished.open_stream(ROUTE)
    await finished.send_events(event(ANSWER))
    await finished.close_stream()
    assert await finished.take_over() is None
    assert finished.forward is client


async def test_the_answer_is_read_even_while_relayed_to_the_client() -> None:
    # Taken over after the answer's event went out but before the stream closed: the task
    # must still know the answer.
    sink = TaskSink(forward=RecordingAnswer())
    await sink.open_stream(ROUTE)
    await sink.send_events(event(ANSWER))
    assert await sink.take_over() is not None
    assert sink.outcome() == (ANSWER["result"], None)


async def test_a_take_over_given_back_relays_the_rest_of_the_answer() -> None:
    # The call could not become a task (its owner is at the open-task cap): the client's
    # stream goes on where it stopped, and ends with the answer.
    client = RecordingAnswer()
    sink = TaskSink(forward=client)
    await sink.open_stream(ROUTE)
    await sink.send_events(event(PROGRESS))
    forward = await sink.take_over()
    assert forward is client
    await sink.give_back(forward)
    await sink.send_events(event(ANSWER))
    await sink.close_stream()
    assert client.events() == [event(PROGRESS), event(ANSWER)]
    assert client.calls[-1][0] == "close_stream"


async def test_what_arrives_while_the_task_is_being_created_reaches_the_client_on_give_back() -> None:
    # Between take_over and give_back the dispatcher waits on Redis; the agent may answer
    # meanwhile. That answer must still reach the client, in order.
    client = RecordingAnswer()
    sink = TaskSink(forward=client)
    await sink.open_stream(ROUTE)
    forward = await sink.take_over()
    assert forward is client
    await sink.send_events(event(PROGRESS))
    await sink.send_events(event(ANSWER))
    assert len(client.calls) == 1  # held, not sent, while taken over
    await sink.give_back(forward)
    await sink.close_stream()
    assert client.events() == [event(PROGRESS), event(ANSWER)]
    assert client.calls[-1][0] == "close_stream"


async def test_an_adopted_call_holds_nothing_back() -> None:
    sink = TaskSink(forward=RecordingAnswer())
    await sink.open_stream(ROUTE)
    assert await sink.take_over() is not None
    sink.detach()  # adopted: the task keeps the answer, the client is no longer waiting for it
    await sink.send_events(event(ANSWER))
    assert sink.held is None and sink.response is not None
