"""A replica that stops answering (SIGSTOP: its kernel still accepts connections and takes
requests, nothing reads them) with real processes: calls already sent to it leave within
EDGEFLEET_ATTEMPT_TIMEOUT_S instead of the 300 s deadline (idempotent ones to another
replica, the others with outcome_unknown), and its breaker ejects it."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from collections.abc import Iterator
from typing import Any

import httpx
import orjson
import pytest

from tests.support.calls import tools_call
from tests.support.fleet import Fleet, Proc

pytestmark = pytest.mark.integration

AGENT = "edgefleet.agents.examples.echo"
ATTEMPT_TIMEOUT_S = 1.0


@pytest.fixture
def two_regions(redis_url: str, redis_prefix: str) -> Iterator[tuple[Fleet, Proc, Proc]]:
    fleet = Fleet(redis_url, redis_prefix, region="eu-west", heartbeat_ttl_s=60)  # a stopped agent stays listed
    try:
        fleet.start_dispatcher(attempt_timeout_s=ATTEMPT_TIMEOUT_S, eject_base_s=30)
        near = fleet.start_agent(AGENT, "eu-west")
        far = fleet.start_agent(AGENT, "us-east")
        yield fleet, near, far
    finally:
        for proc in fleet.agents:
            if proc.popen.poll() is None:
                os.kill(proc.popen.pid, signal.SIGCONT)
        fleet.stop()


async def call(
    http: httpx.AsyncClient, url: str, tool: str, arguments: dict[str, Any]
) -> tuple[float, dict[str, Any], str]:
    """(seconds, the JSON-RPC answer, Edgefleet-Route) of one call that prefers eu-west."""
    body, headers = tools_call(tool, arguments, headers={"x-edge-region": "eu-west"})
    started = time.monotonic()
    resp = await http.post(url, content=body, headers=headers)
    raw = resp.content
    if b"data:" in raw:
        raw = next(line[5:] for line in raw.splitlines() if line.startswith(b"data:") and b'"id"' in line)
    return time.monotonic() - started, orjson.loads(raw), resp.headers.get("edgefleet-route", "")


def near_state(fleet: Fleet) -> dict[str, Any]:
    (echo,) = fleet.agents_view()
    return next(r for r in echo["replicas"] if r["region"] == "eu-west")


async def test_calls_sent_to_a_stopped_replica_leave_it_within_the_attempt_timeout(
    two_regions: tuple[Fleet, Proc, Proc],
) -> None:
    fleet, near, _ = two_regions
    async with httpx.AsyncClient(timeout=60) as http:
        # Served nearby while it is alive (and the dispatcher has seen it send 100 Continue).
        for _ in range(3):
            _, answer, route = await call(http, fleet.mcp_url, "echo.echo", {"text": "hi"})
            assert "region=eu-west" in route and answer["result"]["isError"] is False
        os.kill(near.popen.pid, signal.SIGSTOP)
        stopped_at = time.monotonic()
        results = await asyncio.gather(
            *(call(http, fleet.mcp_url, "echo.echo", {"text": f"e{i}"}) for i in range(8)),
            *(call(http, fleet.mcp_url, "echo.wait", {"seconds": 0.05}) for _ in range(4)),
        )
        echoes, waits = results[:8], results[8:]
        # Idempotent: every one answered, by the far region, soon after the attempt timeout.
        for seconds, answer, route in echoes:
            assert answer["result"]["isError"] is False, answer
            assert "region=us-east" in route and seconds < ATTEMPT_TIMEOUT_S + 3, (seconds, route)
        assert any("attempt=2" in route for _, _, route in echoes), "some were first sent to the stopped replica"
        # Not idempotent: those sent to the stopped replica say so promptly; none waited for the deadline.
        unknown = [(s, a) for s, a, _ in waits if "error" in a]
        assert unknown, "the non-idempotent calls went to the stopped replica first"
        for seconds, answer in unknown:
            assert answer["error"]["code"] == -31004, answer
            assert "did not start reading the call" in answer["error"]["message"]
            assert seconds < ATTEMPT_TIMEOUT_S + 3, seconds
        # Its breaker ejects it (calls and probes both failed); later calls go straight to us-east.
        fleet.wait_for(
            lambda: near_state(fleet)["breaker"]["state"] == "open", "the stopped replica ejected", timeout=10
        )
        ejected_after = time.monotonic() - stopped_at
        seconds, answer, route = await call(http, fleet.mcp_url, "echo.echo", {"text": "after"})
        assert "region=us-east" in route and "attempt=1" in route and seconds < 1.0, (seconds, route)
        print(  # the numbers the README quotes (pytest -s)
            f"stopped replica: idempotent calls answered in max {max(s for s, _, _ in echoes):.2f} s, "
            f"outcome_unknown in max {max(s for s, _ in unknown):.2f} s, ejected after {ejected_after:.2f} s"
        )
        # Resumed, it is trusted again after its ejection time (half-open trial by a probe).
        os.kill(near.popen.pid, signal.SIGCONT)
        assert near_state(fleet)["breaker"]["state"] == "open"
