"""``edgefleet bench --fanout``: what running N sub-tasks through ``edgefleet.fanout``
costs on top of the work itself.

Each sub-task is ``echo.wait`` for 1 s, spread round-robin over echo agents in three
regions; a perfect fan-out takes 1 s whatever N is, so the overhead is the fan-out's wall
time (seen by the client) minus 1 s. Measured on the direct path and over each bus.
"""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import time
from contextlib import ExitStack

import httpx
from mcp import Client

from edgefleet.dispatcher.devtools.benchstack import wait_until
from edgefleet.dispatcher.devtools.embedded_kafka import EmbeddedKafka
from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis, free_port
from edgefleet.dispatcher.devtools.processes import die_with_parent, stop_all

REGIONS = ("eu-west", "us-east", "ap-southeast")


def _ready(base: str) -> bool:
    return httpx.get(base + "/readyz").status_code == 200


WORK_S = 1.0


async def _fanout_once(url: str, n: int) -> tuple[float, float, int]:
    calls = [{"tool": "echo.wait", "arguments": {"seconds": WORK_S}, "region": REGIONS[i % 3]} for i in range(n)]
    async with Client(url) as client:
        started = time.perf_counter()
        result = await client.call_tool("edgefleet.fanout", {"calls": calls})
        wall = time.perf_counter() - started
    summary = result.structured_content or {}
    slowest = max((r.get("duration_ms", 0) for r in summary.get("results", [])), default=0) / 1000
    return wall, slowest, int(summary.get("failed", n))


def run_fanout_bench(*, sizes: list[int], paths: list[str], rounds: int) -> int:
    print(
        f"edgefleet bench --fanout: sub-tasks of echo.wait({WORK_S:g} s) over 3 regions, {rounds} rounds each; "
        "overhead = wall time - 1 s of work\n"
    )
    print(f"{'path':8} {'subtasks':>8} {'wall s':>8} {'overhead ms':>12} {'slowest sub s':>14} {'failed':>6}")
    for path in paths:
        with ExitStack() as stack:
            redis = stack.enter_context(EmbeddedRedis())
            token = "bench-" + os.urandom(6).hex()
            env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
            env.update({"EDGEFLEET_FLEET_TOKEN": token, "PYTHONUNBUFFERED": "1"})
            port = free_port()
            d_env = {**env, "EDGEFLEET_REDIS_URL": redis.url, "EDGEFLEET_PORT": str(port), "EDGEFLEET_AUTH": "none"}
            if path != "direct":
                bus_url = redis.url if path == "redis" else stack.enter_context(EmbeddedKafka()).fast_url
                d_env.update({"EDGEFLEET_BUS_URL": bus_url, "EDGEFLEET_BUS_TOOLS": "echo.*"})
            procs: list[subprocess.Popen[bytes]] = []
            stack.callback(stop_all, procs)
            procs.append(
                subprocess.Popen(
                    [sys.executable, "-m", "edgefleet.dispatcher", "serve"],
                    env=d_env,
                    preexec_fn=die_with_parent,
                    stdout=subprocess.DEVNULL,
                    stderr=subprocess.DEVNULL,
                )
            )
            base = f"http://127.0.0.1:{port}"
            wait_until(functools.partial(_ready, base), 30, "dispatcher")
            a_env = {**env, "EDGEFLEET_DISPATCHER_URL": base, "EDGEFLEET_AGENT_BUS_MAX_INFLIGHT": str(max(sizes))}
            for region in REGIONS:
                procs.append(
                    subprocess.Popen(
                        [sys.executable, "-m", "edgefleet.agents.examples.echo", "--port", "0", "--region", region],
                        env=a_env,
                        preexec_fn=die_with_parent,
                        stdout=subprocess.DEVNULL,
                        stderr=subprocess.DEVNULL,
                    )
                )

            def ready(base: str = base, token: str = token, path: str = path) -> bool:
                agents = httpx.get(base + "/v1/agents", headers={"authorization": f"Bearer {token}"}).json()["agents"]
                replicas = [r for a in agents for r in a["replicas"]]
                return len(replicas) == 3 and all(
                    r["routable"] and (path == "direct" or r["load"].get("bus_ready")) for r in replicas
                )

            wait_until(ready, 60, "three echo agents")
            asyncio.run(_fanout_once(base + "/mcp", 3))  # one warm-up round (first calls, group joins)
            for n in sizes:
                walls, slowest, failed = [], [], 0
                for _ in range(rounds):
                    wall, slow, bad = asyncio.run(_fanout_once(base + "/mcp", n))
                    walls.append(wall)
                    slowest.append(slow)
                    failed += bad
                wall = sorted(walls)[len(walls) // 2]
                print(f"{path:8} {n:>8} {wall:>8.3f} {(wall - WORK_S) * 1000:>12.1f} {max(slowest):>14.3f} {failed:>6}")
    print("\n(median of the rounds; the 1 s of work is the same sleep in every sub-task)")
    return 0


__all__ = ["run_fanout_bench"]
