"""The audit stream against real dispatchers, agents and Redis: who did what (calls,
refusals, limits, registrations), shared by every dispatcher, read with `edgefleet audit
tail`, and never holding a credential or (unless configured) an argument value."""

from __future__ import annotations

import base64
import json
import select
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jwt
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from edgefleet.dispatcher.security.agent_auth import new_agent_key
from edgefleet.dispatcher.security.auth import hash_key, new_key

from tests.support.fleet import ROOT as REPO
from tests.support.fleet import Fleet
from tests.support.tasks import create_task

pytestmark = pytest.mark.integration

ALICE = new_key()  # may call echo.echo only
ROOT = new_key()  # admin
BOB = new_key()  # no admin scope
ECHO_KEY = new_agent_key()
SECRET = "audit-jwt-secret-" + "z" * 32
ARGUMENT = "do-not-log-this-argument-value"
MODERN = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}


@pytest.fixture(scope="module")
def audited(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    tmp: Path = tmp_path_factory.mktemp("audit")
    keys = tmp / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"identity": "alice", "sha256": hash_key(ALICE), "tools": ["echo.echo"]},
                    {"identity": "root", "sha256": hash_key(ROOT), "scopes": ["admin"]},
                    {"identity": "bob", "sha256": hash_key(BOB)},
                ]
            }
        )
    )
    agents = tmp / "agents.yaml"
    agents.write_text(yaml.safe_dump({"agents": [{"agent": "echo", "sha256": hash_key(ECHO_KEY)}]}))
    fleet = Fleet(redis_url, "eftest-audit-" + str(int(time.time() * 1000)), region="eu-west")
    fleet.default_auth = "required"
    try:
        fleet.start_dispatcher(
            api_keys_file=keys, agent_keys_file=agents, jwt_secret=SECRET, tool_rate_limits="echo.where=2/minute"
        )
        # A second dispatcher of the same fleet that also records argument values.
        fleet.start_dispatcher(api_keys_file=keys, agent_keys_file=agents, jwt_secret=SECRET, audit_arguments="true")
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west", env={"EDGEFLEET_AGENT_KEY": ECHO_KEY})
        second = fleet.dispatchers[1][0]
        fleet.wait_for(
            lambda: any(r["routable"] for a in fleet.agents_view(second) for r in a["replicas"]),
            "echo routable in both",
        )
        yield fleet
    finally:
        fleet.stop()


def _call(base: str, credential: str, tool: str, arguments: dict[str, Any]) -> httpx.Response:
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": tool, "arguments": arguments, "_meta": META},
    }
    headers = {**MODERN, "mcp-method": "tools/call", "mcp-name": tool, "authorization": f"Bearer {credential}"}
    return httpx.post(base + "/mcp", json=body, headers=headers, timeout=30)


def _events(fleet: Fleet) -> list[dict[str, Any]]:
    resp = httpx.get(fleet.url + "/v1/audit", params={"last": 10_000}, headers=fleet.auth(), timeout=10)
    assert resp.status_code == 200, resp.text
    return resp.json()["events"]


def _find(fleet: Fleet, match: Callable[[dict[str, Any]], bool], what: str) -> dict[str, Any]:
    found: list[dict[str, Any]] = []
    fleet.wait_for(lambda: bool(found.extend(e for e in _events(fleet) if match(e)) or found), what, timeout=10)
    return found[-1]


