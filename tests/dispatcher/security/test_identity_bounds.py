"""An identity's bounds hold on every way a call can run (issue 16, items 1-3): a key bound
to regions is served only there (direct path, bus path, a 2025-era task, a task recovered
by another dispatcher, a fan-out sub-call naming a region), and a tool allowlist holds for
the sub-calls of the dispatcher's own tools too. Real dispatcher, agents and Redis."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from edgefleet.dispatcher.security.auth import hash_key, new_key

from tests.support.fleet import Fleet
from tests.support.tasks import create_task

pytestmark = pytest.mark.integration

EU = new_key()  # bound to eu-west
NARROW = new_key()  # may call echo.echo and edgefleet.fanout only
ROOT = new_key()  # admin, no bounds
MODERN = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


def _keys(path: Path) -> Path:
    path.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"identity": "eu-only", "sha256": hash_key(EU), "regions": ["eu-west"]},
                    {"identity": "narrow", "sha256": hash_key(NARROW), "tools": ["echo.echo", "edgefleet.fanout"]},
                    {"identity": "root", "sha256": hash_key(ROOT), "scopes": ["admin"]},
                ]
            }
        )
    )
    return path


def _auth_fleet(redis_url: str, prefix: str, **options: Any) -> Fleet:
    fleet = Fleet(redis_url, prefix, region="eu-west", **options)
    fleet.default_auth = "required"
    return fleet


def _call(fleet: Fleet, key: str, tool: str, arguments: dict[str, Any], url: str | None = None) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    headers = {**MODERN, "mcp-method": "tools/call", "mcp-name": tool, "authorization": f"Bearer {key}"}
    return httpx.post((url or fleet.url) + "/mcp", json=body, headers=headers, timeout=30)


def _client(fleet: Fleet, key: str, **options: Any) -> Client:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(fleet.mcp_url, http_client=http), **options)


def _task(fleet: Fleet, task_id: str) -> dict[str, Any]:
    resp = httpx.get(f"{fleet.url}/v1/tasks/{task_id}", headers={"authorization": f"Bearer {ROOT}"}, timeout=10)
    resp.raise_for_status()
    return dict(resp.json())


def _wait_terminal(fleet: Fleet, task_id: str, timeout: float) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def terminal() -> bool:
        nonlocal found
        found = _task(fleet, task_id)
        return found.get("status") in ("completed", "failed", "cancelled")

    fleet.wait_for(terminal, f"task {task_id} to end", timeout=timeout)
    return found


@pytest.fixture(scope="module")
def us_only(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    """An eu-west dispatcher whose echo agent runs in us-east only."""
    keys = _keys(tmp_path_factory.mktemp("bounds") / "keys.yaml")
    fleet = _auth_fleet(redis_url, "eftest-bounds-" + str(int(time.time() * 1000)))
    try:
        fleet.start_dispatcher(api_keys_file=keys, tool_rate_limits="echo.fail=2/minute")
        fleet.start_agent("edgefleet.agents.examples.echo", "us-east")
        yield fleet
    finally:
        fleet.stop()


def test_a_region_bound_key_is_not_served_outside_its_regions(us_only: Fleet) -> None:
    refused = _call(us_only, EU, "echo.where", {})
    error = refused.json()["error"]
    assert error["data"]["code"] == "agent_unavailable" and error["data"]["regions"] == ["eu-west"], refused.text
    assert "region=us-east" not in refused.headers.get("edgefleet-route", "")
    served = _call(us_only, ROOT, "echo.where", {})
    assert served.json()["result"]["structuredContent"]["region"] == "us-east"


async def test_a_region_bound_keys_task_does_not_run_outside_its_regions(us_only: Fleet) -> None:
    async with _client(us_only, EU, mode="legacy") as client:
        task = await create_task(client, "echo.where", {})
    done = _wait_terminal(us_only, task.task_id, timeout=15)
    assert done["status"] == "failed" and done["error"]["data"]["code"] == "agent_unavailable", done
    assert done.get("region") != "us-east"


def test_a_fanout_sub_call_cannot_leave_the_callers_regions(us_only: Fleet) -> None:
    """Item 2: a sub-call naming a region outside the key's regions is refused, and one
    naming none is held to them like the key's own calls."""
    calls = [{"tool": "echo.where", "region": "us-east"}, {"tool": "echo.where"}]
    resp = _call(us_only, EU, "edgefleet.fanout", {"calls": calls})
    summary = resp.json()["result"]["structuredContent"]
    pinned, free = summary["results"]
    assert pinned["status"] == "error" and pinned["error"]["data"]["code"] == "region_forbidden", pinned
    assert "us-east" in pinned["error"]["message"] and "eu-only" in pinned["error"]["message"]
    assert free["status"] == "error" and free["error"]["data"]["code"] == "agent_unavailable", free
    assert summary["succeeded"] == 0 and "region" not in pinned and "region" not in free
    # The same fan-out for an unbound key runs both in us-east.
    served = _call(us_only, ROOT, "edgefleet.fanout", {"calls": calls}).json()["result"]["structuredContent"]
    assert [r["region"] for r in served["results"]] == ["us-east", "us-east"]


