"""Durable MCP tasks through real processes and the official ``mcp`` client, in both
protocol eras: task-augmented calls (2025-11-25), the tasks extension (2026-07-28),
progress, cancel reaching the agent, calls that become tasks, the REST mirror."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import httpx
import mcp_types as types
import orjson
import pytest
from mcp import Client, MCPError

from edgefleet.dispatcher.tasks.client import TaskHandle, TasksExtension, cancel_task, get_task

from tests.support.fleet import Fleet
from tests.support.tasks import create_task, legacy_get, legacy_result


@pytest.fixture
def task_fleet(redis_url: str, redis_prefix: str) -> Any:
    fleet = Fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher(task_after_ms=800, task_poll_interval_ms=100)
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west")
        yield fleet
    finally:
        fleet.stop()


async def test_2025_task_augmented_call_get_list_result_and_cancel_rules(task_fleet: Fleet) -> None:
    async with Client(task_fleet.mcp_url, mode="legacy") as client:
        assert client.protocol_version == "2025-11-25"
        caps = client.server_capabilities
        assert caps.tasks is not None and caps.tasks.requests is not None and caps.tasks.requests.tools is not None
        tools = {t.name: t for t in (await client.list_tools()).tools}
        assert tools["echo.wait"].execution is not None and tools["echo.wait"].execution.task_support == "optional"

        started = time.monotonic()
        task = await create_task(client, "echo.wait", {"seconds": 1.5})
        assert time.monotonic() - started < 1.0, "CreateTaskResult must come at once, not after the work"
        assert task.status == "working" and task.ttl == 60_000 and task.poll_interval == 100
        polled = await legacy_get(client, task.task_id)
        assert polled.status == "working"
        listed = await client.session.send_request(types.ListTasksRequest(), types.ListTasksResult)
        assert task.task_id in [t.task_id for t in listed.tasks]

        result = await legacy_result(client, task.task_id)  # blocks until terminal
        assert not result.is_error and result.structured_content == {
            "region": "eu-west",
            "url": result.structured_content["url"],
        }
        assert result.meta is not None and result.meta["io.modelcontextprotocol/related-task"] == {
            "taskId": task.task_id
        }
        assert time.monotonic() - started >= 1.4
        assert (await legacy_get(client, task.task_id)).status == "completed"

        with pytest.raises(MCPError) as finished:
            await client.session.send_request(
                types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task.task_id)),
                types.CancelTaskResult,
            )
        assert finished.value.code == -32602
        with pytest.raises(MCPError) as unknown:
            await legacy_get(client, "0" * 32)
        assert unknown.value.code == -32602

        # A tool error is a completed task whose result says isError (not a failed task).
        failing = await create_task(client, "echo.fail", {"message": "nope"})
        result = await legacy_result(client, failing.task_id)
        assert result.is_error and "nope" in str(result.content)
        # Invalid arguments: still a task (the client asked for one), completed with the
        # same tool error an ordinary call gets, naming the field.
        broken = await create_task(client, "echo.wait", {"seconds": "soon"})
        result = await legacy_result(client, broken.task_id)
        assert result.is_error and "seconds" in str(result.content)


async def test_2025_progress_updates_the_task(task_fleet: Fleet) -> None:
    async with Client(task_fleet.mcp_url, mode="legacy") as client:
        task = await create_task(client, "trainer.train", {"epochs": 25}, meta={"progressToken": "p1"})
        messages: set[str] = set()
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            polled = await legacy_get(client, task.task_id)
            if polled.status_message:
                messages.add(polled.status_message)
            if polled.status == "completed":
                break
            await asyncio.sleep(0.1)
        assert polled.status == "completed"
        assert any(m.startswith("epoch ") for m in messages), messages
        result = await legacy_result(client, task.task_id)
        assert result.structured_content is not None and result.structured_content["epochs"] == 25

    rest = httpx.get(f"{task_fleet.url}/v1/tasks/{task.task_id}", timeout=10).json()
    assert rest["status"] == "completed" and rest["progress"]["progress"] == 25 and rest["progress"]["total"] == 25
    assert [h["status"] for h in rest["history"]] == ["working", "completed"]


async def test_2025_cancel_is_acknowledged_fast_and_stops_the_agent(task_fleet: Fleet) -> None:
    async with Client(task_fleet.mcp_url, mode="legacy") as client:
        task = await create_task(client, "echo.wait", {"seconds": 30})
        echo = next(a for a in task_fleet.agents if "echo" in a.name)
        task_fleet.wait_for(lambda: "wait started" in echo.output(), "the agent to be in the handler", timeout=10)
        started = time.monotonic()
        cancelled = await client.session.send_request(
            types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task.task_id)), types.CancelTaskResult
        )
        elapsed = time.monotonic() - started
        assert cancelled.status == "cancelled" and elapsed < 0.5, elapsed
        assert (await legacy_get(client, task.task_id)).status == "cancelled"
        with pytest.raises(MCPError) as outcome:
            await legacy_result(client, task.task_id)
        assert outcome.value.code == -31499
    task_fleet.wait_for(lambda: "wait cancelled after" in echo.output(), "the agent's handler to stop", timeout=5)


async def test_2026_extension_long_running_tool_is_a_task_resolved_transparently(task_fleet: Fleet) -> None:
    seen: list[TaskHandle] = []
    async with Client(task_fleet.mcp_url, extensions=[TasksExtension(on_task=seen.append)]) as client:
        assert client.protocol_version == "2026-07-28"
        result = await client.call_tool("trainer.train", {"epochs": 3})
        assert (
            not result.is_error and result.structured_content is not None and result.structured_content["epochs"] == 3
        )
        assert len(seen) == 1 and seen[0].status == "working"
        task = await get_task(client.session, seen[0].task_id)
        assert (
            task.status == "completed" and task.result is not None and task.result["structuredContent"]["epochs"] == 3
        )

        # An ordinary tool that runs past task_after_ms is turned into a task (promoted).
        result = await client.call_tool("echo.wait", {"seconds": 2})
        assert not result.is_error and len(seen) == 2
        # A quick call stays an ordinary answer.
        assert (await client.call_tool("echo.echo", {"text": "hi"})).content[0].text == "hi"  # type: ignore[union-attr]
        assert len(seen) == 2

        # tasks/cancel is an ack; the task ends cancelled and the agent stops.
        handle: list[TaskHandle] = []

        async def remember(h: TaskHandle) -> None:
            handle.append(h)
            raise asyncio.CancelledError  # stop the resolver: the test drives the task itself

    async with Client(task_fleet.mcp_url, extensions=[TasksExtension(on_task=remember)]) as client:
        with pytest.raises((asyncio.CancelledError, MCPError, BaseExceptionGroup)):
            await client.call_tool("echo.wait", {"seconds": 30})
    async with Client(task_fleet.mcp_url, extensions=[TasksExtension()]) as client:
        started = time.monotonic()
        await cancel_task(client.session, handle[0].task_id)
        assert time.monotonic() - started < 0.5
        assert (await get_task(client.session, handle[0].task_id)).status == "cancelled"


async def test_2026_without_the_extension_there_are_no_tasks(task_fleet: Fleet) -> None:
    async with Client(task_fleet.mcp_url) as client:
        result = await client.call_tool("echo.wait", {"seconds": 1.2})  # past task_after_ms, still an ordinary answer
        assert not result.is_error
        with pytest.raises(MCPError) as refused:
            await get_task(client.session, "0" * 32)
        assert refused.value.code == -32021


async def test_a_dropped_2025_call_goes_on_as_a_task(task_fleet: Fleet) -> None:
    url = task_fleet.mcp_url
    headers = {"accept": "application/json, text/event-stream", "content-type": "application/json"}
    with httpx.Client(timeout=10) as http:
        init = http.post(
            url,
            headers=headers,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "dropper", "version": "1"},
                },
            },
        )
        session = {**headers, "mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"}
        call = {
            "jsonrpc": "2.0",
            "id": 2,
            "method": "tools/call",
            "params": {"name": "echo.wait", "arguments": {"seconds": 2}},
        }
        with pytest.raises(httpx.ReadTimeout):
            http.post(
                url, headers=session, json=call, timeout=httpx.Timeout(10, read=0.5)
            )  # the client gives up and goes

    async with Client(task_fleet.mcp_url, mode="legacy") as client:  # a new connection, a new session
        found: list[types.Task] = []
        deadline = time.monotonic() + 10
        while not found and time.monotonic() < deadline:
            listed = await client.session.send_request(types.ListTasksRequest(), types.ListTasksResult)
            found = listed.tasks
            await asyncio.sleep(0.1)
        assert found, "the dropped call did not become a task"
        result = await legacy_result(client, found[0].task_id)
        assert (
            not result.is_error
            and result.structured_content is not None
            and result.structured_content["region"] == "eu-west"
        )
    view = httpx.get(f"{task_fleet.url}/v1/tasks/{found[0].task_id}", timeout=10).json()
    assert view["origin"] == "detached" and view["tool"] == "echo.wait" and view["status"] == "completed"


async def test_rest_mirror_lists_gets_streams_and_cancels(task_fleet: Fleet) -> None:
    async with Client(task_fleet.mcp_url, mode="legacy") as client:
        short = await create_task(client, "trainer.train", {"epochs": 4})
        long = await create_task(client, "echo.wait", {"seconds": 30})
    base = task_fleet.url
    events: list[dict[str, Any]] = []
    with httpx.Client(timeout=30) as http:
        with http.stream("GET", f"{base}/v1/tasks/{short.task_id}/events") as stream:
            assert stream.headers["content-type"].startswith("text/event-stream")
            for line in stream.iter_lines():
                if line.startswith("data: "):
                    events.append(orjson.loads(line[6:]))
        assert events[-1]["status"] == "completed" and events[-1]["result"]["structuredContent"]["epochs"] == 4
        assert any(e.get("progress") for e in events)
        listed = http.get(f"{base}/v1/tasks").json()
        assert {short.task_id, long.task_id} <= {t["id"] for t in listed["tasks"]}
        cancelled = http.post(f"{base}/v1/tasks/{long.task_id}/cancel")
        assert cancelled.status_code == 200 and cancelled.json()["status"] == "cancelled"
        again = http.post(f"{base}/v1/tasks/{long.task_id}/cancel")
        assert again.status_code == 409 and again.json()["error"]["code"] == "task_finished"
        assert http.get(f"{base}/v1/tasks/{'f' * 32}").status_code == 404
        assert http.get(f"{base}/v1/tasks?cursor=%21%21").status_code == 400
