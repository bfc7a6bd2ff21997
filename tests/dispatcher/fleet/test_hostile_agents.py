"""Agents that attack the dispatcher through its control plane, with real processes: a
redirect to a forbidden address is never followed, and huge, endless, slow or endlessly
paged answers to discovery, warm-up and probes are refused with clear registration errors
while the dispatcher's memory stays bounded and it keeps serving other agents' calls.

The attacker is tests/support/hostile_agent.py (a raw asyncio server, its behaviour chosen
by the path of the URL it registers with)."""

from __future__ import annotations

import asyncio
import re
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import orjson
import pytest

from tests.support.fleet import Fleet, Proc

pytestmark = pytest.mark.integration

MiB = 1024 * 1024
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@dataclass
class Hostile:
    fleet: Fleet
    dispatcher: Proc
    base: str  # http://127.0.0.1:PORT

    def counts(self) -> dict[str, int]:
        return httpx.get(self.base + "/_counts", timeout=5).json()  # type: ignore[no-any-return]

    def register(self, name: str, mode: str, *, static: bool = False) -> httpx.Response:
        body = {"name": name, "region": "eu-west", "url": f"{self.base}/{mode}/mcp", "static": static}
        return httpx.post(self.fleet.url + "/v1/agents", json=body, headers=self.fleet.auth(), timeout=60)


@pytest.fixture
def hostile(redis_url: str, redis_prefix: str) -> Iterator[Hostile]:
    fleet = Fleet(redis_url, redis_prefix)
    try:
        # Agents may live on 127.0.0.1 only: the redirect target (127.0.0.2) is forbidden.
        fleet.start_dispatcher(agent_networks="127.0.0.1/32")
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        proc = Proc([sys.executable, "-m", "tests.support.hostile_agent"], fleet.base_env, "hostile")
        fleet.agents.append(proc)
        ready = re.compile(r"HOSTILE_READY port=(\d+)")
        fleet.wait_for(lambda: ready.search(proc.output()) is not None, "the hostile agent", proc=proc)
        match = ready.search(proc.output())
        assert match is not None
        yield Hostile(fleet, fleet.dispatchers[0][1], f"http://127.0.0.1:{match.group(1)}")
    finally:
        fleet.stop()


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS (now) and VmHWM (the peak so far) of a process, in KiB."""
    fields: dict[str, int] = {}
    with open(f"/proc/{pid}/status") as status:
        for line in status:
            name, _, value = line.partition(":")
            if name in ("VmRSS", "VmHWM"):
                fields[name] = int(value.split()[0])
    return fields


def error_of(resp: httpx.Response) -> dict[str, Any]:
    return resp.json()["error"]  # type: ignore[no-any-return]


def test_a_redirect_to_a_forbidden_address_is_never_followed(hostile: Hostile) -> None:
    resp = hostile.register("redirecting", "redirect")
    assert resp.status_code == 424, resp.text
    error = error_of(resp)
    assert error["code"] == "agent_unreachable"
    assert "HTTP 307" in error["message"] and "never follows redirects" in error["message"]
    counts = hostile.counts()
    assert counts.get("requests:redirect", 0) >= 1, "the agent itself was asked"
    assert counts.get("forbidden_connections", 0) == 0 and counts.get("forbidden_requests", 0) == 0, counts
    assert not any(a["name"] == "redirecting" for a in hostile.fleet.agents_view())


async def echo_loop(url: str, stop: asyncio.Event, latencies: list[float], failures: list[str]) -> None:
    """Another agent's calls, one after another, while the attack goes on."""
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": "echo.echo", "arguments": {"text": "hi"}, "_meta": META},
    }
    headers = {
        "content-type": "application/json",
        "accept": "application/json, text/event-stream",
        "mcp-protocol-version": "2026-07-28",
        "mcp-method": "tools/call",
        "mcp-name": "echo.echo",
    }
    async with httpx.AsyncClient(timeout=30) as http:
        while not stop.is_set():
            started = time.monotonic()
            try:
                resp = await http.post(url, content=orjson.dumps(body), headers=headers)
                if resp.status_code != 200 or b'"isError":false' not in resp.content:
                    failures.append(resp.text[:200])
            except httpx.HTTPError as exc:
                failures.append(repr(exc))
            latencies.append(time.monotonic() - started)
            await asyncio.sleep(0.02)


