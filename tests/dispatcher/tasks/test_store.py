"""The task store against a real Redis: records, the spec's transition rules, per-owner
paging, leases, expiry, change events, and the per-owner cap on unfinished tasks."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis

from edgefleet.dispatcher.observability.metrics import Metrics
from edgefleet.dispatcher.paths.cache import ResultCache
from edgefleet.dispatcher.paths.dispatch import CallPaths
from edgefleet.dispatcher.tasks.model import CANCELLED, COMPLETED, FAILED, INPUT_REQUIRED, WORKING, TaskRecord
from edgefleet.dispatcher.tasks.runner import TaskRunner, new_task_id
from edgefleet.dispatcher.tasks.store import BadCursor, TaskStore, now_ms
from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.errors import TooManyTasks
from edgefleet.shared.settings import DispatcherSettings


def record(owner: str = "alice", *, ttl_ms: int = 60_000, created_ms: int | None = None) -> TaskRecord:
    now = created_ms or now_ms()
    return TaskRecord(
        id=new_task_id(),
        owner=owner,
        tool="echo.wait",
        status=WORKING,
        created_ms=now,
        updated_ms=now,
        ttl_ms=ttl_ms,
        poll_ms=1000,
        deadline_ms=now + ttl_ms,
        request={"name": "echo.wait", "arguments": {"seconds": 1}},
    )


async def test_create_get_and_wire_forms(store: TaskStore) -> None:
    r = record()
    await store.create(r)
    got = await store.get(r.id)
    assert (
        got is not None
        and got.owner == "alice"
        and got.status == WORKING
        and got.request["arguments"] == {"seconds": 1}
    )
    legacy, modern = got.legacy(), got.modern()
    assert legacy["taskId"] == r.id and legacy["ttl"] == 60_000 and legacy["pollInterval"] == 1000
    assert legacy["createdAt"].endswith("Z") and "ttlMs" not in legacy
    assert modern["ttlMs"] == 60_000 and modern["pollIntervalMs"] == 1000 and "result" not in modern
    assert await store.get("nope") is None
    assert await store.get("x" * 500) is None


async def test_a_record_keeps_its_owners_restriction_past_its_end(store: TaskStore) -> None:
    """Whoever runs a task again has only the record: it carries the owner's regions and
    tool allowlist, and they stay when the request's arguments are dropped at the end."""
    r = record()
    r.regions, r.tools = ("eu-west", "us-east"), ("text.*", "edgefleet.fanout")
    await store.create(r)
    await store.transition(r.id, COMPLETED, result={"content": []})
    got = await store.get(r.id)
    assert got is not None and got.regions == ("eu-west", "us-east") and got.tools == ("text.*", "edgefleet.fanout")
    identity = got.identity()
    assert identity.name == "alice" and identity.regions == ("eu-west", "us-east") and identity.may_call("text.stats")
    assert not identity.may_call("data.query")
    unbound = record()
    await store.create(unbound)
    found = await store.get(unbound.id)
    assert found is not None and found.regions == () and found.tools == () and found.identity().may_call("x.y")


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
    assert (
        got_legacy is not None
        and got_legacy.status == FAILED
        and got_legacy.outcome() == {"result": {"content": [], "isError": True}}
    )
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


# -- the open-task cap -------------------------------------------------------------------
async def test_the_open_task_cap_holds_when_dispatchers_race_for_the_last_slots(
    store: TaskStore, redis_url: str, redis_prefix: str
) -> None:
    other_client = aioredis.Redis.from_url(redis_url)  # a second dispatcher: its own connections
    other = TaskStore(other_client, RedisKeys(redis_prefix))
    try:
        await store.create(record(), max_open=5)
        attempts = [record() for _ in range(40)]
        outcomes = await asyncio.gather(
            *((store, other)[i % 2].create(r, max_open=5) for i, r in enumerate(attempts)), return_exceptions=True
        )
    finally:
        await other_client.aclose()
    created = [r for r, o in zip(attempts, outcomes, strict=True) if o is None]
    refused = [o for o in outcomes if isinstance(o, TooManyTasks)]
    assert len(created) == 4 and len(refused) == 36, outcomes
    error = refused[0].to_jsonrpc()
    assert error["code"] == -31430 and error["data"]["code"] == "too_many_tasks" and error["data"]["limit"] == 5
    assert 1 <= error["data"]["retry_after_s"] <= 5 and "alice" in error["message"]
    assert refused[0].http_status == 429
    # A refused create leaves nothing behind; the ones that won are whole.
    losers = [r for r, o in zip(attempts, outcomes, strict=True) if o is not None]
    assert [await store.get(r.id) for r in losers] == [None] * len(losers)
    assert None not in [await store.get(r.id) for r in created]
    assert await store.redis.zcard(store.open_tasks_key("alice")) == 5
    listed, _ = await store.list("alice", limit=200)
    assert len(listed) == 5
    # Another identity has its own slots; no cap (0) means none.
    await store.create(record("bob"), max_open=5)
    await store.create(record("alice"))
    assert await store.redis.zcard(store.open_tasks_key("alice")) == 6


