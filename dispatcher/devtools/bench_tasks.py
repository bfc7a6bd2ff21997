"""What the durable task store costs: Redis memory per task, and the latency of its calls.

Reproduce with ``python -m edgefleet.dispatcher.devtools.bench_tasks`` (add ``--json`` for machine-readable
output, ``--redis-url redis://host:port/0`` to measure an existing Redis instead of the
embedded one this starts and stops). It takes about 20 s and leaves nothing behind: every
key lives under a fresh random prefix that is removed (SCAN + UNLINK) at the end.

What it measures, in one run, through ``TaskStore`` itself (dispatcher/tasks/store.py),
with the same connection pool settings and event loop (uvloop) as the dispatcher:

- **Memory per task in Redis.** ``INFO memory`` ``used_memory`` before and after
  creating N (10,000) tasks of one owner under the fresh prefix, divided by N: the
  *working* size. Then all N are completed with a ~200-byte ``CallToolResult`` and the
  delta is added: the *completed* size. Both include each task's share of the indexes
  (owner and fleet ZSETs, the deadlines ZSET while working) and of Redis's keyspace and
  expires tables. The cross-check adds up ``MEMORY USAGE`` (all samples) of one task's
  HASH and history LIST and that task's share (usage / cardinality) of each index ZSET.
  Records are realistic bus-path tasks, built as ``TaskRunner.new_record`` builds them:
  a small request (``{"name", "arguments"}``), default ttl/deadline/poll, then
  ``note_route`` (region), then ``completed`` as ``TaskRunner.finish`` writes it.
- **Latency** (client-side wall time of one awaited call, p50/p95/p99):
  ``create`` sequentially for the N tasks; ``get`` of random tasks with N in the store
  (working, then completed); ``transition`` to ``completed`` for the N tasks; ``list``
  of a page of 50 for the owner holding N tasks (first page, and a page from the middle
  through a cursor) and for an owner holding 100 while the store holds N + 100.
- **Create throughput** with 32 concurrent creators (coroutines in this one process,
  sharing the pool, as concurrent requests in one dispatcher do), N more tasks over 32
  owners, with the CPU this client and redis-server used meanwhile (which one is the limit).

Not measured: the dispatcher process. For a task whose work runs on the bus, a dispatcher
holds nothing per task - the record is in Redis, the call on the bus, and any dispatcher
that reads the reply writes the result; only a client currently waiting on
``tasks/result`` or the SSE stream holds a transient waiter queue.

Numbers are from one run on whatever machine runs this; on a shared, noisy box expect
run-to-run spread in the latencies (the memory figures are stable).
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import math
import os
import platform
import random
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine, Iterable
from typing import Any

import orjson
import redis.asyncio as aioredis

from edgefleet.dispatcher.tasks.model import COMPLETED, WORKING, TaskRecord
from edgefleet.dispatcher.tasks.runner import new_task_id
from edgefleet.dispatcher.tasks.store import TaskStore, now_ms
from edgefleet.shared.constants import RedisKeys

# The dispatcher's defaults (shared/settings.py): task_ttl_s, task_timeout_s, task_poll_interval_ms.
TTL_MS = 86_400_000
TIMEOUT_MS = 3_600_000
POLL_MS = 1000
TOOL = "docs.search"
REQUEST = {"arguments": {"query": "redis memory per key", "limit": 5}, "name": TOOL}
RESULT = {
    "content": [
        {
            "type": "text",
            "text": "Found 3 documents: 'Memory optimization' (redis.io), 'MEMORY USAGE' (redis.io), "
            "'Hash encodings and listpack thresholds' (redis.io).",
        }
    ],
    "isError": False,
}
REGION = "eu-west"
PAGE = 50


def make_record(owner: str) -> TaskRecord:
    """A bus-path task as ``TaskRunner.new_record`` + ``start_task`` create it."""
    now = now_ms()
    return TaskRecord(
        id=new_task_id(),
        owner=owner,
        tool=TOOL,
        status=WORKING,
        created_ms=now,
        updated_ms=now,
        ttl_ms=TTL_MS,
        poll_ms=POLL_MS,
        deadline_ms=now + min(TIMEOUT_MS, TTL_MS),
        path="bus",
        origin="requested",
        era="legacy",
        request=dict(REQUEST),
        message="The operation is now in progress.",
    )


def percentile(samples: list[float], p: float) -> float:
    """Nearest-rank percentile of ``samples`` (ms)."""
    ordered = sorted(samples)
    return ordered[max(1, math.ceil(p / 100 * len(ordered))) - 1]


def summary(samples_ms: list[float]) -> dict[str, float | int]:
    return {
        "n": len(samples_ms),
        "p50_ms": percentile(samples_ms, 50),
        "p95_ms": percentile(samples_ms, 95),
        "p99_ms": percentile(samples_ms, 99),
        "max_ms": max(samples_ms),
    }


async def timed(call: Callable[[], Awaitable[Any]]) -> float:
    started = time.perf_counter_ns()
    await call()
    return (time.perf_counter_ns() - started) / 1e6


async def used_memory(redis: aioredis.Redis) -> int:
    return int((await redis.info("memory"))["used_memory"])


async def redis_cpu_s(redis: aioredis.Redis) -> float:
    """CPU seconds the redis-server process has used (INFO cpu: works for an external one too)."""
    cpu = await redis.info("cpu")
    return float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"])


async def memory_usage(redis: aioredis.Redis, key: str) -> int:
    return int(await redis.memory_usage(key, samples=0) or 0)


async def per_task_cross_check(redis: aioredis.Redis, keys: RedisKeys, task_id: str, owner: str) -> dict[str, Any]:
    """MEMORY USAGE of the task's HASH and LIST plus its share of each index it is in."""
    parts: dict[str, float] = {
        "hash": await memory_usage(redis, keys.task(task_id)),
        "history": await memory_usage(redis, keys.task_history(task_id)),
    }
    indexes = [("owner_index", keys.tasks_of(owner)), ("fleet_index", keys.tasks_all)]
    if await redis.zscore(keys.task_deadlines, task_id) is not None:  # unfinished tasks only
        indexes.append(("deadlines", keys.task_deadlines))
    for name, index in indexes:
        parts[name] = await memory_usage(redis, index) / max(1, await redis.zcard(index))
    return {
        "parts_bytes": {k: round(v, 1) for k, v in parts.items()},
        "total_bytes": round(sum(parts.values()), 1),
        "hash_encoding": (await redis.object("encoding", keys.task(task_id))).decode(),
        "hash_fields": await redis.hlen(keys.task(task_id)),
        "hash_field_bytes": sum(len(k) + len(v) for k, v in (await redis.hgetall(keys.task(task_id))).items()),
    }


