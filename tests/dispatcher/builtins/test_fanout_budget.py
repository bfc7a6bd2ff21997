"""edgefleet.fanout holds and answers no more than EDGEFLEET_MAX_RESULT_BYTES, however many
sub-tasks answer how much: the sub-results share the cap, counted as they arrive, and a
sub-task past it gets result_too_large with nothing of its answer kept. The paths are
replaced by agents' answers written straight into the capture (the budget is the invoker's
and the fan-out's business, not a path's)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from edgefleet.dispatcher.builtins import fanout
from edgefleet.dispatcher.builtins.invoker import Invoker, ResultBudget
from edgefleet.dispatcher.paths.answer import Answer
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.dispatcher.paths.route import Route
from edgefleet.dispatcher.routing.router import RouteOrder
from edgefleet.shared import jsonrpc, sse
from edgefleet.shared.errors import InvalidParams, ResultTooLarge

ROUTE = Route("direct", region="eu-west", replica="big-eu-west-1")
ORDER = RouteOrder(("eu-west",), "eu-west", "default", "127.0.0.1")
CALLER = SimpleNamespace(name="alice", regions=(), may_call=lambda name: True)


def entry(name: str) -> Any:
    return SimpleNamespace(path="direct", public_name=name, upstream_name=name, validation_error=lambda args: None)


def text_result(request_id: Any, size: int) -> bytes:
    return orjson.dumps(
        {"jsonrpc": "2.0", "id": request_id, "result": {"content": [{"type": "text", "text": "B" * size}]}}
    )


@dataclass
class Agents:
    """The paths: ``big.json`` answers ``bytes`` in one JSON body, ``big.sse`` in a stream of
    64 kB events (a progress notification each) before its result, ``big.stuck`` streams and
    never ends. ``peak`` is the most the fan-out's budget ever counted."""

    peak: int = 0
    stuck: asyncio.Event = field(default_factory=asyncio.Event)

    async def call(self, call: ToolCall, answer: Answer) -> None:
        size = call.arguments.get("bytes", 1000)
        if call.entry.public_name == "big.json":
            await answer.send_json(200, text_result(call.request_id, size), ROUTE)
        else:
            await answer.open_stream(ROUTE)
            for _ in range(size // 65536):
                note = {"jsonrpc": "2.0", "method": "notifications/progress", "params": {"pad": "p" * 65400}}
                await answer.send_events(sse.frame(orjson.dumps(note)))
                self._watch(answer)
                await asyncio.sleep(0)  # let the other sub-tasks' answers arrive meanwhile
            if call.entry.public_name == "big.stuck":
                self.stuck.set()
                await asyncio.Event().wait()
            await answer.send_events(sse.frame(text_result(call.request_id, 100)))
            await answer.close_stream()
        self._watch(answer)

    def _watch(self, answer: Any) -> None:
        if answer.budget is not None:
            self.peak = max(self.peak, answer.budget.used)


def invoker(agents: Agents, cap: int) -> Invoker:
    catalog = {name: entry(name) for name in ("big.json", "big.sse", "big.stuck")}
    fleet = SimpleNamespace(
        catalog=catalog, settings=SimpleNamespace(max_result_bytes=cap, region="eu-west"), regions={"eu-west"}
    )
    return Invoker(fleet, router=None, paths=agents)  # type: ignore[arg-type]


def parent(arguments: dict[str, Any]) -> ToolCall:
    params = {"name": fanout.NAME, "arguments": arguments}
    return ToolCall(entry(fanout.NAME), 1, params, ORDER, 30.0, identity=CALLER)  # type: ignore[arg-type]


async def run(agents: Agents, cap: int, calls: list[dict[str, Any]], strategy: str = "all") -> dict[str, Any]:
    return await fanout.run(invoker(agents, cap), parent({"calls": calls, "strategy": strategy}))


def answer_size(result: dict[str, Any]) -> int:
    """The fan-out's answer as the client gets it, under the longest id a client may use."""
    return len(jsonrpc.result_body("i" * jsonrpc.MAX_ID_LENGTH, {**result, "resultType": "complete"}))


async def test_json_answers_past_the_cap_are_refused_and_the_answer_stays_under_it() -> None:
    cap = 1024 * 1024
    agents = Agents()
    # 24 answers of 300 kB (each under the cap on its own): 7 MB together.
    result = await run(agents, cap, [{"tool": "big.json", "arguments": {"bytes": 300_000}}] * 24)
    summary = result["structuredContent"]
    statuses = [r["status"] for r in summary["results"]]
    assert statuses.count("ok") == 3 and statuses.count("error") == 21
    refused = [r for r in summary["results"] if r["status"] == "error"]
    assert all(r["error"]["code"] == ResultTooLarge.jsonrpc_code for r in refused)
    assert all(
        r["error"]["data"] == {"code": "result_too_large", "tool": "big.json", "limit_bytes": cap} for r in refused
    )
    assert all("result" not in r for r in refused)
    assert result["isError"] and not summary["satisfied"] and summary["failed"] == 21
    assert answer_size(result) <= cap
    assert agents.peak <= cap


async def test_streamed_answers_are_counted_as_they_arrive_and_dropped_once_past_the_cap() -> None:
    cap = 2 * 1024 * 1024
    agents = Agents()
    # 16 streams of 1 MB arriving side by side: whoever would pass the cap is dropped mid-stream.
    result = await run(agents, cap, [{"tool": "big.sse", "arguments": {"bytes": 1024 * 1024}}] * 16)
    statuses = [r["status"] for r in result["structuredContent"]["results"]]
    assert statuses.count("error") >= 14 and "ok" in statuses
    assert answer_size(result) <= cap
    assert agents.peak <= cap


async def test_refused_subtasks_do_not_count_toward_a_quorum() -> None:
    agents = Agents()
    calls = [{"tool": "big.json", "arguments": {"bytes": 400_000}}] * 4
    result = await run(agents, 1024 * 1024, calls, strategy="quorum:3")
    summary = result["structuredContent"]
    assert summary["succeeded"] == 2 and summary["failed"] == 2 and result["isError"]


async def test_a_cancelled_subcall_gives_its_bytes_back() -> None:
    agents = Agents()
    budget = ResultBudget(10 * 1024 * 1024, 10 * 1024 * 1024)
    sub = asyncio.create_task(
        invoker(agents, budget.cap).call(
            "big.stuck", {"bytes": 1024 * 1024}, parent=parent({}), order=ORDER, timeout_s=30, budget=budget
        )
    )
    await asyncio.wait_for(agents.stuck.wait(), 10)
    assert budget.used > 1000 * 1000  # the stream so far is held
    sub.cancel()
    with pytest.raises(asyncio.CancelledError):
        await sub
    assert budget.used == 0


async def test_a_fanout_whose_fields_alone_pass_the_cap_is_refused() -> None:
    with pytest.raises(InvalidParams, match="does not fit"):
        await run(Agents(), 16 * 1024, [{"tool": "big.json"}] * 40)
