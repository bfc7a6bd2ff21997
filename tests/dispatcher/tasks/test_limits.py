"""Resource limits on tasks: the per-owner cap on unfinished tasks (EDGEFLEET_MAX_OPEN_TASKS)
and the per-identity rate limit on the task methods (EDGEFLEET_TASK_RATE_LIMIT), in process
against a real Redis and through real dispatcher processes with the official ``mcp`` client
and raw HTTP."""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.observability.metrics import Metrics
from edgefleet.dispatcher.paths.answer import HttpAnswer
from edgefleet.dispatcher.paths.cache import ResultCache
from edgefleet.dispatcher.paths.dispatch import CallPaths
from edgefleet.dispatcher.security.auth import Identity, hash_key, new_key
from edgefleet.dispatcher.security.rate_limits import RateLimits
from edgefleet.dispatcher.tasks.client import TaskHandle, TasksExtension
from edgefleet.dispatcher.tasks.methods import TaskMethods
from edgefleet.dispatcher.tasks.model import COMPLETED, WORKING, TaskRecord
from edgefleet.dispatcher.tasks.runner import TaskRunner, new_task_id
from edgefleet.dispatcher.tasks.sink import TaskSink
from edgefleet.dispatcher.tasks.store import TaskStore, now_ms
from edgefleet.shared.errors import RateLimited, TooManyTasks
from edgefleet.shared.settings import DispatcherSettings

from tests.support.fleet import Fleet
from tests.support.tasks import create_task, legacy_result

pytestmark = pytest.mark.integration

ALICE = new_key()
BOB = new_key()
MODERN = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}
TASKS_META = {
    "io.modelcontextprotocol/protocolVersion": "2026-07-28",
    "io.modelcontextprotocol/clientCapabilities": {"extensions": {"io.modelcontextprotocol/tasks": {}}},
}


def record(owner: str = "alice") -> TaskRecord:
    now = now_ms()
    return TaskRecord(
        id=new_task_id(),
        owner=owner,
        tool="echo.wait",
        status=WORKING,
        created_ms=now,
        updated_ms=now,
        ttl_ms=60_000,
        poll_ms=1000,
        deadline_ms=now + 60_000,
        request={"name": "echo.wait", "arguments": {}},
    )


# -- in process, real Redis ----------------------------------------------------------------


def settings(redis_url: str, redis_prefix: str, **values: Any) -> DispatcherSettings:
    return DispatcherSettings(fleet_token="t", redis_url=redis_url, redis_prefix=redis_prefix, **values)


async def test_each_request_counts_once_however_long_it_waits(
    store: TaskStore, redis_url: str, redis_prefix: str
) -> None:
    config = settings(redis_url, redis_prefix, task_rate_limit="4/minute", rate_limit="1/minute", max_open_tasks=5)
    limits = RateLimits(config)
    paths = CallPaths(None, None, ResultCache(0))  # type: ignore[arg-type]  # adopting runs no call
    runner = TaskRunner(config, store, None, None, paths, None, Metrics(), "dispatcher-a")  # type: ignore[arg-type]
    methods = TaskMethods(store, runner, limits=limits)
    alice, bob = Identity("alice"), Identity("bob")
    task = record()
    await store.create(task)
    sent: list[dict[str, Any]] = []

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    waiting = asyncio.create_task(methods.legacy_result(1, {"taskId": task.id}, alice, HttpAnswer(send), stream=False))
    deadline = asyncio.get_running_loop().time() + 5
    while task.id not in store.events.waiters:  # tasks/result is now waiting for changes
        assert not waiting.done() and asyncio.get_running_loop().time() < deadline
        await asyncio.sleep(0.01)
    for step in range(1, 6):  # every change wakes the waiter, which reads the task again
        assert await store.progress(task.id, {"progress": step, "total": 5}, f"step {step}")
    assert await store.transition(task.id, COMPLETED, result={"content": []}) == "ok"
    await asyncio.wait_for(waiting, 10)
    assert b'"result"' in sent[-1]["body"]

    await methods.legacy_get({"taskId": task.id}, alice)
    assert (await methods.rest_list(alice))["tasks"][0]["id"] == task.id
    assert (await methods.lookup(task.id, alice)).status == COMPLETED  # the fourth, and last, of this minute
    for refused_call in (
        lambda: methods.modern_get({"taskId": task.id}, alice),
        lambda: methods.legacy_list({}, alice),
        lambda: methods.modern_cancel({"taskId": task.id}, alice),
        lambda: methods.lookup(task.id, alice),
    ):
        with pytest.raises(RateLimited) as refused:
            await refused_call()
        assert refused.value.data["scope"] == "task" and refused.value.data["limit"] == "4 per 1 minute"
        assert 1 <= refused.value.data["retry_after_s"] <= 60 and refused.value.jsonrpc_code == -31429
    assert limits.refused["task"] == 4
    # Another identity has its own budget, and tool calls count in other keys.
    await methods.legacy_list({}, bob)
    await limits.admit("alice", "echo.echo")
    with pytest.raises(RateLimited) as calls:
        await limits.admit("alice", "echo.echo")
    assert calls.value.data["scope"] == "identity"


