"""What an agent answers a fan-out sub-call counts as a success only when it is a JSON-RPC
response to that call with an object result; anything else is that sub-task's
upstream_error, and error objects are passed on only in their JSON-RPC shape, bounded.
The paths are replaced by the agent's bytes written straight into the capture."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from edgefleet.dispatcher.builtins import fanout
from edgefleet.dispatcher.builtins.invoker import Invoker
from edgefleet.dispatcher.paths.answer import Answer
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.paths.route import Route
from edgefleet.dispatcher.routing.router import RouteOrder
from edgefleet.dispatcher.tasks.sink import MAX_ERROR_DATA, MAX_ERROR_MESSAGE
from edgefleet.shared import sse
from edgefleet.shared.errors import UpstreamError

ROUTE = Route("direct", region="eu-west", replica="evil-eu-west-1")
ORDER = RouteOrder(("eu-west",), "eu-west", "default", "127.0.0.1")
CALLER = SimpleNamespace(name="alice", regions=(), may_call=lambda name: True)
OK = {"content": [{"type": "text", "text": "fine"}]}

# What a hostile agent answers, by tool: the message in a JSON body (``json``) or as the
# last event of a stream (``sse``), where "ID" stands for the call's own id.
ANSWERS: dict[str, Any] = {
    "evil.no_id": {"jsonrpc": "2.0", "result": OK},
    "evil.notification": {"jsonrpc": "2.0", "method": "notifications/message", "params": {"data": "x"}},
    "evil.wrong_id": {"jsonrpc": "2.0", "id": "not-your-id", "result": OK},
    "evil.true_id": {"jsonrpc": "2.0", "id": True, "result": OK},
    "evil.null_result": {"jsonrpc": "2.0", "id": "ID", "result": None},
    "evil.string_result": {"jsonrpc": "2.0", "id": "ID", "result": "just a string"},
    "evil.error_string": {"jsonrpc": "2.0", "id": "ID", "error": "boom"},
    "evil.error_nonint_code": {"jsonrpc": "2.0", "id": "ID", "error": {"code": "EVIL", "message": {"x": 1}}},
    "evil.error_bool_code": {"jsonrpc": "2.0", "id": "ID", "error": {"code": True, "message": "x"}},
}


def entry(name: str) -> Any:
    return SimpleNamespace(path="direct", public_name=name, upstream_name=name, validation_error=lambda args: None)


class Agent:
    """The paths: answers each call with ANSWERS[tool] (or the ``message`` argument), in a
    JSON body or, with ``sse``, as an event after a progress notification."""

    async def call(self, call: ToolCall, answer: Answer) -> None:
        message = call.arguments.get("message", ANSWERS.get(call.entry.public_name))
        if isinstance(message, dict) and message.get("id") == "ID":
            message = {**message, "id": call.request_id}
        body = orjson.dumps(message)
        if not call.arguments.get("sse"):
            await answer.send_json(200, body, ROUTE)
            return
        await answer.open_stream(ROUTE)
        progress = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"progress": 1}}
        await answer.send_events(sse.frame(orjson.dumps(progress)) + sse.frame(body))
        await answer.close_stream()


def invoker() -> Invoker:
    catalog = {name: entry(name) for name in [*ANSWERS, "evil.answer"]}
    fleet = SimpleNamespace(
        catalog=catalog, settings=SimpleNamespace(max_result_bytes=16 * 1024 * 1024, region="eu-west"), regions=set()
    )
    return Invoker(fleet, router=None, paths=Agent())  # type: ignore[arg-type]


async def subresult(tool: str, arguments: dict[str, Any] | None = None, strategy: str = "first") -> dict[str, Any]:
    """The one sub-result of a fan-out calling ``tool``."""
    params = {"name": fanout.NAME, "arguments": {}}
    parent = ToolCall(entry(fanout.NAME), 7, params, ORDER, 30.0, identity=CALLER)  # type: ignore[arg-type]
    parent.params["arguments"] = {"calls": [{"tool": tool, "arguments": arguments or {}}], "strategy": strategy}
    result = await fanout.run(invoker(), parent)
    (item,) = result["structuredContent"]["results"]
    assert result["isError"] == (item["status"] != "ok")
    return dict(item)


@pytest.mark.parametrize("sse", [False, True])
@pytest.mark.parametrize("tool", sorted(ANSWERS))
async def test_a_malformed_answer_is_the_subtasks_upstream_error_not_a_success(tool: str, sse: bool) -> None:
    item = await subresult(tool, {"sse": True} if sse else {})
    assert item["status"] == "error" and "result" not in item
    assert item["error"]["code"] == UpstreamError.jsonrpc_code
    assert item["error"]["data"]["code"] == "upstream_error"
    # In a stream, what is not a response is no answer at all.
    said = (
        "No answer from the agent" if sse and tool in ("evil.no_id", "evil.notification") else "The agent answered with"
    )
    assert isinstance(item["error"]["message"], str) and item["error"]["message"].startswith(said)


@pytest.mark.parametrize("sse", [False, True])
async def test_a_response_to_the_call_with_an_object_result_is_a_success(sse: bool) -> None:
    message = {"jsonrpc": "2.0", "id": "ID", "result": OK}
    item = await subresult("evil.answer", {"message": message, "sse": sse})
    assert item["status"] == "ok" and item["result"] == OK


async def test_an_agents_error_object_is_passed_on_bounded() -> None:
    huge = {"code": -32000, "message": "m" * 100_000, "data": {"blob": "d" * 100_000}}
    item = await subresult("evil.answer", {"message": {"jsonrpc": "2.0", "id": "ID", "error": huge}})
    assert item["status"] == "error"
    assert item["error"] == {"code": -32000, "message": "m" * MAX_ERROR_MESSAGE}
    small = {"code": 7, "message": "no", "data": {"why": "x" * (MAX_ERROR_DATA // 2)}, "extra": "dropped"}
    item = await subresult("evil.answer", {"message": {"jsonrpc": "2.0", "id": "ID", "error": small}})
    assert item["error"] == {"code": 7, "message": "no", "data": small["data"]}
