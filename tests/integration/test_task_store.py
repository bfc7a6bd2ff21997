"""The task store against a real Redis: records, the spec's transition rules, per-owner
paging, leases, expiry and change events."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
import redis.asyncio as aioredis

from dispatcher.tasks.model import CANCELLED, COMPLETED, FAILED, INPUT_REQUIRED, WORKING, TaskRecord
from dispatcher.tasks.runner import new_task_id
from dispatcher.tasks.store import BadCursor, TaskStore, now_ms
from shared.constants import RedisKeys


@pytest.fixture
async def store(redis_url: str, redis_prefix: str) -> AsyncIterator[TaskStore]:
    client = aioredis.Redis.from_url(redis_url)
    store = TaskStore(client, RedisKeys(redis_prefix))
    await store.events.start()
    try:
        yield store
    finally:
        await store.events.aclose()
        await client.aclose()


def record(owner: str = "alice", *, ttl_ms: int = 60_000, created_ms: int | None = None) -> TaskRecord:
    now = created_ms or now_ms()
    return TaskRecord(id=new_task_id(), owner=owner, tool="echo.wait", status=WORKING, created_ms=now, updated_ms=now,
                      ttl_ms=ttl_ms, poll_ms=1000, deadline_ms=now + ttl_ms, request={"name": "echo.wait", "arguments": {"seconds": 1}})


async def test_create_get_and_wire_forms(store: TaskStore) -> None:
    r = record()
    await store.create(r)
    got = await store.get(r.id)
    assert got is not None and got.owner == "alice" and got.status == WORKING and got.request["arguments"] == {"seconds": 1}
    legacy, modern = got.legacy(), got.modern()
    assert legacy["taskId"] == r.id and legacy["ttl"] == 60_000 and legacy["pollInterval"] == 1000
    assert legacy["createdAt"].endswith("Z") and "ttlMs" not in legacy
    assert modern["ttlMs"] == 60_000 and modern["pollIntervalMs"] == 1000 and "result" not in modern
    assert await store.get("nope") is None
    assert await store.get("x" * 500) is None


async def test_transitions_follow_the_spec_and_terminal_is_final(store: TaskStore) -> None:
    r = record()
    await store.create(r)
    assert await store.transition(r.id, INPUT_REQUIRED) == "ok"
    assert await store.transition(r.id, WORKING) == "ok"
    assert await store.transition(r.id, COMPLETED, result={"content": [], "isError": False}) == "ok"
    # Terminal: nothing moves it any more, not even a cancel racing the result.
    assert await store.transition(r.id, CANCELLED) == COMPLETED
    assert await store.transition(r.id, FAILED, error={"code": 1, "message": "x"}) == COMPLETED
    got = await store.get(r.id)
    assert got is not None and got.status == COMPLETED and got.modern()["result"] == {"content": [], "isError": False}
    assert [h["status"] for h in await store.history(r.id)] == [WORKING, INPUT_REQUIRED, WORKING, COMPLETED]
    assert await store.transition("missing", CANCELLED) == "missing"

    cancelled = record()
    await store.create(cancelled)
    assert await store.transition(cancelled.id, CANCELLED, error={"code": -31499, "message": "cancelled"}) == "ok"
    # The work finishing afterwards does not resurrect it.
    assert await store.transition(cancelled.id, COMPLETED, result={"content": []}) == CANCELLED
    assert (await store.get(cancelled.id)).status == CANCELLED  # type: ignore[union-attr]


async def test_a_2025_tool_error_fails_the_task_and_keeps_its_result(store: TaskStore) -> None:
    legacy, modern = record(), record()
    modern.era = "modern"
    for r in (legacy, modern):
        await store.create(r)
        assert await store.transition(r.id, COMPLETED, result={"content": [], "isError": True}) == "ok"
    got_legacy, got_modern = await store.get(legacy.id), await store.get(modern.id)
    assert got_legacy is not None and got_legacy.status == FAILED and got_legacy.outcome() == {"result": {"content": [], "isError": True}}
    assert got_modern is not None and got_modern.status == COMPLETED
    assert [h["status"] for h in await store.history(legacy.id)] == [WORKING, FAILED]
    assert got_legacy.request == {}  # the arguments go once the task is over


async def test_progress_only_while_unfinished(store: TaskStore) -> None:
    r = record()
    await store.create(r)
    assert await store.progress(r.id, {"progress": 3, "total": 10}, "epoch 3/10")
    got = await store.get(r.id)
    assert got is not None and got.progress == {"progress": 3, "total": 10} and got.message == "epoch 3/10"
    await store.transition(r.id, COMPLETED, result={"content": []})
    assert not await store.progress(r.id, {"progress": 4}, None)


async def test_list_pages_through_one_owners_tasks_newest_first(store: TaskStore) -> None:
    base = now_ms()
    mine = [record("alice", created_ms=base + i // 3) for i in range(25)]  # several per millisecond
    for r in mine:
        await store.create(r)
    for _ in range(3):
        await store.create(record("bob"))
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        page, cursor = await store.list("alice", cursor=cursor, limit=10)
        pages += 1
        seen += [r.id for r in page]
        assert all(r.owner == "alice" for r in page)
        if cursor is None:
            break
    assert pages == 3 and len(seen) == 25 and set(seen) == {r.id for r in mine}
    created = {r.id: r.created_ms for r in mine}
    assert [created[i] for i in seen] == sorted(created.values(), reverse=True)
    bob, cursor = await store.list("bob")
    assert len(bob) == 3 and cursor is None
    everyone, _ = await store.list(None, limit=200)
    assert len(everyone) == 28
    with pytest.raises(BadCursor):
        await store.list("alice", cursor="garbage!")


async def test_an_expired_task_disappears_from_get_and_list(store: TaskStore) -> None:
    r = record(ttl_ms=300)
    await store.create(r)
    assert await store.get(r.id) is not None
    await asyncio.sleep(0.5)
    assert await store.get(r.id) is None
    page, _ = await store.list("alice")
    assert r.id not in [p.id for p in page]


async def test_an_expired_lease_is_claimed_once(store: TaskStore) -> None:
    r = record()
    r.runner = "dispatcher-a"
    await store.create(r, lease_until_ms=now_ms() - 1)
    assert r.id in await store.expired_leases()
    assert await store.renew("dispatcher-b", [r.id], now_ms() + 10_000) == [r.id]  # not b's: b must not run it
    assert await store.claim(r.id, "dispatcher-b", now_ms() + 10_000)
    assert not await store.claim(r.id, "dispatcher-c", now_ms() + 10_000)  # b holds it now
    got = await store.get(r.id)
    assert got is not None and got.runner == "dispatcher-b" and got.attempts == 2
    assert await store.renew("dispatcher-b", [r.id], now_ms() + 10_000) == []
    await store.transition(r.id, COMPLETED, result={"content": []})
    assert await store.renew("dispatcher-b", [r.id], now_ms() + 10_000) == [r.id]  # finished: stop
    assert r.id not in await store.expired_leases() and r.id not in await store.past_deadline()


async def test_watchers_hear_every_change(store: TaskStore) -> None:
    r = record()
    async with store.events.watch(r.id) as changes:
        await store.create(r)
        await store.progress(r.id, {"progress": 1}, None)
        await store.transition(r.id, CANCELLED)
        heard = [await asyncio.wait_for(changes.get(), 5) for _ in range(3)]
    assert heard == [WORKING, "progress", CANCELLED]