def test_calls_refusals_limits_and_registrations_are_audited(audited: Fleet) -> None:
    first, second = audited.dispatchers[0][0], audited.dispatchers[1][0]
    assert _call(first, ALICE, "echo.echo", {"text": ARGUMENT}).status_code == 200
    call = _find(
        audited,
        lambda e: e["event"] == "call" and e.get("identity") == "alice" and e["tool"] == "echo.echo",
        "alice's call",
    )
    assert call["outcome"] == "ok" and call["region"] == "eu-west" and call["replica"].startswith("echo-eu-west")
    assert (
        call["path"] == "direct"
        and call["duration_ms"] > 0
        and call["auth"] == "api-key"
        and call["caller"] == "127.0.0.1"
    )
    assert call["argument_names"] == ["text"] and "arguments" not in call  # names only by default

    forbidden = _call(first, ALICE, "echo.where", {})
    assert forbidden.json()["error"]["data"]["code"] == "tool_forbidden"
    _find(
        audited,
        lambda e: e["event"] == "call" and e.get("code") == "tool_forbidden" and e["identity"] == "alice",
        "forbidden call",
    )

    bad_key = new_key()
    assert _call(first, bad_key, "echo.echo", {"text": "x"}).status_code == 401
    failure = _find(
        audited, lambda e: e["event"] == "auth.failure" and e.get("credential") == hash_key(bad_key)[:12], "bad key"
    )
    assert failure["reason"] == "Unknown API key." and failure["path"] == "/mcp" and "identity" not in failure
    expired = jwt.encode({"sub": "carol", "exp": int(time.time()) - 600}, SECRET)
    assert _call(first, expired, "echo.echo", {"text": "x"}).status_code == 401
    _find(audited, lambda e: e["event"] == "auth.failure" and "expired" in e["reason"], "expired token")

    statuses = [_call(first, ROOT, "echo.where", {}).status_code for _ in range(3)]
    assert statuses == [200, 200, 429]
    hit = _find(audited, lambda e: e["event"] == "limit.hit" and e.get("identity") == "root", "rate limit hit")
    assert hit["code"] == "rate_limited" and hit["scope"] == "tool" and hit["tool"] == "echo.where" and hit["limit"]

    register = _find(audited, lambda e: e["event"] == "agent.register" and e["agent"] == "echo", "echo's registration")
    assert register["credential_kind"] == "agent-key" and register["by"] == "echo" and register["tools"] >= 3
    refused = httpx.post(
        first + "/v1/agents",
        json={"name": "text", "region": "eu-west", "url": "http://127.0.0.1:9/mcp"},
        headers={"authorization": f"Bearer {ECHO_KEY}"},
        timeout=10,
    )
    assert refused.status_code == 403
    _find(
        audited, lambda e: e["event"] == "agent.refused" and e["code"] == "namespace_forbidden", "refused registration"
    )
    assert httpx.get(first + "/v1/agents", headers={"authorization": f"Bearer {BOB}"}, timeout=10).status_code == 403
    _find(
        audited, lambda e: e["event"] == "access.denied" and e["code"] == "forbidden", "non-admin on an operator route"
    )

    # The other dispatcher writes to the same stream, and was told to keep argument values.
    assert _call(second, ROOT, "echo.echo", {"text": "kept"}).status_code == 200
    kept = _find(audited, lambda e: e["event"] == "call" and e.get("arguments") == {"text": "kept"}, "argument values")
    assert kept["source"] != call["source"] and kept["identity"] == "root"


async def test_task_creation_status_changes_and_cancels_are_audited(audited: Fleet) -> None:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {ROOT}"}, timeout=30)
    async with Client(streamable_http_client(audited.mcp_url, http_client=http), mode="legacy") as client:
        quick = await create_task(client, "echo.echo", {"text": "task"})
        slow = await create_task(client, "echo.wait", {"seconds": 30})
    cancel = httpx.post(
        f"{audited.url}/v1/tasks/{slow.task_id}/cancel", headers={"authorization": f"Bearer {ROOT}"}, timeout=10
    )
    assert cancel.status_code == 200 and cancel.json()["status"] == "cancelled"
    for task, status in ((quick, "working"), (quick, "completed"), (slow, "working"), (slow, "cancelled")):
        event = _find(
            audited,
            lambda e, t=task, s=status: e["event"] == "task.status" and e.get("task") == t.task_id and e["status"] == s,
            f"task {status}",
        )
        assert event["owner"] == "root" and event["tool"] == ("echo.echo" if task is quick else "echo.wait")
    cancelled = _find(audited, lambda e: e["event"] == "task.cancel" and e.get("task") == slow.task_id, "the cancel")
    assert cancelled["by"] == "root"
    assert (
        _find(
            audited,
            lambda e: (
                e.get("task") == slow.task_id and e["status"] == "cancelled" if e["event"] == "task.status" else False
            ),
            "cancelled",
        )["code"]
        == "task_cancelled"
    )


def test_no_credential_or_argument_value_reaches_the_audit_stream_or_the_logs(audited: Fleet) -> None:
    first = audited.dispatchers[0][0]
    wrong_fleet_token = audited.token + "-wrong"
    valid_jwt = jwt.encode({"sub": "dave", "exp": int(time.time()) + 600}, SECRET)
    assert _call(first, valid_jwt, "echo.echo", {"text": ARGUMENT}).status_code == 200
    assert _call(first, ALICE + "x", "echo.echo", {"text": "x"}).status_code == 401
    assert (
        httpx.get(
            first + "/v1/agents", headers={"authorization": f"Bearer {wrong_fleet_token}"}, timeout=10
        ).status_code
        == 401
    )
    assert (
        httpx.post(
            first + "/v1/agents/replicas/nope/heartbeat",
            json={},
            headers={"authorization": f"Bearer {ECHO_KEY}x"},
            timeout=10,
        ).status_code
        == 401
    )
    _find(audited, lambda e: e["event"] == "call" and e.get("identity") == "dave", "dave's call")
    _find(
        audited,
        lambda e: e["event"] == "auth.failure" and e.get("path") == "/v1/agents/replicas/nope/heartbeat",
        "bad agent key",
    )
    stream = httpx.get(first + "/v1/audit", params={"last": 10_000}, headers=audited.auth(), timeout=10).text
    logs = "\n".join(p.output() for _, p in audited.dispatchers) + "\n".join(p.output() for p in audited.agents)
    secrets = {
        "alice's key": ALICE,
        "root's key": ROOT,
        "bob's key": BOB,
        "a presented bad key": ALICE + "x",
        "the agent key": ECHO_KEY,
        "the fleet token": audited.token,
        "a wrong fleet token": wrong_fleet_token,
        "the JWT secret": SECRET,
        "a JWT": valid_jwt,
    }
    for where, text in (("audit stream", stream), ("logs", logs)):
        for name, secret in secrets.items():
            assert secret not in text, f"{name} appears in the {where}"
    assert ARGUMENT not in stream  # argument values are off on the first dispatcher


