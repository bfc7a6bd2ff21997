"""Whatever one agent says, the fleet stays bounded (issue 16, item 6): an agent with
100,000 tools (16 MB of tools/list) used to take the dispatcher down - every replica
"left the fleet", calls took up to a minute, RSS grew fourfold and stayed there. Now its
registration is refused with a clear error, and what a dispatcher reads from Redis per
sync and heartbeat does not grow with the size of agents' tool lists. Real processes; the
agent is tests/support/misbehaving_agent.py."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest
import redis

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis

from tests.support.calls import tools_call
from tests.support.fleet import Fleet, Proc

pytestmark = pytest.mark.integration

AGENT = "tests.support.misbehaving_agent"


def _echo(fleet: Fleet) -> tuple[float, dict[str, Any]]:
    body, headers = tools_call("echo.echo", {"text": "x"})
    started = time.monotonic()
    answer = httpx.post(fleet.mcp_url, content=body, headers=headers, timeout=120).json()
    return time.monotonic() - started, answer


def _rss_mb(proc: Proc) -> float:
    with open(f"/proc/{proc.popen.pid}/status") as status:
        return next(int(line.split()[1]) / 1024 for line in status if line.startswith("VmRSS"))


def _refusal(agent: Proc, code: str, fleet: Fleet) -> str:
    fleet.wait_for(lambda: code in agent.output(), f"the agent's registration refused with {code}", proc=agent)
    (line,) = [line for line in agent.output().splitlines() if code in line][:1]
    return line


def test_an_agent_with_100000_tools_is_refused_and_the_fleet_keeps_serving(
    own_redis: EmbeddedRedis, redis_prefix: str
) -> None:
    fleet = Fleet(own_redis.url, redis_prefix, heartbeat_ttl_s=5.0)
    try:
        fleet.start_dispatcher()
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        dispatcher = fleet.dispatchers[0][1]
        before = _rss_mb(dispatcher)
        wide = fleet.start_agent(AGENT, "eu-west", wait=False, env={"MISBEHAVING_EXTRA_TOOLS": "100000"})
        # ~12 MB of tools/list: refused unread past EDGEFLEET_MAX_AGENT_ANSWER_BYTES (4 MiB),
        # before anything is counted or parsed.
        line = _refusal(wide, "agent_answer_too_large", fleet)
        assert "HTTP 422" in line and "tools/list" in line and "EDGEFLEET_MAX_AGENT_ANSWER_BYTES" in line, line
        # A list within the bytes but over the count is refused by count.
        many = fleet.start_agent(AGENT, "eu-west", wait=False, env={"MISBEHAVING_EXTRA_TOOLS": "1200"})
        line = _refusal(many, "too_many_tools", fleet)
        assert "HTTP 422" in line and "publishes 1205 tools; at most 1000" in line, line
        assert "EDGEFLEET_MAX_TOOLS_PER_AGENT" in line
        many.kill9()
        # While it keeps trying: calls are answered, the fleet is whole, the registry small.
        latencies = []
        for _ in range(25):
            took, answer = _echo(fleet)
            assert answer["result"]["content"][0]["text"] == "x", answer
            latencies.append(took)
            time.sleep(0.2)
        assert sorted(latencies)[len(latencies) // 2] < 0.5 and max(latencies) < 5, latencies
        assert [a["name"] for a in fleet.agents_view()] == ["echo"]
        assert httpx.get(fleet.url + "/readyz", timeout=5).status_code == 200
        assert redis.Redis.from_url(own_redis.url).info("memory")["used_memory"] < 8 * 2**20
        wide.kill9()
        time.sleep(1)
        assert _rss_mb(dispatcher) < before + 150, (before, _rss_mb(dispatcher))  # it read 16 MB at a time, no more
        assert "left the fleet" not in dispatcher.output() and "Traceback" not in dispatcher.output()
    finally:
        fleet.stop()


def test_a_tool_with_an_oversized_definition_is_refused(fleet: Fleet) -> None:
    fat = fleet.start_agent(AGENT, "eu-west", wait=False, env={"MISBEHAVING_SCHEMA_BYTES": "100000"})
    line = _refusal(fat, "tool_too_large", fleet)
    assert "Tool 'fat'" in line and "at most 65536" in line and "EDGEFLEET_MAX_SCHEMA_BYTES" in line, line
    assert not [a for a in fleet.agents_view() if a["name"] == "misbehaving"]


def test_the_limits_are_settings_and_an_agent_at_the_limit_joins(redis_url: str, redis_prefix: str) -> None:
    fleet = Fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher(max_tools_per_agent=60, max_schema_bytes=2048)
        over = fleet.start_agent(AGENT, "eu-west", wait=False, env={"MISBEHAVING_EXTRA_TOOLS": "60"})
        assert "publishes 65 tools; at most 60" in _refusal(over, "too_many_tools", fleet)
        over.kill9()
        fleet.start_agent(AGENT, "us-east", env={"MISBEHAVING_EXTRA_TOOLS": "55"})
        (agent,) = [a for a in fleet.agents_view() if a["name"] == "misbehaving"]
        assert len(agent["tools"]) == 60
    finally:
        fleet.stop()


def test_redis_traffic_does_not_grow_with_the_size_of_tool_lists(own_redis: EmbeddedRedis, redis_prefix: str) -> None:
    """A dispatcher re-read every replica record (tools included) every sync, and every
    heartbeat read and rewrote it: with 1,000 tools that was ~440 KB/s of Redis traffic
    for one agent; with 100,000 tools, 1 MB/s and the fleet down. Records are small now
    and a tool list is read once per dispatcher."""
    fleet = Fleet(own_redis.url, redis_prefix, heartbeat_ttl_s=5.0)
    client = redis.Redis.from_url(own_redis.url)

    def traffic() -> int:
        stats = client.info("stats")
        return int(stats["total_net_input_bytes"] + stats["total_net_output_bytes"])

    try:
        fleet.start_dispatcher(registry_sync_s=0.2)
        fleet.start_agent(AGENT, "eu-west", env={"MISBEHAVING_EXTRA_TOOLS": "995"})  # ~160 KB of tools
        start, started = traffic(), time.monotonic()
        time.sleep(5)
        per_second = (traffic() - start) / (time.monotonic() - started)
        # 25 syncs and 10 heartbeats in that time: the list alone would be ~5.6 MB/s.
        assert per_second < 60_000, f"{per_second / 1024:.0f} KiB/s"
        (agent,) = fleet.agents_view()
        assert len(agent["tools"]) == 1000
    finally:
        client.close()
        fleet.stop()