async def delete_prefix(redis: aioredis.Redis, prefix: str) -> int:
    deleted = 0
    batch: list[bytes] = []
    async for key in redis.scan_iter(match=f"{prefix}:*", count=1000):
        batch.append(key)
        if len(batch) >= 500:
            deleted += await redis.unlink(*batch)
            batch.clear()
    if batch:
        deleted += await redis.unlink(*batch)
    return deleted


async def gather_chunked(calls: Iterable[Callable[[], Awaitable[Any]]], width: int = 64) -> None:
    pending = list(calls)
    for i in range(0, len(pending), width):
        await asyncio.gather(*(call() for call in pending[i : i + width]))


async def concurrent_creates(store: TaskStore, total: int, workers: int) -> tuple[float, list[float]]:
    """``workers`` creators sharing ``total`` creates; wall seconds and per-call latencies."""
    remaining = iter(range(total))
    latencies: list[float] = []

    async def creator(w: int) -> None:
        owner = f"bench-concurrent-{w:02d}"
        for _ in remaining:
            record = make_record(owner)
            latencies.append(await timed(functools.partial(store.create, record)))

    started = time.perf_counter()
    await asyncio.gather(*(creator(w) for w in range(workers)))
    return time.perf_counter() - started, latencies


async def measure(redis_url: str, n: int, concurrency: int, samples: int, embedded: bool) -> dict[str, Any]:
    redis = aioredis.Redis(
        connection_pool=aioredis.BlockingConnectionPool.from_url(
            redis_url,
            max_connections=128,
            timeout=5.0,
            socket_connect_timeout=2.0,
            socket_timeout=5.0,
            health_check_interval=10,
        )
    )
    prefix = f"efbench-{uuid.uuid4().hex[:12]}"
    keys = RedisKeys(prefix)
    store = TaskStore(redis, keys)
    heavy, light = "bench-heavy", "bench-light"
    rng = random.Random(1)
    out: dict[str, Any] = {"tasks": n, "concurrency": concurrency, "prefix": prefix}
    try:
        server = await redis.info("server")
        mem_info = await redis.info("memory")
        out["redis"] = {
            "version": server["redis_version"],
            "allocator": mem_info.get("mem_allocator"),
            "embedded": embedded,
            "hash_max_listpack_value": next(iter((await redis.config_get("hash-max-*-value")).values()), None),
        }
        out["host"] = {"cpus": os.cpu_count(), "python": platform.python_version(), "machine": platform.machine()}

        # Warm-up on the same prefix (removed again below): open the pool's connections,
        # load the Lua scripts, so neither lands in the memory deltas.
        warm = [make_record("bench-warm-up") for _ in range(concurrency)]
        await asyncio.gather(*(store.create(r) for r in warm))
        await asyncio.gather(*(store.transition(r.id, COMPLETED, message="Completed.", result=RESULT) for r in warm))
        await store.list("bench-warm-up", limit=PAGE)
        await store.progress(warm[0].id, {"progress": 1})
        await delete_prefix(redis, prefix)

        # -- N working tasks of one owner: create latency and memory --------------------------
        before = await used_memory(redis)
        records = [make_record(heavy) for _ in range(n)]
        create_ms = [await timed(functools.partial(store.create, r)) for r in records]
        await gather_chunked(functools.partial(store.note_route, r.id, region=REGION, replica=None) for r in records)
        working_total = await used_memory(redis) - before
        sample = records[n // 2]
        working_check = await per_task_cross_check(redis, keys, sample.id, heavy)
        ids = [r.id for r in records]

        # -- an owner with 100, while the store holds N + 100 ----------------------------------
        light_records = [make_record(light) for _ in range(100)]
        for r in light_records:
            await store.create(r)

        get_working_ms = [await timed(functools.partial(store.get, i)) for i in rng.choices(ids, k=samples)]

        # -- complete all N (as TaskRunner.finish does for a bus reply) ------------------------
        before = await used_memory(redis)
        transition_ms: list[float] = []
        for task_id in ids:

            async def complete(task_id: str = task_id) -> None:
                outcome = await store.transition(task_id, COMPLETED, message="Completed.", result=RESULT, region=REGION)
                if outcome != "ok":
                    raise RuntimeError(f"transition of {task_id}: {outcome}")

            transition_ms.append(await timed(complete))
        completed_delta = await used_memory(redis) - before
        completed_check = await per_task_cross_check(redis, keys, sample.id, heavy)
        for r in light_records:
            await store.transition(r.id, COMPLETED, message="Completed.", result=RESULT, region=REGION)

        get_completed_ms = [await timed(functools.partial(store.get, i)) for i in rng.choices(ids, k=samples)]

        # -- list pages of 50 (completed records, ~200 B result each) -------------------------
        mid_cursor: str | None = None
        step = min(200, n // 2)
        for _ in range(n // 2 // step):  # the cursor of the page in the middle of the owner's tasks
            _, mid_cursor = await store.list(heavy, cursor=mid_cursor, limit=step)
        list_runs = max(50, samples // 10)
        list_heavy_ms = [await timed(lambda: store.list(heavy, limit=PAGE)) for _ in range(list_runs)]
        list_heavy_mid_ms = [
            await timed(lambda: store.list(heavy, cursor=mid_cursor, limit=PAGE)) for _ in range(list_runs)
        ]
        list_light_ms = [await timed(lambda: store.list(light, limit=PAGE)) for _ in range(list_runs)]
        page, _ = await store.list(light, limit=PAGE)
        if len(page) != PAGE:
            raise RuntimeError(f"light owner's page has {len(page)} tasks")

        # -- create throughput, concurrent creators (and who spent the CPU) ---------------------
        server_cpu, client_cpu = await redis_cpu_s(redis), time.process_time()
        wall_s, concurrent_ms = await concurrent_creates(store, n, concurrency)
        server_cpu, client_cpu = await redis_cpu_s(redis) - server_cpu, time.process_time() - client_cpu

        out["memory"] = {
            "working": {"used_memory_delta_per_task_bytes": round(working_total / n, 1), "cross_check": working_check},
            "completed": {
                "used_memory_delta_per_task_bytes": round((working_total + completed_delta) / n, 1),
                "cross_check": completed_check,
            },
            "request_json_bytes": len(orjson.dumps(REQUEST)),
            "result_json_bytes": len(orjson.dumps(RESULT)),
        }
        out["latency"] = {
            "create_sequential": summary(create_ms),
            "get_working": summary(get_working_ms),
            "transition_completed": summary(transition_ms),
            "get_completed": summary(get_completed_ms),
            f"list{PAGE}_owner_{n}_first_page": summary(list_heavy_ms),
            f"list{PAGE}_owner_{n}_mid_cursor": summary(list_heavy_mid_ms),
            f"list{PAGE}_owner_100_of_{n + 100}": summary(list_light_ms),
            f"create_{concurrency}_concurrent": summary(concurrent_ms),
        }
        out["throughput"] = {
            "sequential_creates_per_s": round(n / (sum(create_ms) / 1000), 1),
            "concurrent_creates_per_s": round(n / wall_s, 1),
            "concurrent_wall_s": round(wall_s, 3),
            "concurrent_redis_cpu_pct": round(100 * server_cpu / wall_s, 1),
            "concurrent_client_cpu_pct": round(100 * client_cpu / wall_s, 1),
        }
    finally:
        out["cleanup_deleted_keys"] = await delete_prefix(redis, prefix)
        out["cleanup_left_keys"] = len([k async for k in redis.scan_iter(match=f"{prefix}:*", count=1000)])
        await redis.aclose()
    return out


def render(out: dict[str, Any]) -> str:
    r, h, n = out["redis"], out["host"], out["tasks"]
    mem = out["memory"]
    lines = [
        f"edgefleet task store: {n:,} tasks, Redis {r['version']} ({r['allocator']} malloc, "
        f"{'embedded' if r['embedded'] else 'external'}; hash listpack/ziplist value limit {r['hash_max_listpack_value']} B), "
        f"{h['cpus']} CPUs, Python {h['python']}",
        "",
        f"Redis memory per task (request {mem['request_json_bytes']} B JSON, result {mem['result_json_bytes']} B JSON)",
        f"{'state':10} {'used_memory/N':>14} {'MEMORY USAGE sum':>17} {'hash':>6} {'history':>8} {'indexes':>8}  hash encoding",
    ]
    for state in ("working", "completed"):
        m = mem[state]
        parts = m["cross_check"]["parts_bytes"]
        indexes = sum(v for k, v in parts.items() if k not in ("hash", "history"))
        lines.append(
            f"{state:10} {m['used_memory_delta_per_task_bytes']:>12.0f} B {m['cross_check']['total_bytes']:>15.0f} B "
            f"{parts['hash']:>6.0f} {parts['history']:>8.0f} {indexes:>8.0f}  {m['cross_check']['hash_encoding']} "
            f"({m['cross_check']['hash_fields']} fields, {m['cross_check']['hash_field_bytes']} B of data)"
        )
    lines += ["", f"{'TaskStore call':34} {'n':>6} {'p50 ms':>8} {'p95 ms':>8} {'p99 ms':>8} {'max ms':>8}"]
    for name, s in out["latency"].items():
        lines.append(
            f"{name:34} {s['n']:>6} {s['p50_ms']:>8.3f} {s['p95_ms']:>8.3f} {s['p99_ms']:>8.3f} {s['max_ms']:>8.2f}"
        )
    t = out["throughput"]
    lines += [
        "",
        f"create throughput: {t['sequential_creates_per_s']:,.0f}/s sequential, "
        f"{t['concurrent_creates_per_s']:,.0f}/s with {out['concurrency']} concurrent creators (one process, one pool; "
        f"CPU during it: this client {t['concurrent_client_cpu_pct']:.0f} %, redis-server {t['concurrent_redis_cpu_pct']:.0f} % "
        "of one core)",
        "dispatcher process: nothing per task when the work runs on the bus (record in Redis, call on the bus); "
        "not measured",
        f"cleanup: {out['cleanup_deleted_keys']} keys unlinked under {out['prefix']}:*, {out['cleanup_left_keys']} left",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m edgefleet.dispatcher.devtools.bench_tasks", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--redis-url", help="measure this Redis (default: start an embedded redis-server)")
    parser.add_argument("--tasks", type=int, default=10_000, help="tasks in the store (default 10000)")
    parser.add_argument("--concurrency", type=int, default=32, help="concurrent creators (default 32)")
    parser.add_argument("--samples", type=int, default=2000, help="get calls measured per state (default 2000)")
    parser.add_argument("--json", action="store_true", help="print the results as JSON")
    args = parser.parse_args(argv)
    if args.tasks < 200:
        parser.error("--tasks must be at least 200")

    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, dict[str, Any]]], dict[str, Any]] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is a dependency
        runner = asyncio.run
    server = None
    url = args.redis_url
    if url is None:
        from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis

        server = EmbeddedRedis().start()
        url = server.url
    try:
        out = runner(measure(url, args.tasks, args.concurrency, args.samples, embedded=server is not None))
    finally:
        if server is not None:
            server.stop()
    print(orjson.dumps(out, option=orjson.OPT_INDENT_2).decode() if args.json else render(out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
