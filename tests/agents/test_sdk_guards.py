"""The agent SDK's request guards: propagated deadlines and cacheable tools."""

import asyncio
from typing import Any

import pytest

from edgefleet.agents import Agent, ToolAnnotations
from edgefleet.agents.asgi import DEADLINE_GRACE_S, InflightCounter


def scope(headers: list[tuple[bytes, bytes]]) -> dict[str, Any]:
    return {"type": "http", "path": "/mcp", "method": "POST", "headers": headers}


async def test_work_outliving_its_deadline_is_stopped() -> None:
    stopped = asyncio.Event()

    async def slow_app(_scope: Any, _receive: Any, _send: Any) -> None:
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            stopped.set()
            raise

    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    guard = InflightCounter(slow_app)
    loop = asyncio.get_running_loop()
    started = loop.time()
    await guard(scope([(b"edgefleet-timeout-ms", b"50")]), None, send)
    assert stopped.is_set() and loop.time() - started < 0.05 + DEADLINE_GRACE_S + 2
    assert sent[0]["status"] == 504 and guard.inflight == 0


async def test_without_a_deadline_the_app_runs_untouched() -> None:
    calls = []

    async def app(_scope: Any, _receive: Any, send: Any) -> None:
        calls.append(1)

    await InflightCounter(app)(scope([(b"edgefleet-timeout-ms", b"junk")]), None, None)
    assert calls == [1]


async def test_cache_ttl_marks_the_tool_read_only_and_refuses_writers() -> None:
    agent = Agent("cachetest")

    @agent.tool(cache_ttl_s=30)
    async def lookup(key: str) -> str:
        return key

    (tool,) = await agent.mcp.list_tools()
    assert tool.annotations is not None and tool.annotations.read_only_hint is True
    assert tool.meta is not None and tool.meta["dev.edgefleet/cacheTtlS"] == 30
    with pytest.raises(ValueError):
        agent.tool(cache_ttl_s=30, annotations=ToolAnnotations(read_only_hint=False))
