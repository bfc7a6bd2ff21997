"""Tasks survive what kills processes: the dispatcher killed with -9 and restarted, an
agent replica killed mid-task. Never stuck in ``working``: each test ends in a terminal
status the client can read."""

from __future__ import annotations

import re
import time
from typing import Any

import httpx
import pytest
from mcp import Client, MCPError

from tests.support.fleet import Fleet
from tests.support.tasks import create_task, legacy_result

pytestmark = pytest.mark.integration


def view(fleet: Fleet, task_id: str) -> dict[str, Any]:
    return httpx.get(f"{fleet.url}/v1/tasks/{task_id}", timeout=10).json()


def wait_terminal(fleet: Fleet, task_id: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def terminal() -> bool:
        nonlocal found
        found = view(fleet, task_id)
        return found.get("status") in ("completed", "failed", "cancelled")

    fleet.wait_for(terminal, f"task {task_id} to end", timeout=timeout)
    return found


def kill_and_restart_dispatcher(fleet: Fleet, **settings: Any) -> None:
    url, proc = fleet.dispatchers.pop(0)
    proc.kill9()
    port = int(url.rsplit(":", 1)[1])
    fleet.start_dispatcher(port=port, **settings)


async def test_a_60_second_task_survives_client_disconnect_and_dispatcher_kill9(
    redis_url: str, redis_prefix: str
) -> None:
    fleet = Fleet(redis_url, redis_prefix)
    try:
        settings = {"bus_url": redis_url, "task_poll_interval_ms": 500}
        fleet.start_dispatcher(**settings)
        agent = fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        started = time.monotonic()
        async with Client(fleet.mcp_url, mode="legacy") as client:
            task = await create_task(client, "echo.wait", {"seconds": 60}, ttl=600_000)
        # The client is gone. The work runs on the agent, fed by the bus.
        assert view(fleet, task.task_id)["path"] == "bus"
        fleet.wait_for(lambda: "wait started" in agent.output(), "the agent to start the work", timeout=10)
        kill_and_restart_dispatcher(fleet, **settings)
        assert view(fleet, task.task_id)["status"] == "working"
        async with Client(fleet.mcp_url, mode="legacy") as client:  # a new connection to the new process
            result = await legacy_result(client, task.task_id)
        assert not result.is_error and result.structured_content is not None
        assert result.structured_content["region"] == "eu-west"
        assert time.monotonic() - started >= 60
        assert view(fleet, task.task_id)["status"] == "completed"
    finally:
        fleet.stop()


async def test_bus_task_moves_to_another_replica_when_its_replica_is_killed(redis_url: str, redis_prefix: str) -> None:
    fleet = Fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher(bus_url=redis_url)
        first = fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west", bus_visibility_s=2)
        async with Client(fleet.mcp_url, mode="legacy") as client:
            task = await create_task(client, "trainer.train", {"epochs": 40}, ttl=600_000)
        fleet.wait_for(
            lambda: (view(fleet, task.task_id).get("progress") or {}).get("progress", 0) >= 2,
            "the first replica to be training",
            timeout=30,
        )
        second = fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west", bus_visibility_s=2)
        first.kill9()
        done = wait_terminal(fleet, task.task_id, timeout=90)
        assert done["status"] == "completed", done
        assert done["result"]["structuredContent"]["epochs"] == 40
        assert "took over call" in second.output()
    finally:
        fleet.stop()


async def test_direct_task_of_a_killed_replica_fails_clearly(fleet: Fleet) -> None:
    agent = fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
    async with Client(fleet.mcp_url, mode="legacy") as client:
        task = await create_task(client, "echo.wait", {"seconds": 30})
        assert view(fleet, task.task_id)["path"] == "direct"
        fleet.wait_for(lambda: "wait started" in agent.output(), "the agent to start the work", timeout=10)
        agent.kill9()
        done = wait_terminal(fleet, task.task_id, timeout=15)
        assert done["status"] == "failed" and done["error"]["code"] == -31004, done
        with pytest.raises(MCPError) as failed:
            await legacy_result(client, task.task_id)
        assert failed.value.code == -31004


async def test_in_process_tasks_of_a_killed_dispatcher_are_recovered(redis_url: str, redis_prefix: str) -> None:
    """Direct path: the dispatcher ran the work, so its death interrupts it. Another
    dispatcher (here: the restarted one) takes over when the lease lapses: an idempotent
    tool runs again, a non-idempotent one fails with outcome_unknown."""
    fleet = Fleet(redis_url, redis_prefix)
    try:
        settings = {"task_lease_s": 1.5}
        fleet.start_dispatcher(**settings)
        echo = fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west")
        async with Client(fleet.mcp_url, mode="legacy") as client:
            idempotent = await create_task(client, "trainer.train", {"epochs": 60}, ttl=600_000)
            once_only = await create_task(client, "echo.wait", {"seconds": 60}, ttl=600_000)
        fleet.wait_for(
            lambda: (
                "wait started" in echo.output()
                and (view(fleet, idempotent.task_id).get("progress") or {}).get("progress")
            ),
            "both tasks to be under way",
            timeout=30,
        )
        kill_and_restart_dispatcher(fleet, **settings)
        rerun = wait_terminal(fleet, idempotent.task_id, timeout=60)
        assert rerun["status"] == "completed" and rerun["attempts"] == 2, rerun
        failed = wait_terminal(fleet, once_only.task_id, timeout=30)
        assert failed["status"] == "failed" and failed["error"]["code"] == -31004
        assert re.search(r"not idempotent", failed["error"]["message"])
    finally:
        fleet.stop()


@pytest.mark.parametrize("backend", ["redis", "kafka"])
async def test_bus_tasks_complete_and_cancel_on_each_backend(
    backend: str, request: pytest.FixtureRequest, redis_url: str, redis_prefix: str
) -> None:
    """The store is Redis whatever the bus: a task run over Kafka completes through the
    shared replies topic, and its cancel reaches the agent over the cancels topic."""
    from edgefleet.dispatcher.tasks.client import TaskHandle, TasksExtension, cancel_task, get_task

    bus_url = redis_url if backend == "redis" else request.getfixturevalue("kafka_url")
    fleet = Fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher(bus_url=bus_url, task_poll_interval_ms=100)
        fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west")
        echo = fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        seen: list[TaskHandle] = []
        async with Client(fleet.mcp_url, extensions=[TasksExtension(on_task=seen.append)]) as client:
            result = await client.call_tool("trainer.train", {"epochs": 5})
            assert (
                not result.is_error
                and result.structured_content is not None
                and result.structured_content["epochs"] == 5
            )
            done = view(fleet, seen[0].task_id)
            assert done["path"] == "bus" and done["status"] == "completed" and done["progress"]["progress"] == 5

        async with Client(fleet.mcp_url, mode="legacy") as client:
            task = await create_task(client, "echo.wait", {"seconds": 30}, ttl=600_000)
        fleet.wait_for(lambda: "wait started" in echo.output(), "the agent to take the call", timeout=10)
        async with Client(fleet.mcp_url, extensions=[TasksExtension()]) as client:
            started = time.monotonic()
            await cancel_task(client.session, task.task_id)
            assert time.monotonic() - started < 0.5
            assert (await get_task(client.session, task.task_id)).status == "cancelled"
        fleet.wait_for(lambda: "wait cancelled after" in echo.output(), "the agent's handler to stop", timeout=10)
    finally:
        fleet.stop()
