"""Pipelines declared in the config file, run by a real dispatcher against real agents:
step order, parallel groups, argument mapping, retries, and the saga on failure."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from mcp import Client

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration

CONFIG = """
pipelines:
  order:
    description: Reserve, charge, ship; undo on failure.
    input_schema: {type: object, properties: {item: {type: string}}, required: [item]}
    steps:
      - name: reserve
        tool: echo.echo
        arguments: {text: "reserved ${input.item}"}
        compensate: {tool: echo.echo, arguments: {text: "release ${steps.reserve.text}"}}
      - name: charge
        tool: echo.echo
        arguments: {text: "charged for ${input.item}"}
        compensate: {tool: echo.echo, arguments: {text: "refund"}}
      - name: ship
        tool: echo.fail
        arguments: {message: "no courier for ${input.item}"}
        retry: {attempts: 3, backoff_s: 0.05}
  report:
    steps:
      - name: first
        tool: echo.echo
        arguments: {text: "${input.text}"}
      - parallel:
          - name: here
            tool: echo.where
          - name: again
            tool: echo.echo
            arguments: {text: "twice: ${steps.first.text}"}
      - name: last
        tool: echo.echo
        arguments: {text: "${steps.again.text} from ${steps.here.structuredContent.region}"}
"""


@pytest.fixture
def pipe_fleet(redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    config = tmp_path / "edgefleet.yaml"
    config.write_text(CONFIG)
    fleet = Fleet(redis_url, redis_prefix, region="eu-west")
    try:
        fleet.start_dispatcher(config_file=config)
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        yield fleet
    finally:
        fleet.stop()


async def test_a_failing_third_step_compensates_steps_two_and_one_in_that_order(pipe_fleet: Fleet) -> None:
    async with Client(pipe_fleet.mcp_url) as client:
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert "edgefleet.order" in tools and "ship" in (tools["edgefleet.order"].description or "")
        result = await client.call_tool("edgefleet.order", {"item": "book"})
    assert result.is_error
    trace = result.structured_content
    assert trace is not None and trace["status"] == "failed"
    assert trace["failed_step"]["step"] == "ship" and "no courier for book" in trace["failed_step"]["error"]["message"]
    steps = {s["name"]: s for s in trace["steps"]}
    assert steps["reserve"]["status"] == steps["charge"]["status"] == "completed"
    assert steps["ship"]["status"] == "failed" and steps["ship"]["attempts"] == 3
    assert [(c["step"], c["status"]) for c in trace["compensations"]] == [
        ("charge", "completed"),
        ("reserve", "completed"),
    ]
    assert "ship" in result.content[0].text  # type: ignore[union-attr]


async def test_parallel_groups_and_argument_mapping(pipe_fleet: Fleet) -> None:
    async with Client(pipe_fleet.mcp_url) as client:
        result = await client.call_tool("edgefleet.report", {"text": "hi"})
    assert not result.is_error, result.content
    trace = result.structured_content
    assert trace is not None and trace["status"] == "completed"
    assert [s["status"] for s in trace["steps"]] == ["completed"] * 4
    assert all(s["region"] == "eu-west" for s in trace["steps"])
    assert trace["output"]["result"] == "twice: hi from eu-west"
