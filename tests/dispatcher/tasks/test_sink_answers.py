"""A task's result is the agent's only when its answer is a JSON-RPC response with an
object result; an error object reaches tasks/result only in its JSON-RPC shape, bounded;
anything else fails the task with our upstream_error."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from edgefleet.dispatcher.paths.route import Route
from edgefleet.dispatcher.tasks.sink import MAX_ERROR_DATA, MAX_ERROR_MESSAGE, TaskSink, read_response
from edgefleet.shared import sse
from edgefleet.shared.errors import UpstreamError

ROUTE = Route("direct", region="eu-west", replica="r1")
OK = {"content": [{"type": "text", "text": "done"}]}
MALFORMED = {
    "a notification": {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}},
    "no id": {"jsonrpc": "2.0", "result": OK},
    "a null result": {"jsonrpc": "2.0", "id": 1, "result": None},
    "a string result": {"jsonrpc": "2.0", "id": 1, "result": "just a string"},
    "a string error": {"jsonrpc": "2.0", "id": 1, "error": "boom"},
    "an error with a string code": {"jsonrpc": "2.0", "id": 1, "error": {"code": "EVIL", "message": {"x": 1}}},
    "an error without a message": {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000}},
    "an error with a float code": {"jsonrpc": "2.0", "id": 1, "error": {"code": -32000.5, "message": "x"}},
}


async def outcome(message: Any, *, stream: bool) -> tuple[dict[str, Any] | None, dict[str, Any] | None]:
    sink = TaskSink()
    if stream:
        await sink.open_stream(ROUTE)
        await sink.send_events(sse.frame(orjson.dumps(message)))
        await sink.close_stream()
    else:
        await sink.send_json(200, orjson.dumps(message), ROUTE)
    return sink.outcome()


def is_upstream_error(error: dict[str, Any] | None) -> bool:
    return (
        error is not None
        and error["code"] == UpstreamError.jsonrpc_code
        and error["data"] == {"code": "upstream_error"}
        and error["message"].startswith("The agent answered with")
    )


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("case", sorted(MALFORMED))
async def test_a_malformed_answer_fails_the_task_with_our_error(case: str, stream: bool) -> None:
    result, error = await outcome(MALFORMED[case], stream=stream)
    if stream and case in ("a notification", "no id"):
        # Not a response at all: the stream ended without one.
        assert result is None and error is not None and error["data"]["code"] == "upstream_error"
        return
    assert result is None and is_upstream_error(error), error


async def test_an_agents_error_reaches_the_task_bounded() -> None:
    huge = {"code": -32000, "message": "m" * 100_000, "data": ["d" * 100_000], "extra": 1}
    result, error = await outcome({"jsonrpc": "2.0", "id": 1, "error": huge}, stream=False)
    assert result is None and error == {"code": -32000, "message": "m" * MAX_ERROR_MESSAGE}
    fits = {"code": -32602, "message": "bad", "data": {"field": "x" * (MAX_ERROR_DATA - 100)}}
    result, error = await outcome({"jsonrpc": "2.0", "id": 1, "error": fits}, stream=True)
    assert error == fits


def test_another_request_id_is_no_answer_to_the_call() -> None:
    answer = {"jsonrpc": "2.0", "id": 1, "result": OK}
    assert read_response(answer, 1) == (OK, None)
    for other in ("1", 1.0, True, 2):
        result, error = read_response({**answer, "id": other}, 1)
        assert result is None and is_upstream_error(error), other
    assert read_response({**answer, "id": "anything"}) == (OK, None)  # no id asked: any response