async def test_the_task_rate_limit_fails_open_without_redis(caplog: pytest.LogCaptureFixture) -> None:
    limits = RateLimits(
        DispatcherSettings(fleet_token="t", redis_url=f"redis://127.0.0.1:{free_port()}/0", task_rate_limit="1/minute")
    )
    for _ in range(3):
        await limits.admit_task_method("alice")
    assert "task request let through" in caplog.text and not limits.refused


async def test_a_call_is_not_adopted_when_its_owner_is_at_the_cap(
    store: TaskStore, redis_url: str, redis_prefix: str
) -> None:
    config = settings(redis_url, redis_prefix, max_open_tasks=1)
    paths = CallPaths(None, None, ResultCache(0))  # type: ignore[arg-type]  # adopting runs no call
    runner = TaskRunner(config, store, None, None, paths, None, Metrics(), "dispatcher-a")  # type: ignore[arg-type]
    await store.create(record(), max_open=1)
    release = asyncio.Event()

    async def call() -> None:
        await release.wait()

    work = asyncio.create_task(call())
    sink = TaskSink()
    promoted = record()
    with pytest.raises(TooManyTasks) as refused:
        await runner.adopt(promoted, sink, work)
    assert refused.value.data["limit"] == 1 and refused.value.data["retry_after_s"] >= 1
    # Nothing half-adopted: no record, no local task, the call's progress still its own.
    assert await store.get(promoted.id) is None and promoted.id not in runner.running and sink.on_progress is None
    assert runner.refused_open == 1
    release.set()
    await work


# -- through dispatcher processes ----------------------------------------------------------
def keys_file(tmp_path: Path) -> Path:
    path = tmp_path / "keys.yaml"
    path.write_text(
        yaml.safe_dump(
            {"keys": [{"identity": "alice", "sha256": hash_key(ALICE)}, {"identity": "bob", "sha256": hash_key(BOB)}]}
        )
    )
    return path


def client(fleet: Fleet, key: str, url: str | None = None, **options: Any) -> Client:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(url or fleet.mcp_url, http_client=http), **options)


@pytest.fixture
def capped(redis_url: str, redis_prefix: str, tmp_path: Path) -> Iterator[Fleet]:
    fleet = Fleet(redis_url, redis_prefix)
    fleet.default_auth = "required"
    try:
        fleet.start_dispatcher(
            api_keys_file=keys_file(tmp_path), max_open_tasks=2, task_after_ms=800, task_poll_interval_ms=100
        )
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west")
        yield fleet
    finally:
        fleet.stop()


def task_ids(fleet: Fleet, key: str) -> set[str]:
    listed = httpx.get(f"{fleet.url}/v1/tasks", headers={"authorization": f"Bearer {key}"}, timeout=10)
    return {t["id"] for t in listed.json()["tasks"] if t["status"] == "working"}


