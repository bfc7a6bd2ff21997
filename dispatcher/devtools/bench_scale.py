"""Memory and scale figures of one dispatcher (README, Benchmarks):

    python -m edgefleet.dispatcher.devtools.bench_scale [--sessions 10000] [--streams 1000]
        [--replicas 10,500] [--json]

Same processes and feature set as ``edgefleet bench`` (``benchstack``), plus a plain MCP
server (``scale_server``) registered as a static agent ``scale`` at many URLs (one process
standing for every replica). Reported, with RSS from ``/proc/<pid>/status``:

- RSS idle (agent joined, nothing called), then after the per-call rounds;
- RSS with N open 2025-11-25 sessions (``initialize`` + ``notifications/initialized``, kept),
  at quarters of N, so the growth per session shows; Redis memory beside it;
- RSS with N concurrent SSE streams (``scale.hold`` with a progressToken: the progress
  notification opens each client's stream, the call stays open), at quarters of N;
- CPU per call (16 sessions, 2026 era) of ``echo.echo`` (an agent with one replica) and of
  ``scale.echo`` (an agent with all the other replicas) with each number of registered
  replicas: the catalog and the router must not grow with the fleet on the call path.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import subprocess
import sys
import time
from typing import Any

import httpx
import orjson
import redis

from edgefleet.dispatcher.devtools.benchstack import BenchStack, Variant
from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.devtools.loadclient import (
    LEGACY,
    MODERN,
    Session,
    Target,
    _Conn,
    drive,
    open_sessions,
    process_rss_bytes,
)
from edgefleet.dispatcher.devtools.processes import die_with_parent

MIB = 1024 * 1024


class _Stream(_Conn):
    """A connection whose call answers with a stream: ``first`` is set on its first bytes."""

    def __init__(self) -> None:
        super().__init__()
        self.first = asyncio.Event()

    def on_body(self, body: bytes) -> None:
        super().on_body(body)
        self.first.set()


def _quarters(total: int) -> list[int]:
    return sorted({max(1, total * q // 4) for q in (1, 2, 3, 4)})


async def _open_many_sessions(target: Target, total: int, rss: Any, redis_memory: Any) -> list[dict[str, Any]]:
    """``total`` 2025 sessions opened (and kept) over 32 connections; RSS at each quarter."""
    connections = await open_sessions(Target(target.url, target.tool, LEGACY, target.token), 32)
    points = [{"sessions": 0, "rss_mib": rss(), "redis_mib": redis_memory()}]
    opened = 0
    for mark in _quarters(total):

        async def opener(session: Session, count: int) -> None:
            for _ in range(count):
                if await session._initialize() is None:
                    raise RuntimeError("the dispatcher gave no Mcp-Session-Id")

        todo = mark - opened
        shares = [todo // len(connections) + (1 if i < todo % len(connections) else 0) for i in range(len(connections))]
        await asyncio.gather(*(opener(s, n) for s, n in zip(connections, shares, strict=True)))
        opened = mark
        await asyncio.sleep(0.5)
        points.append({"sessions": opened, "rss_mib": rss(), "redis_mib": redis_memory()})
    for session in connections:
        session.close()
    return points


async def _open_streams(url: str, token: str, total: int, rss: Any) -> list[dict[str, Any]]:
    """``total`` concurrent ``scale.hold`` calls, each answered as an SSE stream; RSS at each quarter."""
    loop = asyncio.get_running_loop()
    host = url.split("//", 1)[1].split("/", 1)[0]
    conns: list[_Stream] = []
    points = [{"streams": 0, "rss_mib": rss()}]
    try:
        for mark in _quarters(total):
            batch: list[_Stream] = []
            for i in range(len(conns), mark):
                _, conn = await loop.create_connection(_Stream, "127.0.0.1", int(host.rsplit(":", 1)[1]))
                body = orjson.dumps(
                    {
                        "jsonrpc": "2.0",
                        "id": i,
                        "method": "tools/call",
                        "params": {
                            "name": "scale.hold",
                            "arguments": {"seconds": 300},
                            "_meta": {
                                "progressToken": i,
                                "io.modelcontextprotocol/protocolVersion": MODERN,
                                "io.modelcontextprotocol/clientCapabilities": {},
                            },
                        },
                    }
                )
                head = (
                    f"POST /mcp HTTP/1.1\r\nhost: {host}\r\ncontent-length: {len(body)}\r\n"
                    "content-type: application/json\r\naccept: application/json, text/event-stream\r\n"
                    f"mcp-protocol-version: {MODERN}\r\nmcp-method: tools/call\r\nmcp-name: scale.hold\r\n"
                    f"authorization: Bearer {token}\r\n\r\n"
                )
                assert conn.transport is not None
                conn.transport.write(head.encode() + body)
                batch.append(conn)
            await asyncio.wait_for(asyncio.gather(*(c.first.wait() for c in batch)), 120)
            conns.extend(batch)
            await asyncio.sleep(0.5)
            points.append({"streams": len(conns), "rss_mib": rss()})
    finally:
        for conn in conns:
            conn.close()
    return points


async def _cpu_per_call(target: Target, seconds: float, rounds: int, pid: int) -> float:
    cpu = calls = 0.0
    for _ in range(rounds):
        sessions = await open_sessions(target, 16)
        try:
            result = await drive(sessions, seconds, {"dispatcher": pid})
        finally:
            for session in sessions:
                session.close()
        cpu += result.cpu_s["dispatcher"]
        calls += result.calls
    return round(cpu / (calls or 1) * 1000, 4)


def _register(stack: BenchStack, server: str, first: int, last: int) -> None:
    headers = {"authorization": f"Bearer {stack.fleet_token}"}
    base = stack.dispatchers[0].url
    with httpx.Client(timeout=30, headers=headers) as http:
        for n in range(first, last):
            resp = http.post(
                base + "/v1/agents",
                json={"name": "scale", "url": f"{server}/r/{n}/mcp", "region": "eu-west", "static": True},
            )
            if resp.status_code >= 300:
                raise RuntimeError(f"bench_scale: registering replica {n}: HTTP {resp.status_code} {resp.text[:300]}")
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            agents = http.get(base + "/v1/agents").json()["agents"]
            routable = sum(r["routable"] for a in agents if a["name"] == "scale" for r in a["replicas"])
            if routable >= last:
                return
            time.sleep(0.5)
    raise RuntimeError(f"bench_scale: {last} scale replicas did not all become routable")


def run(sessions: int, streams: int, replica_counts: list[int], seconds: float, rounds: int) -> dict[str, Any]:
    variant = Variant(
        "dispatcher",
        {"EDGEFLEET_MAX_CONNECTIONS_PER_REPLICA": str(max(256, streams + 64)), "EDGEFLEET_LOG_LEVEL": "info"},
    )
    result: dict[str, Any] = {"settings": {"sessions": sessions, "streams": streams, "replicas": replica_counts}}
    with BenchStack([variant]) as stack:
        pid = stack.dispatchers[0].proc.pid
        mcp = stack.dispatchers[0].url + "/mcp"
        store = redis.Redis.from_url(stack.redis.url)

        def rss() -> float:
            return round(process_rss_bytes(pid) / MIB, 1)

        def redis_memory() -> float:
            return round(int(store.info("memory")["used_memory"]) / MIB, 2)

        port = free_port()
        server = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.dispatcher.devtools.scale_server", "--port", str(port)],
            preexec_fn=die_with_parent,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stack.procs.append(server)
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or server.poll() is not None:
                    raise RuntimeError("bench_scale: the scale server did not start") from None
                time.sleep(0.1)
        time.sleep(2.0)
        result["rss_idle_mib"] = rss()
        registered = 1  # the echo agent's replica
        per_call: list[dict[str, Any]] = []
        for count in sorted(replica_counts):
            _register(stack, f"http://127.0.0.1:{port}", registered - 1, count - 1)
            registered = count
            time.sleep(1.0)
            echo = asyncio.run(_cpu_per_call(Target(mcp, "echo.echo", MODERN, stack.api_key), seconds, rounds, pid))
            scale = asyncio.run(_cpu_per_call(Target(mcp, "scale.echo", MODERN, stack.api_key), seconds, rounds, pid))
            per_call.append(
                {"replicas": count, "echo_cpu_ms_per_call": echo, "scale_cpu_ms_per_call": scale, "rss_mib": rss()}
            )
        result["per_call_by_replicas"] = per_call
        result["sessions"] = asyncio.run(
            _open_many_sessions(Target(mcp, "echo.echo", LEGACY, stack.api_key), sessions, rss, redis_memory)
        )
        result["streams"] = asyncio.run(_open_streams(mcp, stack.api_key, streams, rss))
        store.close()
    for kind in ("sessions", "streams"):
        first, last = result[kind][0], result[kind][-1]
        if last[kind]:
            result[f"rss_per_{kind[:-1]}_kib"] = round((last["rss_mib"] - first["rss_mib"]) * 1024 / last[kind], 2)
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sessions", type=int, default=10_000)
    parser.add_argument("--streams", type=int, default=1_000)
    parser.add_argument("--replicas", default="10,500", help="registered replicas to measure the call path with")
    parser.add_argument("--seconds", type=float, default=3.0, help="per round of per-call measurement")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    counts = [int(c) for c in args.replicas.split(",") if c.strip()]
    if any(c < 2 for c in counts):
        parser.error("--replicas: at least 2 (the echo agent's replica and one of scale)")
    result = run(args.sessions, args.streams, counts, args.seconds, args.rounds)
    if args.json:
        print(orjson.dumps(result, option=orjson.OPT_INDENT_2).decode())
        return 0
    print(f"dispatcher RSS idle: {result['rss_idle_mib']} MiB")
    for row in result["per_call_by_replicas"]:
        print(
            f"{row['replicas']:>5} registered replicas: CPU per call echo.echo {row['echo_cpu_ms_per_call']:.3f} ms, "
            f"scale.echo ({row['replicas'] - 1} replicas) {row['scale_cpu_ms_per_call']:.3f} ms; RSS {row['rss_mib']} MiB"
        )
    for point in result["sessions"]:
        print(f"{point['sessions']:>6} open 2025 sessions: RSS {point['rss_mib']} MiB, Redis {point['redis_mib']} MiB")
    print(f"  growth: {result.get('rss_per_session_kib')} KiB of dispatcher RSS per session")
    for point in result["streams"]:
        print(f"{point['streams']:>6} concurrent SSE streams: RSS {point['rss_mib']} MiB")
    print(f"  growth: {result.get('rss_per_stream_kib')} KiB of dispatcher RSS per stream")
    return 0


if __name__ == "__main__":
    sys.exit(main())