async def test_every_terminal_status_frees_the_slot_and_input_required_keeps_it(store: TaskStore) -> None:
    first = record()
    await store.create(first, max_open=1)
    ends = [
        lambda task_id: store.transition(task_id, COMPLETED, result={"content": []}),
        lambda task_id: store.transition(task_id, COMPLETED, result={"content": [], "isError": True}),  # legacy: failed
        lambda task_id: store.transition(task_id, FAILED, error={"code": -31002, "message": "x"}),
        lambda task_id: store.transition(task_id, CANCELLED, error={"code": -31499, "message": "cancelled"}),
    ]
    holder = first
    for end in ends:
        assert await store.transition(holder.id, INPUT_REQUIRED) == "ok"  # still unfinished: still counted
        with pytest.raises(TooManyTasks):
            await store.create(record(), max_open=1)
        assert await store.transition(holder.id, WORKING) == "ok"
        assert await end(holder.id) == "ok"
        assert (await store.get(holder.id)).terminal  # type: ignore[union-attr]
        holder = record()
        await store.create(holder, max_open=1)  # the slot is free again
    # A refused move (already terminal) does not free someone else's slot.
    assert await store.transition(first.id, CANCELLED) == COMPLETED
    with pytest.raises(TooManyTasks):
        await store.create(record(), max_open=1)


async def test_the_deadline_sweep_frees_the_slot(store: TaskStore) -> None:
    settings = DispatcherSettings(fleet_token="t", max_open_tasks=1)
    paths = CallPaths(None, None, ResultCache(0))  # type: ignore[arg-type]  # the sweep runs no call
    runner = TaskRunner(settings, store, None, None, paths, None, Metrics(), "dispatcher-a")  # type: ignore[arg-type]
    late = record()
    late.deadline_ms = now_ms() - 1
    await store.create(late, max_open=1)
    with pytest.raises(TooManyTasks):
        await store.create(record(), max_open=1)
    await runner.sweep()
    got = await store.get(late.id)
    assert got is not None and got.status == FAILED and got.error is not None and got.error["code"] == -31003
    await store.create(record(), max_open=1)


async def test_a_slot_heals_when_its_task_vanished_without_ending(store: TaskStore) -> None:
    # Expired: the record is gone at its ttl, and so is its slot (scored by that expiry).
    short = record(ttl_ms=300)
    await store.create(short, max_open=1)
    with pytest.raises(TooManyTasks):
        await store.create(record(), max_open=1)
    deadline = asyncio.get_running_loop().time() + 5
    while await store.get(short.id) is not None:  # Redis expires it; nothing to await but its absence
        assert asyncio.get_running_loop().time() < deadline, "the record did not expire"
        await asyncio.sleep(0.05)
    held = record()
    await store.create(held, max_open=1)

    # Deleted or evicted before its expiry: checked against the record when at the cap.
    await store.redis.delete(store.keys.task(held.id))
    evicted_next = record()
    await store.create(evicted_next, max_open=1)

    # Ended by a dispatcher that does not know about slots (an older version mid-upgrade).
    await store.redis.hset(store.keys.task(evicted_next.id), "status", COMPLETED)
    await store.create(record(), max_open=1)
    assert await store.redis.zcard(store.open_tasks_key("alice")) == 1

    # Live tasks are never healed away.
    with pytest.raises(TooManyTasks) as refused:
        await store.create(record(), max_open=1)
    assert refused.value.data["open"] == 1
