"""Graceful drain: a rolling restart of an agent's replicas (SIGTERM, as Kubernetes and
compose send it) under continuous load loses no call - not even non-idempotent ones that
are running when their replica is told to stop."""

from __future__ import annotations

import asyncio
import signal
import time

import aiohttp
import pytest

from tests.support.calls import call
from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration


async def test_rolling_restart_of_agents_loses_no_call(fleet: Fleet) -> None:
    old = [fleet.start_agent("edgefleet.agents.examples.echo", "eu-west") for _ in range(2)]
    outcomes: list[dict] = []
    stop = asyncio.Event()

    async def client(worker: int) -> None:
        i = 0
        async with aiohttp.ClientSession() as session:
            while not stop.is_set():
                i += 1
                # echo.wait is NOT idempotent: a call cut off by a restart would be an error.
                answer, _, _ = await call(session, fleet.mcp_url, worker * 100_000 + i, "echo.wait", {"seconds": 0.4})
                outcomes.append(answer)

    workers = [asyncio.create_task(client(w)) for w in range(6)]
    await asyncio.sleep(1.0)
    for replica in old:  # one at a time, like a Deployment with maxUnavailable 0, maxSurge 1
        await asyncio.to_thread(fleet.start_agent, "edgefleet.agents.examples.echo", "eu-west")
        replica.popen.send_signal(signal.SIGTERM)
        started = time.monotonic()
        await asyncio.to_thread(replica.popen.wait, 40)
        assert replica.popen.returncode == 0, replica.output()[-2000:]
        assert time.monotonic() - started < 30
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)
    stop.set()
    await asyncio.gather(*workers)
    failed = [a for a in outcomes if "error" in a or a["result"].get("isError")]
    assert len(outcomes) > 40
    assert failed == [], failed[:3]


async def test_a_dispatcher_told_to_stop_finishes_the_calls_it_has(fleet: Fleet) -> None:
    fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
    dispatcher = fleet.dispatchers[0][1]
    async with aiohttp.ClientSession() as session:
        running = asyncio.create_task(call(session, fleet.mcp_url, 1, "echo.wait", {"seconds": 2.0}))
        await asyncio.sleep(0.7)
        dispatcher.popen.send_signal(signal.SIGTERM)
        answer, _, _ = await running
    assert "error" not in answer and not answer["result"]["isError"]
    await asyncio.to_thread(dispatcher.popen.wait, 40)
    # uvicorn re-raises the signal after its graceful shutdown (exit "by SIGTERM", as an
    # orchestrator expects); the log shows the shutdown completed after the call.
    assert dispatcher.popen.returncode in (0, -signal.SIGTERM), dispatcher.output()[-2000:]
    log = dispatcher.output()
    assert log.index("call echo.wait") < log.index("Application shutdown complete")
