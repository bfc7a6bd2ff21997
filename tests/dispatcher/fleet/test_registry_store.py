"""The registry's layout in a real Redis: small records read every sync, tool lists apart
and read once per dispatcher, records of earlier versions still read, the agents seen."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import orjson
import redis.asyncio as aioredis

from edgefleet.dispatcher.fleet.registry import EMPTY_HASH, Registry, tools_hash
from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.models import ReplicaRecord


def _record(replica_id: str, agent: str = "wide", tools: int = 300) -> ReplicaRecord:
    listed: list[dict[str, Any]] = [
        {"name": f"t{i}", "description": "x" * 100, "inputSchema": {"type": "object"}} for i in range(tools)
    ]
    return ReplicaRecord(
        replica_id=replica_id,
        agent=agent,
        region="eu-west",
        url="http://127.0.0.1:9/mcp",
        tools=listed,
        tools_hash=tools_hash(listed),
    )


async def test_records_are_small_and_a_tool_list_is_read_once(redis_client: aioredis.Redis, redis_prefix: str) -> None:
    keys = RedisKeys(redis_prefix)
    writer = Registry(redis_client, keys, 5.0)
    await writer.put(_record("wide-1"))
    await writer.put(_record("wide-2"))  # same tools
    raw = await redis_client.get(keys.replica("wide-1"))
    assert raw is not None and len(raw) < 1000 and b"description" not in raw
    assert len(orjson.loads(await redis_client.get(writer.tools_key("wide-1")))) == 300
    reader = Registry(redis_client, keys, 5.0)  # another dispatcher
    first = await reader.live()
    assert [len(r.tools) for r in first] == [300, 300] and first[0].tools is first[1].tools  # one copy
    # From now on the lists come from memory: even gone from Redis, they are not read again.
    await redis_client.delete(writer.tools_key("wide-1"), writer.tools_key("wide-2"))
    assert [len(r.tools) for r in await reader.live()] == [300, 300]
    assert await reader.heartbeat("wide-1", {"inflight": 3})
    raw = await redis_client.get(keys.replica("wide-1"))
    assert raw is not None and len(raw) < 1000 and orjson.loads(raw)["load"] == {"inflight": 3}


async def test_a_heartbeat_keeps_the_tools_as_long_as_the_record(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    registry = Registry(redis_client, keys, 1.0)
    await registry.put(_record("wide-1"))
    for _ in range(3):
        await asyncio.sleep(0.5)
        assert await registry.heartbeat("wide-1", {})
    assert await redis_client.pttl(registry.tools_key("wide-1")) > 500  # 1.5 s after registration, lease 1 s
    assert len((await Registry(redis_client, keys, 1.0).live())[0].tools) == 300


async def test_records_with_inline_tools_from_earlier_versions_are_read(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    old = _record("old-1", tools=3)
    await redis_client.set(keys.replica("old-1"), old.model_dump_json(), px=5000)
    await redis_client.zadd(keys.replicas, {"old-1": time.time() * 1000 + 5000})
    registry = Registry(redis_client, keys, 5.0)
    (found,) = await registry.live()
    assert [t["name"] for t in found.tools] == ["t0", "t1", "t2"] and found.tools_hash == old.tools_hash
    assert await registry.heartbeat("old-1", {})  # kept inline: older dispatchers still read it
    assert len(orjson.loads(await redis_client.get(keys.replica("old-1")))["tools"]) == 3


async def test_a_missing_tool_list_shows_as_unknown_until_it_can_be_read(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    writer = Registry(redis_client, keys, 5.0)
    record = _record("wide-1", tools=2)
    await writer.put(record)
    saved = await redis_client.get(writer.tools_key("wide-1"))
    await redis_client.delete(writer.tools_key("wide-1"))
    reader = Registry(redis_client, keys, 5.0)
    (found,) = await reader.live()
    assert found.tools == [] and found.tools_hash == ""  # never a wrong list under a right hash
    await redis_client.set(writer.tools_key("wide-1"), saved)
    (found,) = await reader.live()
    assert len(found.tools) == 2 and found.tools_hash == record.tools_hash


async def test_the_agents_seen_survive_their_leases_until_removed(
    redis_client: aioredis.Redis, redis_prefix: str
) -> None:
    keys = RedisKeys(redis_prefix)
    registry = Registry(redis_client, keys, 0.3)
    await registry.put(_record("text-1", agent="text", tools=1))
    await registry.put(_record("data-1", agent="data", tools=0))
    await asyncio.sleep(0.5)
    assert await registry.live() == [] and await registry.seen() == {"text", "data"}
    await registry.put(_record("data-2", agent="data", tools=0))
    assert await registry.remove("data-2")
    assert await registry.seen() == {"text"} and await redis_client.exists(registry.tools_key("data-2")) == 0
    assert EMPTY_HASH in registry.tools