async def test_a_task_beyond_the_cap_is_refused_until_one_ends(capped: Fleet) -> None:
    async with client(capped, ALICE, mode="legacy") as alice:
        first = await create_task(alice, "echo.wait", {"seconds": 60})
        second = await create_task(alice, "echo.wait", {"seconds": 60})
        with pytest.raises(MCPError) as refused:
            await create_task(alice, "echo.echo", {"text": "one too many"})
        assert refused.value.code == -31430 and refused.value.data["code"] == "too_many_tasks"
        assert refused.value.data["limit"] == 2 and refused.value.data["retry_after_s"] >= 1
        # The 2026 era, on the wire: HTTP 429, Retry-After, the request's id (trainer.train is long_running: a task at once).
        body = {
            "jsonrpc": "2.0",
            "id": 41,
            "method": "tools/call",
            "params": {"name": "trainer.train", "arguments": {"epochs": 2}, "_meta": TASKS_META},
        }
        raw = httpx.post(
            capped.mcp_url,
            json=body,
            timeout=10,
            headers={
                **MODERN,
                "mcp-method": "tools/call",
                "mcp-name": "trainer.train",
                "authorization": f"Bearer {ALICE}",
            },
        )
        assert raw.status_code == 429, raw.text
        error = raw.json()["error"]
        assert raw.json()["id"] == 41 and error["code"] == -31430 and error["data"]["code"] == "too_many_tasks"
        assert int(raw.headers["retry-after"]) == error["data"]["retry_after_s"]

        async with client(capped, BOB, mode="legacy") as bob:  # another identity: its own slots
            assert (await create_task(bob, "echo.echo", {"text": "mine"})).status == "working"

        # A cancel frees a slot; a task that completes frees its own.
        await alice.session.send_request(
            types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=first.task_id)), types.CancelTaskResult
        )
        quick = await create_task(alice, "echo.echo", {"text": "fits"})
        assert not (await legacy_result(alice, quick.task_id)).is_error
        third = await create_task(alice, "echo.wait", {"seconds": 60})
        with pytest.raises(MCPError) as again:
            await create_task(alice, "echo.echo", {"text": "full again"})
        assert again.value.code == -31430
    assert task_ids(capped, ALICE) == {second.task_id, third.task_id}


async def test_calls_at_the_cap_stay_ordinary_calls(capped: Fleet) -> None:
    async with client(capped, ALICE, mode="legacy") as alice:
        held = {(await create_task(alice, "echo.wait", {"seconds": 60})).task_id for _ in range(2)}
    dispatcher = capped.dispatchers[0][1]

    # 2026 era with the tasks extension: a call past task_after_ms is not promoted, it answers as usual.
    seen: list[TaskHandle] = []
    async with client(capped, ALICE, extensions=[TasksExtension(on_task=seen.append)]) as modern:
        result = await modern.call_tool("echo.wait", {"seconds": 2})
        assert (
            not result.is_error
            and result.structured_content is not None
            and result.structured_content["region"] == "eu-west"
        )
        assert seen == []
        # A long_running tool is a task asked for: refused.
        with pytest.raises(MCPError) as refused:
            await modern.call_tool("trainer.train", {"epochs": 2})
        assert refused.value.code == -31430
    assert dispatcher.output().count("could not become a task") == 1

    # 2025 era: a dropped call does not become a (detached) task; it runs to its end as it was.
    def finished_waits() -> int:
        return len(re.findall(r"call echo\.wait -> .* path=direct .* ms ok\n", dispatcher.output()))

    # Call lines are written in batches (every 100 ms): the 2026 call's must be in before counting.
    capped.wait_for(lambda: finished_waits() == 1, "the 2026 call's log line")
    before = finished_waits()
    headers = {**MODERN, "authorization": f"Bearer {ALICE}"}
    del headers["mcp-protocol-version"]
    with httpx.Client(timeout=10) as http:
        init = http.post(
            capped.mcp_url,
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
            "params": {"name": "echo.wait", "arguments": {"seconds": 1}},
        }
        with pytest.raises(httpx.ReadTimeout):
            http.post(capped.mcp_url, headers=session, json=call, timeout=httpx.Timeout(10, read=0.5))
    capped.wait_for(lambda: finished_waits() == before + 1, "the dropped call to run to its end", timeout=10)
    assert dispatcher.output().count("could not become a task") == 2
    assert task_ids(capped, ALICE) == held


AS_ALICE = {"authorization": f"Bearer {ALICE}"}


@contextlib.contextmanager
def budgeted(
    redis_url: str, redis_prefix: str, tmp_path: Path, limit: str, tool: str, arguments: dict[str, Any]
) -> Iterator[tuple[str, str, dict[str, str], str]]:
    """Two dispatchers sharing one Redis and one task-method budget, an echo agent, and a
    task of alice's: (first url, second url, alice's 2025-session headers, task id)."""
    fleet = Fleet(redis_url, redis_prefix)
    fleet.default_auth = "required"
    try:
        limits = {"api_keys_file": keys_file(tmp_path), "task_rate_limit": limit}
        first = fleet.start_dispatcher(**limits)
        second = fleet.start_dispatcher(**limits)
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        legacy = {**MODERN, **AS_ALICE}
        del legacy["mcp-protocol-version"]
        init = httpx.post(
            first + "/mcp",
            headers=legacy,
            timeout=10,
            json={
                "jsonrpc": "2.0",
                "id": 1,
                "method": "initialize",
                "params": {
                    "protocolVersion": "2025-11-25",
                    "capabilities": {},
                    "clientInfo": {"name": "poller", "version": "1"},
                },
            },
        )
        legacy.update({"mcp-session-id": init.headers["mcp-session-id"], "mcp-protocol-version": "2025-11-25"})
        created = httpx.post(
            first + "/mcp",
            headers=legacy,
            timeout=10,
            json={
                "jsonrpc": "2.0",
                "id": 2,
                "method": "tools/call",
                "params": {"name": tool, "arguments": arguments, "task": {"ttl": 60_000}},
            },
        )
        yield first, second, legacy, created.json()["result"]["task"]["taskId"]
    finally:
        fleet.stop()


