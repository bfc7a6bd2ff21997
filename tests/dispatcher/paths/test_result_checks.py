"""Agent answers are checked before they reach the client, on the direct path and on the
bus (Redis): none larger than EDGEFLEET_MAX_RESULT_BYTES (result_too_large), and results
of tools with an outputSchema must carry conforming structuredContent (invalid_tool_result).
The agent is tests/support/misbehaving_agent.py, which breaks both rules on request."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest
from mcp import Client, MCPError
from prometheus_client.parser import text_string_to_metric_families

from tests.support.fleet import Fleet
from tests.support.tasks import create_task, legacy_get, legacy_result

pytestmark = pytest.mark.integration

LIMIT = 64 * 1024
AGENT = "tests.support.misbehaving_agent"
MODERN = {
    "mcp-protocol-version": "2026-07-28",
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
}
# logLevel: a 2026 client gets the agent's log notifications only when its request asks for them.
META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {},
    "io.modelcontextprotocol/logLevel": "info",
}
GOOD_WEATHER = {"celsius": 21.5, "conditions": "sunny"}
STOPPED = "MISBEHAVING_STREAM_STOPPED"


@pytest.fixture(scope="module")
def checked_fleet(redis_url: str) -> Iterator[Fleet]:
    """One dispatcher with a 64 KiB result limit and a Redis bus, one misbehaving agent."""
    fleet = Fleet(redis_url, f"eftest-{uuid.uuid4().hex[:10]}")
    try:
        fleet.start_dispatcher(bus_url=redis_url, max_result_bytes=LIMIT)
        fleet.start_agent(AGENT, "eu-west", bus_visibility_s=2)
        yield fleet
    finally:
        fleet.stop()


def call(url: str, tool: str, arguments: dict[str, Any]) -> tuple[httpx.Response, dict[str, Any]]:
    """A raw 2026-era tools/call; the one JSON-RPC response, from a JSON body or an SSE stream."""
    headers = {**MODERN, "mcp-method": "tools/call", "mcp-name": tool}
    body = {
        "jsonrpc": "2.0",
        "id": 7,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    resp = httpx.post(url, json=body, headers=headers, timeout=60)
    assert resp.status_code == 200, resp.text[:500]
    if not resp.headers["content-type"].startswith("text/event-stream"):
        return resp, resp.json()
    messages = [orjson.loads(line[5:]) for line in resp.content.splitlines() if line.startswith(b"data:")]
    answers = [m for m in messages if "id" in m and "method" not in m]
    assert len(answers) == 1, f"exactly one response per call, got {answers}"
    return resp, answers[0]


def assert_serves_good_calls(fleet: Fleet, url: str | None = None) -> None:
    """The dispatcher and the agent still answer (no ejected replica, no stuck pool)."""
    for tool in ("misbehaving.weather", "misbehaving.weather_bus"):
        _, answer = call(url or fleet.mcp_url, tool, {"mode": "good"})
        assert answer["result"]["structuredContent"] == GOOD_WEATHER, answer
    _, answer = call(url or fleet.mcp_url, "misbehaving.blob", {"size": LIMIT // 2})
    assert len(answer["result"]["content"][0]["text"]) == LIMIT // 2
    (agent,) = [a for a in fleet.agents_view() if a["name"] == "misbehaving"]
    assert all(r["routable"] and r["breaker"]["state"] == "closed" for r in agent["replicas"]), agent


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_a_conforming_structured_result_reaches_the_official_client(checked_fleet: Fleet, mode: str) -> None:
    async with Client(checked_fleet.mcp_url, mode=mode) as client:
        for tool in ("misbehaving.weather", "misbehaving.weather_bus"):
            for stream in (False, True):
                result = await client.call_tool(tool, {"mode": "good", "stream": stream})
                assert not result.is_error and result.structured_content == GOOD_WEATHER, (tool, stream, result)


@pytest.mark.parametrize("tool", ["misbehaving.weather", "misbehaving.weather_bus"])
@pytest.mark.parametrize("stream", [False, True], ids=["json", "sse"])
def test_a_result_breaking_the_output_schema_is_invalid_tool_result_naming_the_field(
    checked_fleet: Fleet, tool: str, stream: bool
) -> None:
    resp, answer = call(checked_fleet.mcp_url, tool, {"mode": "wrong_type", "stream": stream})
    error = answer["error"]
    assert error["code"] == -31007 and error["data"]["code"] == "invalid_tool_result", answer
    assert "'structuredContent/celsius'" in error["message"] and "'hot' is not of type 'number'" in error["message"]
    assert error["data"]["tool"] == tool and "result" not in answer
    if stream and tool.endswith("_bus"):
        # The agent's log notification opened the stream: the error is the call's response inside it.
        assert resp.headers["content-type"].startswith("text/event-stream") and b"reading the sensors" in resp.content
    assert_serves_good_calls(checked_fleet)


@pytest.mark.parametrize("tool", ["misbehaving.weather", "misbehaving.weather_bus"])
async def test_missing_structured_content_is_refused_when_an_output_schema_is_declared(
    checked_fleet: Fleet, tool: str
) -> None:
    async with Client(checked_fleet.mcp_url) as client:
        with pytest.raises(MCPError) as refused:
            await client.call_tool(tool, {"mode": "missing"})
    assert refused.value.code == -31007 and "no structuredContent" in refused.value.message


@pytest.mark.parametrize("tool", ["misbehaving.weather", "misbehaving.weather_bus"])
async def test_tool_errors_are_not_checked_against_the_output_schema(checked_fleet: Fleet, tool: str) -> None:
    async with Client(checked_fleet.mcp_url) as client:
        result = await client.call_tool(tool, {"mode": "tool_error"})
    assert result.is_error and "weather station is unreachable" in str(result.content)


@pytest.mark.parametrize(
    ("tool", "arguments"),
    [
        ("misbehaving.blob", {"size": 2 * LIMIT}),  # JSON with a Content-Length
        ("misbehaving.blob", {"size": 2 * LIMIT, "chunked": True}),  # JSON without one: counted as read
        ("misbehaving.blob", {"size": 2 * LIMIT, "stream": True}),  # SSE: log notifications count too
        ("misbehaving.blob_bus", {"size": 2 * LIMIT}),  # one reply too large to relay
        ("misbehaving.blob_bus", {"size": 2 * LIMIT, "stream": True}),  # progress replies adding up
    ],
    ids=["json", "json-chunked", "sse", "bus", "bus-progress"],
)
def test_an_answer_over_the_limit_is_result_too_large_and_the_dispatcher_serves_on(
    checked_fleet: Fleet,
    tool: str,
    arguments: dict[str, Any],
) -> None:
    _, under = call(checked_fleet.mcp_url, tool, {**arguments, "size": LIMIT // 2})
    assert "result" in under, "the same answer under the limit is relayed"
    resp, answer = call(checked_fleet.mcp_url, tool, arguments)
    assert answer["error"]["code"] == -31006 and answer["error"]["data"]["code"] == "result_too_large", answer
    assert answer["error"]["data"]["limit_bytes"] == LIMIT
    assert len(resp.content) < LIMIT + 4096, "no more than the limit was relayed"
    assert_serves_good_calls(checked_fleet)


@pytest.mark.parametrize("tool", ["misbehaving.blob", "misbehaving.blob_bus"])
def test_a_stream_that_never_ends_is_cut_off_at_the_limit_and_the_agent_stops(checked_fleet: Fleet, tool: str) -> None:
    agent = checked_fleet.agents[0]
    stopped_before = agent.output().count(STOPPED)
    resp, answer = call(checked_fleet.mcp_url, tool, {"forever": True})
    assert answer["error"]["code"] == -31006, answer
    assert len(resp.content) < LIMIT + 4096
    # The agent's handler saw its caller go (the dispatcher closed the connection, or on
    # the bus the worker obeyed our cancel) long before its own 60 s cap.
    checked_fleet.wait_for(
        lambda: agent.output().count(STOPPED) > stopped_before, "the agent's stream to stop", timeout=20
    )
    assert f"{STOPPED} " in agent.output() and "caller_gone=True" in agent.output().split(STOPPED)[-1].splitlines()[0]
    assert_serves_good_calls(checked_fleet)


def test_refused_answers_are_counted_as_errors_with_their_code(checked_fleet: Fleet) -> None:
    def errors(code: str) -> dict[tuple[str, str], float]:
        text = httpx.get(checked_fleet.url + "/metrics", timeout=10).text
        return {
            (s.labels["tool"], s.labels["path"]): s.value
            for f in text_string_to_metric_families(text)
            for s in f.samples
            if s.name == "edgefleet_calls_total" and s.labels["outcome"] == "error" and s.labels["code"] == code
        }

    invalid_before, large_before = errors("invalid_tool_result"), errors("result_too_large")
    call(checked_fleet.mcp_url, "misbehaving.weather", {"mode": "wrong_type"})
    call(checked_fleet.mcp_url, "misbehaving.weather_bus", {"mode": "missing"})
    call(checked_fleet.mcp_url, "misbehaving.blob", {"size": 2 * LIMIT})
    invalid, large = errors("invalid_tool_result"), errors("result_too_large")
    assert invalid[("misbehaving.weather", "direct")] == invalid_before.get(("misbehaving.weather", "direct"), 0) + 1
    assert invalid[("misbehaving.weather_bus", "bus")] == invalid_before.get(("misbehaving.weather_bus", "bus"), 0) + 1
    assert large[("misbehaving.blob", "direct")] == large_before.get(("misbehaving.blob", "direct"), 0) + 1


def test_with_validation_off_a_bad_result_is_relayed_unchanged(checked_fleet: Fleet) -> None:
    other = checked_fleet.start_dispatcher(validate_results="false", max_result_bytes=LIMIT)
    checked_fleet.wait_for(
        lambda: any(
            a["name"] == "misbehaving" and all(r["routable"] for r in a["replicas"])
            for a in checked_fleet.agents_view(other)
        ),
        "the agent routable on the second dispatcher",
    )
    _, answer = call(other + "/mcp", "misbehaving.weather", {"mode": "wrong_type"})
    assert answer["result"]["structuredContent"] == {"celsius": "hot", "conditions": "sunny"}
    _, answer = call(other + "/mcp", "misbehaving.weather", {"mode": "missing"})
    assert "structuredContent" not in answer["result"] and not answer["result"].get("isError")
    # The size limit does not depend on validation.
    _, answer = call(other + "/mcp", "misbehaving.blob", {"size": 2 * LIMIT})
    assert answer["error"]["code"] == -31006


async def test_a_task_whose_answer_breaks_the_rules_fails_with_the_same_errors(checked_fleet: Fleet) -> None:
    # This agent consumes the bus, so its tasks run there and are answered on the fleet's
    # shared task-replies stream, whatever path its calls take: that answer gets the checks
    # a call's answer gets. (In-process tasks go through the executor's own checks.)
    tool = "misbehaving.weather"
    async with Client(checked_fleet.mcp_url, mode="legacy") as client:
        bad = await create_task(client, tool, {"mode": "wrong_type"})
        good = await create_task(client, tool, {"mode": "good"})
        result = await legacy_result(client, good.task_id)  # tasks/result waits for the end
        assert result.structured_content == GOOD_WEATHER
        with pytest.raises(MCPError) as refused:
            await legacy_result(client, bad.task_id)
        assert refused.value.error.code == -31007 and "structuredContent/celsius" in refused.value.error.message
        assert (await legacy_get(client, bad.task_id)).status == "failed"


def test_an_answer_nested_too_deep_to_write_again_is_refused_not_a_500(checked_fleet: Fleet) -> None:
    """A fan-out writes its sub-results again, inside a few levels of its own: a sub-result
    nested deeper than that allows (orjson writes 254 levels) broke the whole answer (HTTP
    500); it is now that sub-task's invalid_tool_result. A direct call is relayed as the
    agent's bytes, unparsed, whatever their depth."""
    deep = {"depth": 600}
    resp, answer = call(checked_fleet.mcp_url, "misbehaving.deep", deep)
    assert resp.content.count(b"[") == 601 and answer["result"]["content"][0]["text"] == "deep"
    fanned = {"calls": [{"tool": "misbehaving.deep", "arguments": deep}, {"tool": "misbehaving.deep"}]}
    _, answer = call(checked_fleet.mcp_url, "edgefleet.fanout", fanned)
    too_deep, shallow = answer["result"]["structuredContent"]["results"]
    assert too_deep["status"] == "error" and too_deep["error"]["data"]["code"] == "invalid_tool_result", too_deep
    assert "nest" in too_deep["error"]["message"] and shallow["status"] == "ok"
    assert "Traceback" not in checked_fleet.dispatchers[0][1].output()