def test_audit_tail_prints_and_follows_for_operators_only(audited: Fleet) -> None:
    first = audited.dispatchers[0][0]
    _call(first, ROOT, "echo.echo", {"text": "tail"})
    _find(audited, lambda e: e["event"] == "call" and e.get("identity") == "root", "root's call")
    cli = [sys.executable, "-m", "edgefleet.dispatcher", "audit", "tail", "--url", first]
    out = subprocess.run(
        [*cli, "-n", "200", "--event", "call", "--key", ROOT], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines and all(" call " in line for line in lines) and any("root echo.echo ok" in line for line in lines)
    as_json = subprocess.run(
        [*cli, "-n", "5", "--json", "--token", audited.token], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert as_json.returncode == 0 and 2 <= len(as_json.stdout.splitlines()) <= 5
    assert json.loads(as_json.stdout.splitlines()[-1])["event"] == "call"
    denied = subprocess.run([*cli, "--key", BOB], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert denied.returncode == 1 and "forbidden" in denied.stderr and "admin scope" in denied.stderr
    follow = subprocess.Popen(
        [*cli, "-n", "0", "-f", "--identity", "alice", "--token", audited.token],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        # Calls until one shows up: the first may land before the follower has its cursor.
        line = ""
        for _ in range(10):
            _call(first, ALICE, "echo.echo", {"text": "followed"})
            ready, _, _ = select.select([follow.stdout], [], [], 3.0)
            if ready:
                line = follow.stdout.readline() if follow.stdout else ""
                break
            assert follow.poll() is None, follow.stderr.read() if follow.stderr else ""
        assert " call alice echo.echo ok " in line, line
    finally:
        follow.terminate()
        follow.wait(10)


FORGED = "x\n2026-01-01T00:00:00.000Z call root admin.delete ok\x1b[31m red \x9b2J\u202eevil"


def test_audit_tail_escapes_what_a_client_wrote(audited: Fleet) -> None:
    """Issue 16, item 10: a tool name with a newline and ANSI escapes printed as a forged
    audit line with live colours. Human output escapes it; --json is JSON as before."""
    first = audited.dispatchers[0][0]
    body = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "tools/call",
        "params": {"name": FORGED, "arguments": {}, "_meta": META},
    }
    encoded = "=?base64?" + base64.b64encode(FORGED.encode()).decode() + "?="  # a header cannot hold it as it is
    headers = {**MODERN, "mcp-method": "tools/call", "mcp-name": encoded, "authorization": f"Bearer {ROOT}"}
    refused = httpx.post(first + "/mcp", json=body, headers=headers, timeout=30).json()
    assert refused["error"]["data"]["code"] == "unknown_tool", refused
    _find(audited, lambda e: e["event"] == "call" and e.get("tool") == FORGED, "the forged call")
    cli = [sys.executable, "-m", "edgefleet.dispatcher", "audit", "tail", "--url", first, "--token", audited.token]
    out = subprocess.run([*cli, "-n", "500", "--event", "call"], cwd=REPO, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    (line,) = [line for line in out.stdout.splitlines() if "admin.delete" in line]  # one line, not two
    assert " call root x\\n2026-01-01T00:00:00.000Z call root admin.delete ok\\x1b[31m red \\x9b2J\\u202eevil" in line
    assert not any(c in out.stdout for c in ("\x1b", "\x9b", "\u202e", "\r"))
    as_json = subprocess.run([*cli, "-n", "500", "--json"], cwd=REPO, capture_output=True, text=True, timeout=60)
    events = [json.loads(line) for line in as_json.stdout.splitlines()]
    assert any(e.get("tool") == FORGED for e in events)
    # The dispatcher's own text log wrote the refused name on one line too.
    log = audited.dispatchers[0][1].output()
    assert "\x1b[31m" not in log and "\u202e" not in log
    assert not any(line.startswith("2026-01-01T00:00:00.000Z call") for line in log.splitlines())
