"""What subscriptions cost through the dispatcher: the latency an update gains on its way,
and the dispatcher's memory per open stream (docs/design-mcp-surface.md, D11, "Measured").

    .venv/bin/python -m tests.support.bench_subscriptions [--updates 200] [--streams 1000]

Real processes on 127.0.0.1: an embedded Redis, a dispatcher, and the agents of the
subscription tests (``watched_server.py``: one of both eras, one 2025-only).

- **Latency.** A client listens at the agent itself and, at the same time, through the
  dispatcher (``/mcp`` listen, mount relay; for the 2025 agent a session's GET stream
  directly and through ``/mcp``). Each round, the agent is made to announce one update
  (its ``touch`` tool, called directly); every stream's reader stamps the arrival. Reported:
  the direct arrival after the call was sent, and what each way through the dispatcher adds
  to the direct arrival of the same update (p50 / p90 / p99 over ``--updates`` rounds).
- **Memory.** The dispatcher's VmRSS before and after opening ``--streams`` listen streams
  (raw HTTP/1.1 connections kept open), each in a fresh dispatcher after 50 warm-up streams:
  lists only, one resource (all sharing one upstream watch), and relayed mount listens (a
  quarter as many: each holds its own upstream connection).

Numbers are from one run on whatever machine runs this; on a loaded box expect spread in
the latencies (the memory figures are stable).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from contextlib import AsyncExitStack
from typing import Any

import httpx
import orjson

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis

from tests.support.fleet import Fleet, plain_server
from tests.support.streams import META, Stream, listen_request, open_session, open_stream

TOUCH = "touch"


def rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith("VmRSS:"))


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)
    at = lambda q: ordered[min(len(ordered) - 1, int(len(ordered) * q))]  # noqa: E731
    return f"p50 {statistics.median(ordered):6.2f} ms  p90 {at(0.9):6.2f}  p99 {at(0.99):6.2f}"


async def touch(client: httpx.AsyncClient, url: str, session: dict[str, str] | None) -> None:
    body: dict[str, Any] = {"jsonrpc": "2.0", "id": 1, "method": "tools/call"}
    body["params"] = {"name": TOUCH, "arguments": {"uri": "note://a"}}
    if session is None:
        body["params"]["_meta"] = META
        headers = {
            "accept": "application/json, text/event-stream",
            "mcp-protocol-version": "2026-07-28",
            "mcp-method": "tools/call",
            "mcp-name": TOUCH,
        }
    else:
        headers = session
    answer = await client.post(url, json=body, headers=headers)
    answer.raise_for_status()


async def latency(what: str, streams: list[Stream], labels: list[str], url: str, updates: int, legacy: bool) -> None:
    stamped: list[asyncio.Queue[float]] = [asyncio.Queue() for _ in streams]

    async def stamp(stream: Stream, out: asyncio.Queue[float]) -> None:
        while True:
            await stream.messages.get()
            out.put_nowait(time.perf_counter())

    readers = [asyncio.create_task(stamp(s, q)) for s, q in zip(streams, stamped, strict=True)]
    direct: list[float] = []
    added: list[list[float]] = [[] for _ in labels]
    session = open_session(url) if legacy else None
    async with httpx.AsyncClient(timeout=30) as client:
        for _ in range(updates):
            sent = time.perf_counter()
            await touch(client, url, session)
            arrived = [await asyncio.wait_for(q.get(), 10) for q in stamped]
            direct.append((arrived[0] - sent) * 1000)
            for i in range(len(labels)):
                added[i].append((arrived[i + 1] - arrived[0]) * 1000)
    for reader in readers:
        reader.cancel()
    print(f"{what}: update announced -> read at the agent directly: {percentiles(direct)}")
    for label, samples in zip(labels, added, strict=True):
        print(f"{what}: {label}, added: {percentiles(samples)}")


def get_headers(session: dict[str, str]) -> dict[str, str]:
    return {k: v for k, v in session.items() if k != "accept"} | {"accept": "text/event-stream"}


async def measure_latency(redis_url: str, updates: int) -> None:
    fleet = Fleet(redis_url, f"bench-subs-{uuid.uuid4().hex[:6]}")
    both, both_url = plain_server(script="watched_server.py")
    legacy, legacy_url = plain_server("--legacy-only", script="watched_server.py")
    try:
        fleet.start_dispatcher(log_level="warning")
        fleet.add_server("notes", both_url)
        fleet.add_server("oldnotes", legacy_url)
        async with AsyncExitStack() as stack:
            streams = [
                await stack.enter_async_context(
                    open_stream("POST", url, *listen_request(i, resourceSubscriptions=[uri]))
                )
                for i, (url, uri) in enumerate(
                    [
                        (both_url, "note://a"),
                        (fleet.mcp_url, "notes+note://a"),
                        (fleet.url + "/mcp/agents/notes", "note://a"),
                    ]
                )
            ]
            for stream in streams:
                await stream.next()
            labels = ["/mcp listen (one shared upstream listen)", "mount listen (relayed)"]
            await latency("2026 agent", streams, labels, both_url, updates, legacy=False)
        async with AsyncExitStack() as stack:
            direct, through = open_session(legacy_url), open_session(fleet.mcp_url)
            streams = [
                await stack.enter_async_context(open_stream("GET", legacy_url, get_headers(direct))),
                await stack.enter_async_context(open_stream("GET", fleet.mcp_url, get_headers(through))),
            ]
            for url, session, uri in ((legacy_url, direct, "note://a"), (fleet.mcp_url, through, "oldnotes+note://a")):
                body = {"jsonrpc": "2.0", "id": 2, "method": "resources/subscribe", "params": {"uri": uri}}
                httpx.post(url, json=body, headers=session, timeout=10).raise_for_status()
            labels = ["/mcp 2025 GET stream (one shared session subscription)"]
            await latency("2025 agent", streams, labels, legacy_url, updates, legacy=True)
    finally:
        both.kill()
        legacy.kill()
        fleet.stop()


async def open_listens(
    fleet: Fleet, path: str, notifications: dict[str, Any], count: int
) -> list[asyncio.StreamWriter]:
    port = int(fleet.url.rsplit(":", 1)[1])
    writers = []
    for i in range(count):
        body = orjson.dumps(
            {
                "jsonrpc": "2.0",
                "id": i,
                "method": "subscriptions/listen",
                "params": {"_meta": META, "notifications": notifications},
            }
        )
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        writer.write(
            f"POST {path} HTTP/1.1\r\nhost: 127.0.0.1\r\ncontent-type: application/json\r\n"
            "accept: application/json, text/event-stream\r\nmcp-protocol-version: 2026-07-28\r\n"
            f"mcp-method: subscriptions/listen\r\ncontent-length: {len(body)}\r\n\r\n".encode()
            + body
        )
        seen = b""
        while b"acknowledged" not in seen:
            chunk = await reader.read(4096)
            if not chunk:
                raise RuntimeError(f"listen {i} refused: {seen[:300]!r}")
            seen += chunk
        writers.append(writer)
    return writers


async def measure_memory(redis_url: str, count: int) -> None:
    cases = (
        ("/mcp listen, list changes only", "/mcp", {"toolsListChanged": True}, count),
        (
            "/mcp listen, one resource (all share one upstream watch)",
            "/mcp",
            {"resourceSubscriptions": ["notes+note://a"]},
            count,
        ),
        (
            "mount listen relayed (an upstream stream each)",
            "/mcp/agents/notes",
            {"resourceSubscriptions": ["note://a"]},
            count // 4,
        ),
    )
    for label, path, notifications, n in cases:
        fleet = Fleet(redis_url, f"bench-subs-{uuid.uuid4().hex[:6]}")
        agent, agent_url = plain_server(script="watched_server.py")
        try:
            fleet.start_dispatcher(log_level="warning", max_streams_per_identity=max(n + 100, 256))
            fleet.add_server("notes", agent_url)
            pid = fleet.dispatchers[0][1].popen.pid
            warm = await open_listens(fleet, path, notifications, 50)
            before = rss_kib(pid)
            held = await open_listens(fleet, path, notifications, n)
            grown = rss_kib(pid) - before
            print(f"{label}: {n} streams, dispatcher RSS +{grown} KiB = {grown / n:.1f} KiB per stream")
            for writer in warm + held:
                writer.close()
        finally:
            agent.kill()
            fleet.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--updates", type=int, default=200, help="updates timed per case (default 200)")
    parser.add_argument("--streams", type=int, default=1000, help="streams opened for the memory figure (default 1000)")
    args = parser.parse_args()
    redis = EmbeddedRedis().start()
    try:
        await measure_latency(redis.url, args.updates)
        await measure_memory(redis.url, args.streams)
    finally:
        redis.stop()


if __name__ == "__main__":
    asyncio.run(main())
