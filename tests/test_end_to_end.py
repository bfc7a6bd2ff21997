"""The foundation's promises, checked with real processes and the official MCP client."""

from __future__ import annotations

import asyncio
import time

import pytest
from mcp import Client, MCPError

from tests.support.fleet import Fleet

MODES = ["auto", "legacy"]  # 2026-07-28 (after server/discover) and the 2025-11-25 session era


@pytest.fixture
def example_fleet(fleet: Fleet) -> Fleet:
    fleet.start_agent("edgefleet.agents.examples.text", "eu-west")
    fleet.start_agent("edgefleet.agents.examples.data", "us-east")
    fleet.start_agent("edgefleet.agents.examples.trainer", "ap-southeast")
    return fleet


@pytest.mark.parametrize("mode", MODES)
async def test_official_client_lists_and_calls_every_example_agent(example_fleet: Fleet, mode: str) -> None:
    progress: list[tuple[float, float | None, str | None]] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async with Client(example_fleet.mcp_url, mode=mode) as client:
        expected_version = "2026-07-28" if mode == "auto" else "2025-11-25"
        assert client.protocol_version == expected_version
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"text.keywords", "text.summarize", "text.detect_language", "data.describe", "trainer.train"} <= names
        assert all(name.count(".") >= 1 for name in names)

        keywords = await client.call_tool(
            "text.keywords", {"text": "edge edge edge routing routing dispatcher", "top": 2}
        )
        assert not keywords.is_error, keywords.content
        assert "edge" in str(keywords.structured_content)

        language = await client.call_tool(
            "text.detect_language", {"text": "Der schnelle braune Fuchs springt über den faulen Hund und die Katze."}
        )
        assert not language.is_error and "de" in str(language.structured_content)

        stats = await client.call_tool("data.describe", {"data": "a,b\n1,2\n3,4\n5,9\n"})
        assert not stats.is_error, stats.content

        trained = await client.call_tool("trainer.train", {"epochs": 5}, progress_callback=on_progress)
        assert not trained.is_error, trained.content
    assert len(progress) >= 5, progress
    assert progress[-1][0] == progress[-1][1] == 5


async def test_log_messages_reach_the_client(example_fleet: Fleet) -> None:
    logs: list[str] = []

    async def on_log(params: object) -> None:
        logs.append(str(getattr(params, "data", params)))

    async with Client(example_fleet.mcp_url, logging_callback=on_log, log_level="info") as client:
        result = await client.call_tool("trainer.train", {"epochs": 10})
    assert not result.is_error
    assert logs, "the trainer logs with ctx.info(); those notifications must be relayed"


async def test_killed_replica_leaves_routing_and_a_restart_brings_it_back(fleet: Fleet) -> None:
    eu = fleet.start_agent("edgefleet.agents.examples.text", "eu-west")
    fleet.start_agent("edgefleet.agents.examples.data", "eu-west")

    def text_replicas() -> int:
        return sum(len([r for r in a["replicas"] if r["routable"]]) for a in fleet.agents_view() if a["name"] == "text")

    assert text_replicas() == 1
    eu.kill9()
    took = fleet.wait_for(lambda: text_replicas() == 0, "killed replica out of routing", timeout=10)
    async with Client(fleet.mcp_url) as client:
        # Ejected but still leased: the tool stays listed and a call says why it cannot run.
        with pytest.raises(MCPError) as failed:
            await client.call_tool("text.stats", {"text": "anyone?"})
        assert failed.value.error.code == -31001  # agent_unavailable

    async def listed() -> set[str]:
        async with Client(fleet.mcp_url) as client:
            return {t.name for t in (await client.list_tools()).tools}

    # Once its lease runs out the replica leaves the fleet and its tools the catalog.
    deadline = time.monotonic() + fleet.heartbeat_ttl_s + 5
    while "text.keywords" in (names := await listed()) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    assert "text.keywords" not in names and "data.describe" in names
    # A new replica joins without restarting the dispatcher.
    fleet.start_agent("edgefleet.agents.examples.text", "eu-west")
    async with Client(fleet.mcp_url) as client:
        assert not (await client.call_tool("text.stats", {"text": "one two. three"})).is_error
    assert took < 10


async def test_calls_fail_over_to_another_replica_when_one_dies(fleet: Fleet) -> None:
    first = fleet.start_agent("edgefleet.agents.examples.text", "eu-west")
    fleet.start_agent("edgefleet.agents.examples.text", "us-east")
    first.kill9()
    started = time.monotonic()
    async with Client(fleet.mcp_url) as client:
        for _ in range(5):
            result = await client.call_tool("text.stats", {"text": "still served"})
            assert not result.is_error, result.content
    assert time.monotonic() - started < 10


async def test_two_dispatchers_share_one_registry(fleet: Fleet) -> None:
    second = fleet.start_dispatcher()
    fleet.start_agent("edgefleet.agents.examples.text", "eu-west")  # registers with the first dispatcher only
    fleet.wait_for(
        lambda: any(a["name"] == "text" and a["replicas"][0]["routable"] for a in fleet.agents_view(second)),
        "second dispatcher warm",
    )
    async with Client(second + "/mcp") as client:
        result = await client.call_tool("text.stats", {"text": "served by the other dispatcher"})
    assert not result.is_error


async def test_agent_registers_again_when_the_registry_forgets_it(fleet: Fleet) -> None:
    import redis

    fleet.start_agent("edgefleet.agents.examples.text", "eu-west")
    client = redis.Redis.from_url(fleet.redis_url)
    for key in client.scan_iter(f"{fleet.prefix}:*"):
        client.delete(key)
    client.close()
    fleet.wait_for(lambda: any(a["name"] == "text" for a in fleet.agents_view()), "re-registration", timeout=10)
