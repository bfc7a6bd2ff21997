"""Redis going away under a running dispatcher (issue 16, item 9): what needs Redis answers
503 store_unavailable with a stable code (never a 500 with a traceback), what does not
keeps working, and everything recovers when Redis is back. The Redis here is the test's
own redis-server, stopped and started again on the same port."""

from __future__ import annotations

from typing import Any

import httpx
import pytest

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration

LEGACY = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
MODERN = {**LEGACY, "mcp-protocol-version": "2026-07-28"}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}
INIT = {
    "jsonrpc": "2.0",
    "id": 1,
    "method": "initialize",
    "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
}


def _legacy(fleet: Fleet, session: str, method: str, params: dict[str, Any] | None = None) -> httpx.Response:
    body = {"jsonrpc": "2.0", "id": 2, "method": method, "params": params or {}}
    headers = {**LEGACY, "mcp-protocol-version": "2025-11-25", "mcp-session-id": session}
    return httpx.post(fleet.mcp_url, json=body, headers=headers, timeout=30)


def _modern_call(fleet: Fleet, tool: str, arguments: dict[str, Any]) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 3,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    headers = {**MODERN, "mcp-method": "tools/call", "mcp-name": tool}
    return httpx.post(fleet.mcp_url, json=body, headers=headers, timeout=30)


def _assert_store_unavailable_rpc(resp: httpx.Response) -> None:
    assert resp.status_code == 503, resp.text[:500]
    error = resp.json()["error"]
    assert error["code"] == -31011 and error["data"]["code"] == "store_unavailable", error


def test_redis_loss_is_a_503_with_a_stable_code_and_cached_sessions_keep_working(
    own_redis: EmbeddedRedis, redis_prefix: str
) -> None:
    fleet = Fleet(own_redis.url, redis_prefix, heartbeat_ttl_s=30.0)
    try:
        fleet.start_dispatcher(session_ttl_s=2)  # leases renewed every 0.5 s: a touch is due at once
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        opened = httpx.post(fleet.mcp_url, json=INIT, headers=LEGACY, timeout=30)
        session = opened.headers["mcp-session-id"]
        assert _legacy(fleet, session, "tools/list").status_code == 200
        (replica,) = [r["id"] for a in fleet.agents_view() for r in a["replicas"]]

        own_redis.stop()
        # A session this dispatcher knows is still served (its lease renewal fails): it
        # used to answer 500 (redis ConnectionError from the unguarded PEXPIRE).
        listed = _legacy(fleet, session, "tools/list")
        assert listed.status_code == 200 and "echo.echo" in listed.text, listed.text[:500]
        called = _legacy(fleet, session, "tools/call", {"name": "echo.echo", "arguments": {"text": "still"}})
        assert called.status_code == 200 and "still" in called.text, called.text[:500]
        assert "still" in _modern_call(fleet, "echo.echo", {"text": "still"}).text
        # What needs Redis says so: a new session, a session it never saw, a heartbeat.
        _assert_store_unavailable_rpc(httpx.post(fleet.mcp_url, json=INIT, headers=LEGACY, timeout=30))
        _assert_store_unavailable_rpc(_legacy(fleet, "x" * 32, "tools/list"))
        beat = httpx.post(
            f"{fleet.url}/v1/agents/replicas/{replica}/heartbeat",
            json={"inflight": 0},
            headers=fleet.auth(),
            timeout=30,
        )
        assert beat.status_code == 503 and beat.json()["error"]["code"] == "store_unavailable", beat.text[:500]
        assert beat.headers["retry-after"] == "1"
        listing = httpx.get(f"{fleet.url}/v1/agents", headers=fleet.auth(), timeout=30)
        assert listing.status_code == 503 and listing.json()["error"]["code"] == "store_unavailable"

        own_redis.start()
        fleet.wait_for(
            lambda: httpx.post(fleet.mcp_url, json=INIT, headers=LEGACY, timeout=30).status_code == 200,
            "sessions to open again",
        )
        assert _legacy(fleet, session, "tools/list").status_code in (200, 404)  # Redis came back empty
        log = fleet.dispatchers[0][1].output()
        assert "Traceback" not in log and "Exception in ASGI application" not in log
    finally:
        fleet.stop()
