"""edgefleet.fanout with real processes: sub-tasks in parallel across three regions, on
the direct path and over both real buses; strategies all / first / quorum."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

import pytest
from mcp import Client

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration

REGIONS = ("eu-west", "us-east", "ap-southeast")


@pytest.fixture(params=["direct", "redis", "kafka"])
def fan_fleet(request: pytest.FixtureRequest, redis_url: str, redis_prefix: str) -> Iterator[Fleet]:
    fleet = Fleet(redis_url, redis_prefix, region="eu-west")
    try:
        if request.param == "direct":
            fleet.start_dispatcher()
        else:
            bus_url = redis_url if request.param == "redis" else request.getfixturevalue("kafka_url")
            fleet.start_dispatcher(bus_url=bus_url, bus_tools="echo.*")
        for region in REGIONS:
            fleet.start_agent("edgefleet.agents.examples.echo", region)
        yield fleet
    finally:
        fleet.stop()


async def fanout(fleet: Fleet, arguments: dict[str, Any]) -> tuple[dict[str, Any], bool, float]:
    async with Client(fleet.mcp_url) as client:
        started = time.monotonic()
        result = await client.call_tool("edgefleet.fanout", arguments)
        elapsed = time.monotonic() - started
    assert result.structured_content is not None, result.content
    return result.structured_content, result.is_error, elapsed


async def test_three_one_second_subtasks_in_three_regions_run_in_parallel(fan_fleet: Fleet) -> None:
    calls = [{"tool": "echo.wait", "arguments": {"seconds": 1.0}, "region": r} for r in REGIONS]
    summary, is_error, elapsed = await fanout(fan_fleet, {"calls": calls})
    assert not is_error and summary["succeeded"] == 3
    assert [r["region"] for r in summary["results"]] == list(REGIONS)
    assert all(
        r["result"]["structuredContent"]["region"] == reg for r, reg in zip(summary["results"], REGIONS, strict=True)
    )
    assert all(r["duration_ms"] >= 900 for r in summary["results"])
    # Sequential would take >= 3 s; parallel takes about the slowest sub-task.
    assert elapsed < 2.5, f"fan-out of 3 x 1 s took {elapsed:.2f} s"


async def test_first_success_wins_and_the_rest_are_cancelled(fan_fleet: Fleet) -> None:
    calls = [
        {"tool": "echo.wait", "arguments": {"seconds": 20}},
        {"tool": "echo.echo", "arguments": {"text": "fast"}},
        {"tool": "echo.wait", "arguments": {"seconds": 20}},
    ]
    summary, is_error, elapsed = await fanout(fan_fleet, {"calls": calls, "strategy": "first"})
    assert not is_error and summary["succeeded"] == 1
    assert [r["status"] for r in summary["results"]] == ["cancelled", "ok", "cancelled"]
    assert elapsed < 10


async def test_quorum_and_partial_failures_are_reported_per_subtask(fan_fleet: Fleet) -> None:
    calls = [
        {"tool": "echo.echo", "arguments": {"text": "a"}},
        {"tool": "echo.nope", "arguments": {}},
        {"tool": "echo.echo", "arguments": {"text": 5}},  # fails validation: names the field
        {"tool": "echo.echo", "arguments": {"text": "b"}},
    ]
    summary, is_error, _ = await fanout(fan_fleet, {"calls": calls, "strategy": "quorum:2"})
    assert not is_error and summary["succeeded"] >= 2
    summary, is_error, _ = await fanout(fan_fleet, {"calls": calls, "strategy": "all"})
    assert is_error and summary["succeeded"] == 2 and summary["failed"] == 2
    statuses = {r["index"]: r for r in summary["results"]}
    assert statuses[1]["status"] == "error" and "Unknown tool" in statuses[1]["error"]["message"]
    assert statuses[2]["status"] == "error" and "text" in statuses[2]["error"]["message"]
