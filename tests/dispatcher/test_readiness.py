"""What /readyz means (issue 16): ready once the catalog holds the fleet the registry knows,
also after a restart longer than the agents' leases (78 calls got "Unknown tool" while
/readyz said 200); never waiting for an agent that does not come back longer than
EDGEFLEET_READY_WAIT_S; and, once ready, still ready while Redis is away (the direct path
serves; a load balancer must not drop every dispatcher at once). Real processes."""

from __future__ import annotations

import time
from typing import Any

import httpx
import pytest

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis

from tests.support.calls import tools_call
from tests.support.fleet import Fleet, Proc

pytestmark = pytest.mark.integration


def _call(url: str, tool: str, arguments: dict[str, Any]) -> dict[str, Any]:
    body, headers = tools_call(tool, arguments)
    return dict(httpx.post(url + "/mcp", content=body, headers=headers, timeout=30).json())


def _restart(fleet: Fleet, **settings: Any) -> tuple[str, float]:
    """Kill the dispatcher, wait past the agents' leases, start it again on its port;
    returns its URL and how long it took to say ready."""
    url, proc = fleet.dispatchers.pop(0)
    proc.kill9()
    time.sleep(fleet.heartbeat_ttl_s + 1.5)  # every lease has lapsed: the registry is empty
    started = time.monotonic()
    fleet.start_dispatcher(port=int(url.rsplit(":", 1)[1]), **settings)  # returns once /readyz says 200
    return url, time.monotonic() - started


def test_after_a_restart_longer_than_the_leases_ready_means_the_tools_are_back(
    redis_url: str, redis_prefix: str
) -> None:
    fleet = Fleet(redis_url, redis_prefix, heartbeat_ttl_s=2.0)
    try:
        fleet.start_dispatcher()
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        fleet.start_agent("edgefleet.agents.examples.text", "us-east")
        url, _ = _restart(fleet)
        # The first call after /readyz said 200 finds every tool (it was "Unknown tool").
        assert _call(url, "echo.echo", {"text": "back"})["result"]["content"][0]["text"] == "back"
        assert "result" in _call(url, "text.stats", {"text": "one two"})
        ready = httpx.get(url + "/readyz", timeout=5).json()
        assert ready["status"] == "ready" and ready["registry"] == "ok" and ready["tools"] > 5
        assert "catalog loaded in" in fleet.dispatchers[0][1].output()
    finally:
        fleet.stop()


def test_an_agent_that_does_not_come_back_delays_readiness_only_so_long(redis_url: str, redis_prefix: str) -> None:
    fleet = Fleet(redis_url, redis_prefix, heartbeat_ttl_s=2.0)
    try:
        fleet.start_dispatcher()
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        fleet.start_agent("edgefleet.agents.examples.text", "us-east").kill9()  # gone for good
        url, took = _restart(fleet, ready_wait_s=4)
        assert 3.0 <= took < 12, took
        log = fleet.dispatchers[0][1].output()
        assert "without text" in log and "EDGEFLEET_READY_WAIT_S" in log
        assert "result" in _call(url, "echo.echo", {"text": "x"})
    finally:
        fleet.stop()


def test_a_removed_agent_is_not_waited_for(redis_url: str, redis_prefix: str) -> None:
    fleet = Fleet(redis_url, redis_prefix, heartbeat_ttl_s=2.0)
    try:
        fleet.start_dispatcher()
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        text = fleet.start_agent("edgefleet.agents.examples.text", "us-east")
        text.popen.terminate()  # SIGTERM: it deregisters, on purpose
        text.popen.wait(30)
        _, took = _restart(fleet, ready_wait_s=20)
        assert took < 10, took
    finally:
        fleet.stop()


def test_a_ready_dispatcher_stays_ready_while_redis_is_away(own_redis: EmbeddedRedis, redis_prefix: str) -> None:
    fleet = Fleet(own_redis.url, redis_prefix, heartbeat_ttl_s=30.0)
    try:
        url = fleet.start_dispatcher()
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        own_redis.stop()
        time.sleep(2.5)  # several failed syncs: it used to say 503 within a second
        for _ in range(5):
            resp = httpx.get(url + "/readyz", timeout=5)
            assert resp.status_code == 200 and resp.json()["registry"] == "unreachable", resp.text
            assert _call(url, "echo.echo", {"text": "served"})["result"]["content"][0]["text"] == "served"
            time.sleep(0.3)
        own_redis.start()
        fleet.wait_for(lambda: httpx.get(url + "/readyz", timeout=5).json()["registry"] == "ok", "the registry back")
    finally:
        fleet.stop()


def test_a_dispatcher_that_never_read_the_registry_is_not_ready(redis_prefix: str) -> None:
    """Without a first read of the registry there is no fleet to serve."""
    import sys

    from edgefleet.dispatcher.devtools.embedded_redis import free_port

    fleet = Fleet(f"redis://127.0.0.1:{free_port()}/0", redis_prefix)  # nothing listens there
    port = free_port()
    env = {
        **fleet.base_env,
        "EDGEFLEET_PORT": str(port),
        "EDGEFLEET_REDIS_URL": fleet.redis_url,
        "EDGEFLEET_REDIS_PREFIX": redis_prefix,
        "EDGEFLEET_AUTH": "none",
    }
    proc = Proc([sys.executable, "-m", "edgefleet.dispatcher", "serve"], env, "unready")
    try:
        answer: dict[str, Any] = {}

        def answered() -> bool:
            nonlocal answer
            try:
                resp = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2)
            except httpx.HTTPError:
                return False
            answer = {"status_code": resp.status_code, **resp.json()}
            return True

        fleet.wait_for(answered, "the dispatcher to answer /readyz", proc=proc)
        assert answer == {
            "status_code": 503,
            "status": "not ready",
            "registry": "unreachable",
            "synced": False,
            "waiting_for": [],
        }
    finally:
        proc.popen.terminate()
        proc.popen.wait(30)
        proc.log.close()