EXPECTED = {
    "huge": (422, "agent_answer_too_large"),  # 400 MB announced by Content-Length
    "chunked": (422, "agent_answer_too_large"),  # a JSON body that never ends
    "sse": (422, "agent_answer_too_large"),  # notifications that never end
    "pages": (422, "agent_answer_too_large"),  # ~600 kB tools/list pages, a next cursor forever
    "slow": (424, "agent_unreachable"),  # a head a byte at a time
    "slowbody": (424, "agent_unreachable"),  # a body a byte at a time
    "redirect": (424, "agent_unreachable"),
}


async def test_hostile_answers_on_every_control_plane_request_leave_memory_bounded_and_calls_served(
    hostile: Hostile,
) -> None:
    fleet, pid = hostile.fleet, hostile.dispatcher.popen.pid
    stop, latencies, failures = asyncio.Event(), [], []
    caller = asyncio.create_task(echo_loop(fleet.mcp_url, stop, latencies, failures))
    await asyncio.sleep(1.0)
    before = memory_kib(pid)
    started = time.monotonic()
    # Registered fine, then every later request (warm-up, probes) gets a 400 MB answer: the
    # dispatcher keeps trying to warm it, each time reading at most the limit.
    late = await asyncio.to_thread(hostile.register, "late", "late", static=True)
    assert late.status_code == 201, late.text
    # Three rounds of every attack, each round's registrations at once.
    for round_ in range(3):
        names = [f"h{round_}{mode}" for mode in EXPECTED]
        answers = await asyncio.gather(
            *(asyncio.to_thread(hostile.register, name, mode) for name, mode in zip(names, EXPECTED, strict=True))
        )
        for mode, resp in zip(EXPECTED, answers, strict=True):
            status, code = EXPECTED[mode]
            assert (resp.status_code, error_of(resp)["code"]) == (status, code), (mode, resp.text)
    attacked_s = time.monotonic() - started
    await asyncio.sleep(3.0)  # the late one's warm-up retries go on meanwhile
    stop.set()
    await caller
    after = memory_kib(pid)
    counts = await asyncio.to_thread(hostile.counts)
    # Every attack reached the agent; the late one was tried again and again.
    assert all(counts.get(f"requests:{mode}", 0) >= 3 for mode in EXPECTED), counts
    assert counts.get("requests:late", 0) >= 8, counts
    assert counts.get("forbidden_requests", 0) == 0
    grown_mib = (after["VmHWM"] - before["VmRSS"]) / 1024
    print(  # the numbers the README quotes (pytest -s)
        f"dispatcher RSS {before['VmRSS'] / 1024:.0f} MiB before, {after['VmRSS'] / 1024:.0f} MiB after, "
        f"peak {after['VmHWM'] / 1024:.0f} MiB (+{grown_mib:.0f} MiB) over {attacked_s + 3:.0f} s of attacks "
        f"({sum(counts.get(f'requests:{m}', 0) for m in [*EXPECTED, 'late'])} hostile answers); "
        f"{len(latencies)} echo calls meanwhile, {len(failures)} failed, max {max(latencies):.3f} s"
    )
    # One answer is read up to 4 MiB (EDGEFLEET_MAX_AGENT_ANSWER_BYTES) at a time per request;
    # the 400 MB ones were never read whole (the old client peaked above 1 GB here).
    assert grown_mib < 100, (before, after)
    assert not failures, failures[:3]
    assert len(latencies) > 50 and max(latencies) < 2.0, max(latencies)
    # The late agent is listed (static) but never warm: nobody is routed to it.
    late_view = next(a for a in fleet.agents_view() if a["name"] == "late")
    assert not late_view["replicas"][0]["routable"]