def test_a_fanout_sub_call_is_held_to_the_callers_tool_allowlist(us_only: Fleet) -> None:
    """Item 3: a key allowed echo.echo and edgefleet.fanout does not reach echo.where
    through the fan-out."""
    calls = [{"tool": "echo.where"}, {"tool": "echo.echo", "arguments": {"text": "allowed"}}]
    summary = _call(us_only, NARROW, "edgefleet.fanout", {"calls": calls}).json()["result"]["structuredContent"]
    forbidden, allowed = summary["results"]
    assert forbidden["status"] == "error" and forbidden["error"]["data"]["code"] == "tool_forbidden", forbidden
    assert forbidden["error"]["code"] == -31403 and "narrow" in forbidden["error"]["message"]
    assert "result" not in forbidden
    assert allowed["status"] == "ok" and summary["succeeded"] == 1


def test_a_fanout_sub_call_counts_against_the_callers_rate_limits(us_only: Fleet) -> None:
    """The invoker asks what the endpoint asks: 2 calls of echo.fail a minute are 2
    sub-calls a minute too (a fan-out of 3 is not a way around the limit)."""
    calls = [{"tool": "echo.fail"}] * 3
    summary = _call(us_only, ROOT, "edgefleet.fanout", {"calls": calls}).json()["result"]["structuredContent"]
    statuses = sorted(r["status"] for r in summary["results"])
    assert statuses == ["error", "tool_error", "tool_error"], summary
    (limited,) = [r for r in summary["results"] if r["status"] == "error"]
    assert limited["error"]["data"]["code"] == "rate_limited" and limited["error"]["data"]["retry_after_s"] >= 1


def test_the_bus_path_holds_the_region_binding(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    fleet = _auth_fleet(redis_url, redis_prefix)
    try:
        fleet.start_dispatcher(api_keys_file=_keys(tmp_path / "keys.yaml"), bus_url=redis_url, bus_tools="echo.where")
        fleet.start_agent("edgefleet.agents.examples.echo", "us-east")
        refused = _call(fleet, EU, "echo.where", {}).json()
        assert refused["error"]["data"]["code"] == "agent_unavailable", refused
        served = _call(fleet, ROOT, "echo.where", {})
        assert "path=bus" in served.headers["edgefleet-route"] and "region=us-east" in served.headers["edgefleet-route"]
    finally:
        fleet.stop()


async def test_a_recovered_task_keeps_its_owners_regions(tmp_path: Path, redis_url: str, redis_prefix: str) -> None:
    """Item 1, recovery: an idempotent task of an eu-west-bound key runs in eu-west; that
    replica and its dispatcher die. The other dispatcher takes the task over and must not
    run it again in us-east (where a replica is free): it fails, as a call of that key would."""
    fleet = _auth_fleet(redis_url, redis_prefix, heartbeat_ttl_s=10.0)
    try:
        settings = {"api_keys_file": _keys(tmp_path / "keys.yaml"), "task_lease_s": 1.5}
        fleet.start_dispatcher(**settings)
        other = fleet.start_dispatcher(**settings)
        eu = fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west")
        fleet.start_agent("edgefleet.agents.examples.trainer", "us-east")
        fleet.wait_for(
            lambda: sum(r["routable"] for a in fleet.agents_view(other) for r in a["replicas"]) == 2,
            "both trainers routable in the other dispatcher",
        )
        async with _client(fleet, EU, mode="legacy") as client:
            task = await create_task(client, "trainer.train", {"epochs": 60}, ttl=600_000)
        fleet.wait_for(
            lambda: (_task(fleet, task.task_id).get("progress") or {}).get("progress"), "the task to be under way"
        )
        _, running = fleet.dispatchers.pop(0)
        running.kill9()
        eu.kill9()
        done = _wait_terminal(fleet, task.task_id, timeout=30)  # read from the other dispatcher
        assert done["status"] == "failed" and done["error"]["data"]["code"] == "agent_unavailable", done
        assert done["attempts"] == 2 and done.get("region") != "us-east", done
    finally:
        fleet.stop()