def test_the_task_rate_limit_holds_across_two_dispatchers(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    with budgeted(redis_url, redis_prefix, tmp_path, "5/minute", "echo.echo", {"text": "x"}) as (
        first,
        second,
        legacy,
        task_id,
    ):
        statuses: list[int] = []
        for i in range(12):  # both dispatchers, both eras: one budget, counted in Redis
            base = (first, second)[i % 2]
            if i % 4 < 2:
                body = {
                    "jsonrpc": "2.0",
                    "id": 100 + i,
                    "method": "tasks/get",
                    "params": {"taskId": task_id, "_meta": TASKS_META},
                }
                resp = httpx.post(
                    base + "/mcp", json=body, timeout=10, headers={**MODERN, **AS_ALICE, "mcp-method": "tasks/get"}
                )
            else:
                body = {"jsonrpc": "2.0", "id": 100 + i, "method": "tasks/get", "params": {"taskId": task_id}}
                resp = httpx.post(base + "/mcp", json=body, timeout=10, headers=legacy)
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                error = resp.json()["error"]
                assert (
                    error["code"] == -31429
                    and error["data"]["code"] == "rate_limited"
                    and error["data"]["scope"] == "task"
                )
                assert 1 <= int(resp.headers["retry-after"]) <= 60 and error["data"]["retry_after_s"] == int(
                    resp.headers["retry-after"]
                )
            else:
                assert resp.status_code == 200 and "error" not in resp.json(), resp.text
        assert statuses.count(200) == 5 and statuses.count(429) == 7, statuses

        # Tool calls have their own budget; another identity has its own task budget.
        call = httpx.post(
            second + "/mcp",
            headers=legacy,
            timeout=10,
            json={
                "jsonrpc": "2.0",
                "id": 3,
                "method": "tools/call",
                "params": {"name": "echo.echo", "arguments": {"text": "still fine"}},
            },
        )
        assert call.status_code == 200 and "result" in call.json()
        body = {"jsonrpc": "2.0", "id": 4, "method": "tasks/get", "params": {"taskId": task_id, "_meta": TASKS_META}}
        as_bob = httpx.post(
            second + "/mcp",
            json=body,
            timeout=10,
            headers={**MODERN, "authorization": f"Bearer {BOB}", "mcp-method": "tasks/get"},
        )
        assert (
            as_bob.status_code == 200 and as_bob.json()["error"]["code"] == -32602
        )  # counted for bob, and not his task


def test_the_rest_task_routes_share_the_task_budget(redis_url: str, redis_prefix: str, tmp_path: Path) -> None:
    with budgeted(redis_url, redis_prefix, tmp_path, "4/minute", "echo.wait", {"seconds": 30}) as (
        first,
        second,
        _,
        task_id,
    ):
        admitted = [
            httpx.get(f"{first}/v1/tasks", headers=AS_ALICE, timeout=10),
            httpx.get(f"{second}/v1/tasks/{task_id}", headers=AS_ALICE, timeout=10),
            httpx.post(f"{first}/v1/tasks/{task_id}/cancel", headers=AS_ALICE, timeout=10),
            httpx.get(f"{second}/v1/tasks/{task_id}/events", headers=AS_ALICE, timeout=10),  # cancelled: ends at once
        ]
        assert [r.status_code for r in admitted] == [200] * 4
        refused = [
            httpx.get(f"{second}/v1/tasks", headers=AS_ALICE, timeout=10),
            httpx.get(f"{first}/v1/tasks/{task_id}", headers=AS_ALICE, timeout=10),
        ]
        for resp in refused:
            assert resp.status_code == 429 and resp.json()["error"]["code"] == "rate_limited"
            assert resp.json()["error"]["details"]["scope"] == "task" and 1 <= int(resp.headers["retry-after"]) <= 60
        assert httpx.get(f"{first}/v1/tasks", headers={"authorization": f"Bearer {BOB}"}, timeout=10).status_code == 200
