"""Client authentication and authorization on /mcp against a real dispatcher and agent:
API keys (hashed, with tool allowlists), JWTs (HS256 secret; RS256 from a JWKS file), the
OAuth resource-server surface, and every failure path with its error."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import jwt
import pytest
import yaml
from cryptography.hazmat.primitives.asymmetric import rsa
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from edgefleet.dispatcher.security.auth import hash_key, new_key

from tests.support.fleet import Fleet

pytestmark = pytest.mark.integration

SECRET = "test-jwt-secret-" + "x" * 32
AUDIENCE = "https://edgefleet.test/mcp"
ISSUER = "https://issuer.test"
AUTH_SERVER = "https://login.example.test"
MODERN = {
    "content-type": "application/json",
    "accept": "application/json, text/event-stream",
    "mcp-protocol-version": "2026-07-28",
}
META = {"io.modelcontextprotocol/protocolVersion": "2026-07-28", "io.modelcontextprotocol/clientCapabilities": {}}

ALICE = new_key()  # may call echo.echo only
ROOT = new_key()  # no tool restriction
BOB = new_key()  # no tool restriction, not admin
RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def _jwks() -> dict[str, Any]:
    public = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(RSA_KEY.public_key()))
    return {"keys": [{**public, "kid": "k1", "use": "sig", "alg": "RS256"}]}


@pytest.fixture(scope="module")
def auth_fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    tmp = tmp_path_factory.mktemp("auth")
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
    jwks = tmp / "jwks.json"
    jwks.write_text(json.dumps(_jwks()))
    fleet = Fleet(redis_url, "eftest-auth-" + str(int(time.time() * 1000)), region="eu-west")
    fleet.default_auth = "required"
    try:
        fleet.start_dispatcher(
            api_keys_file=keys,
            jwt_secret=SECRET,
            jwt_jwks=jwks,
            jwt_audience=AUDIENCE,
            jwt_issuer=ISSUER,
            oauth_authorization_servers=AUTH_SERVER,
        )
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        yield fleet
    finally:
        fleet.stop()


def _token(*, key: Any = SECRET, alg: str = "HS256", headers: dict[str, Any] | None = None, **claims: Any) -> str:
    body = {"sub": "bob", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 600, **claims}
    return jwt.encode({k: v for k, v in body.items() if v is not None}, key, algorithm=alg, headers=headers)


def _client(fleet: Fleet, credential: str, **options: Any) -> Client:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {credential}"}, timeout=30)
    return Client(streamable_http_client(fleet.mcp_url, http_client=http), **options)


def _post(
    fleet: Fleet, authorization: str | None, method: str = "tools/list", params: dict | None = None
) -> httpx.Response:
    headers = {
        **MODERN,
        "mcp-method": method,
        **({"authorization": authorization} if authorization is not None else {}),
    }
    if method == "tools/call":
        headers["mcp-name"] = (params or {})["name"]
    body = {"jsonrpc": "2.0", "id": 7, "method": method, "params": {**(params or {}), "_meta": META}}
    return httpx.post(fleet.mcp_url, json=body, headers=headers, timeout=10)


def _assert_401(resp: httpx.Response, fleet: Fleet, *, error: str | None, message: str) -> None:
    assert resp.status_code == 401, resp.text
    challenge = resp.headers["www-authenticate"]
    assert (
        challenge.startswith("Bearer resource_metadata=") and "/.well-known/oauth-protected-resource/mcp" in challenge
    )
    assert (f'error="{error}"' in challenge) if error else ("error=" not in challenge)
    body = resp.json()
    assert body["error"]["code"] == -31401 and body["error"]["data"]["code"] == "unauthorized"
    assert message in body["error"]["message"]


def test_the_protected_resource_metadata_names_the_authorization_server(auth_fleet: Fleet) -> None:
    for path in ("/.well-known/oauth-protected-resource", "/.well-known/oauth-protected-resource/mcp"):
        meta = httpx.get(auth_fleet.url + path).json()
        assert meta["resource"].endswith("/mcp") and meta["authorization_servers"] == [AUTH_SERVER]
        assert meta["bearer_methods_supported"] == ["header"]


def test_every_credential_failure_is_a_401_with_a_challenge(auth_fleet: Fleet) -> None:
    _assert_401(_post(auth_fleet, None), auth_fleet, error=None, message="Authentication required")
    _assert_401(_post(auth_fleet, "Basic dXNlcjpwYXNz"), auth_fleet, error=None, message="Authentication required")
    _assert_401(_post(auth_fleet, "Bearer " + new_key()), auth_fleet, error="invalid_token", message="Unknown API key")
    _assert_401(
        _post(auth_fleet, "Bearer " + _token(exp=int(time.time()) - 120)),
        auth_fleet,
        error="invalid_token",
        message="expired",
    )
    _assert_401(
        _post(auth_fleet, "Bearer " + _token(aud="https://other.test/mcp")),
        auth_fleet,
        error="invalid_token",
        message="audience",
    )
    _assert_401(
        _post(auth_fleet, "Bearer " + _token(iss="https://evil.test")),
        auth_fleet,
        error="invalid_token",
        message="issuer",
    )
    _assert_401(
        _post(auth_fleet, "Bearer " + _token(key="wrong-secret-" + "y" * 32)),
        auth_fleet,
        error="invalid_token",
        message="invalid",
    )
    _assert_401(_post(auth_fleet, "Bearer " + _token(sub=None)), auth_fleet, error="invalid_token", message="'sub'")
    _assert_401(_post(auth_fleet, "Bearer not.a.jwt"), auth_fleet, error="invalid_token", message="invalid")
    # alg=none and an RS256 token signed by a key that is not in the JWKS
    unsigned = jwt.encode(
        {"sub": "x", "aud": AUDIENCE, "iss": ISSUER, "exp": int(time.time()) + 60}, None, algorithm="none"
    )
    _assert_401(_post(auth_fleet, "Bearer " + unsigned), auth_fleet, error="invalid_token", message="invalid")
    stranger = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    forged = _token(key=stranger, alg="RS256", headers={"kid": "k1"})
    _assert_401(_post(auth_fleet, "Bearer " + forged), auth_fleet, error="invalid_token", message="invalid")
    # The dispatcher still serves good requests afterwards.
    assert _post(auth_fleet, "Bearer " + ROOT).status_code == 200


async def test_an_api_key_sees_and_calls_only_its_tools(auth_fleet: Fleet) -> None:
    async with _client(auth_fleet, ALICE) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert names == {"echo.echo"}
        result = await client.call_tool("echo.echo", {"text": "hi"})
        assert not result.is_error
    resp = _post(auth_fleet, "Bearer " + ALICE, "tools/call", {"name": "echo.where", "arguments": {}})
    error = resp.json()["error"]
    assert resp.status_code == 200 and error["code"] == -31403 and error["data"]["code"] == "tool_forbidden"
    assert "alice" in error["message"] and "echo.where" in error["message"]
    async with _client(auth_fleet, ROOT) as client:
        names = {t.name for t in (await client.list_tools()).tools}
        assert {"echo.echo", "echo.where", "edgefleet.fanout"} <= names


async def test_jwts_from_a_secret_and_from_a_jwks_file(auth_fleet: Fleet) -> None:
    narrow = _token(scope="tool:echo.where")
    async with _client(auth_fleet, narrow) as client:
        assert {t.name for t in (await client.list_tools()).tools} == {"echo.where"}
        assert not (await client.call_tool("echo.where", {})).is_error
    rs256 = _token(key=RSA_KEY, alg="RS256", headers={"kid": "k1"}, scope="admin")
    async with _client(auth_fleet, rs256) as client:
        assert not (await client.call_tool("echo.echo", {"text": "rs"})).is_error


async def test_a_legacy_session_belongs_to_the_identity_that_opened_it(auth_fleet: Fleet) -> None:
    init = {
        "jsonrpc": "2.0",
        "id": 1,
        "method": "initialize",
        "params": {"protocolVersion": "2025-11-25", "capabilities": {}, "clientInfo": {"name": "t", "version": "1"}},
    }
    headers = {"content-type": "application/json", "accept": "application/json, text/event-stream"}
    opened = httpx.post(auth_fleet.mcp_url, json=init, headers={**headers, "authorization": f"Bearer {ALICE}"})
    session = opened.headers["mcp-session-id"]
    listing = {"jsonrpc": "2.0", "id": 2, "method": "tools/list"}
    legacy = {**headers, "mcp-protocol-version": "2025-11-25", "mcp-session-id": session}
    mine = httpx.post(auth_fleet.mcp_url, json=listing, headers={**legacy, "authorization": f"Bearer {ALICE}"})
    assert mine.status_code == 200 and [t["name"] for t in mine.json()["result"]["tools"]] == ["echo.echo"]
    theirs = httpx.post(auth_fleet.mcp_url, json=listing, headers={**legacy, "authorization": f"Bearer {ROOT}"})
    assert theirs.status_code == 404  # another identity's session does not exist for it
    gone = httpx.delete(auth_fleet.mcp_url, headers={**legacy, "authorization": f"Bearer {ROOT}"})
    assert gone.status_code == 404
    assert (
        httpx.post(auth_fleet.mcp_url, json=listing, headers={**legacy, "authorization": f"Bearer {ALICE}"}).status_code
        == 200
    )


async def test_only_the_owner_or_an_admin_sees_and_cancels_a_task(auth_fleet: Fleet) -> None:
    import mcp_types as types
    from mcp import MCPError

    from edgefleet.dispatcher.tasks.client import TasksExtension, cancel_task, get_task

    from tests.support.tasks import create_task, legacy_get

    async with _client(auth_fleet, ALICE, mode="legacy") as alice:
        task = await create_task(alice, "echo.echo", {"text": "mine"})
        assert (await legacy_get(alice, task.task_id)).task_id == task.task_id
    async with _client(auth_fleet, BOB, mode="legacy") as bob:
        with pytest.raises(MCPError) as hidden:
            await legacy_get(bob, task.task_id)
        assert hidden.value.code == -32602 and "not found" in hidden.value.message.lower()
        listed = await bob.session.send_request(types.ListTasksRequest(), types.ListTasksResult)
        assert task.task_id not in [t.task_id for t in listed.tasks]
        with pytest.raises(MCPError) as refused:
            await bob.session.send_request(
                types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task.task_id)),
                types.CancelTaskResult,
            )
        assert refused.value.code == -32602
    async with _client(auth_fleet, BOB, extensions=[TasksExtension()]) as bob_modern:
        for attempt in (get_task, cancel_task):
            with pytest.raises(MCPError) as modern:
                await attempt(bob_modern.session, task.task_id)
            assert modern.value.code == -32602
    rest = f"{auth_fleet.url}/v1/tasks"
    as_bob = {"authorization": f"Bearer {BOB}"}
    assert httpx.get(f"{rest}/{task.task_id}", headers=as_bob, timeout=10).status_code == 404
    assert httpx.post(f"{rest}/{task.task_id}/cancel", headers=as_bob, timeout=10).status_code == 404
    assert task.task_id not in [t["id"] for t in httpx.get(rest, headers=as_bob, timeout=10).json()["tasks"]]
    assert task.task_id not in [
        t["id"] for t in httpx.get(rest, headers=as_bob, params={"owner": "alice"}, timeout=10).json()["tasks"]
    ]
    assert httpx.get(rest, timeout=10).status_code == 401
    # An admin sees everyone's tasks, and can reach this one (finished, so cancel says so).
    as_root = {"authorization": f"Bearer {ROOT}"}
    assert httpx.get(f"{rest}/{task.task_id}", headers=as_root, timeout=10).json()["owner"] == "alice"
    assert task.task_id in [
        t["id"] for t in httpx.get(rest, headers=as_root, params={"owner": "alice"}, timeout=10).json()["tasks"]
    ]
    assert httpx.post(f"{rest}/{task.task_id}/cancel", headers=as_root, timeout=10).status_code == 409


def test_no_credential_appears_in_the_logs(auth_fleet: Fleet) -> None:
    _post(auth_fleet, "Bearer " + ALICE, "tools/call", {"name": "echo.echo", "arguments": {"text": "x"}})
    _post(auth_fleet, "Bearer " + ALICE[:-2] + "zz")
    log = auth_fleet.dispatchers[0][1].output()
    for secret in (ALICE, ROOT, SECRET, ALICE[:-2] + "zz"):
        assert secret not in log


def test_serve_refuses_to_start_without_credentials_unless_told_auth_is_off(redis_url: str, tmp_path: Path) -> None:
    import os
    import subprocess
    import sys

    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "OTEL_"))}
    env.update({"EDGEFLEET_FLEET_TOKEN": "t", "EDGEFLEET_REDIS_URL": redis_url, "EDGEFLEET_PORT": "0"})
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.dispatcher", "serve"], env=env, capture_output=True, text=True, timeout=60
    )
    assert (
        out.returncode == 2
        and "No client credentials are configured" in out.stderr
        and "EDGEFLEET_AUTH=none" in out.stderr
    )


def test_the_cli_client_sends_its_key(auth_fleet: Fleet) -> None:
    import subprocess
    import sys

    run = [sys.executable, "-m", "edgefleet.dispatcher", "tools", "--url", auth_fleet.url]
    denied = subprocess.run(run, capture_output=True, text=True, timeout=60)
    assert denied.returncode != 0 and "401" in denied.stderr + denied.stdout
    allowed = subprocess.run([*run, "--key", ALICE], capture_output=True, text=True, timeout=60)
    assert allowed.returncode == 0 and allowed.stdout.split()[0] == "echo.echo" and "echo.where" not in allowed.stdout


def test_rate_limits_hold_across_two_dispatchers_sharing_redis(
    redis_url: str, redis_prefix: str, tmp_path: Path
) -> None:
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {"keys": [{"identity": "carol", "sha256": hash_key(ALICE)}, {"identity": "dave", "sha256": hash_key(ROOT)}]}
        )
    )
    fleet = Fleet(redis_url, redis_prefix, region="eu-west")
    fleet.default_auth = "required"
    try:
        limits = {"api_keys_file": keys, "rate_limit": "6/minute", "tool_rate_limits": "echo.where=2/minute"}
        first = fleet.start_dispatcher(**limits)
        second = fleet.start_dispatcher(**limits)
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        fleet.wait_for(
            lambda: all(
                any(r["routable"] for a in fleet.agents_view(d) for r in a["replicas"]) for d in (first, second)
            ),
            "echo routable in both dispatchers",
        )
        statuses = []
        for i in range(10):  # alternate dispatchers: one budget, counted in Redis
            base = (first, second)[i % 2]
            body = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "echo.echo", "arguments": {"text": "x"}, "_meta": META},
            }
            resp = httpx.post(
                base + "/mcp",
                json=body,
                timeout=10,
                headers={
                    **MODERN,
                    "mcp-method": "tools/call",
                    "mcp-name": "echo.echo",
                    "authorization": f"Bearer {ALICE}",
                },
            )
            statuses.append(resp.status_code)
            if resp.status_code == 429:
                error = resp.json()["error"]
                assert error["code"] == -31429 and error["data"]["code"] == "rate_limited" and resp.json()["id"] == i
                assert 1 <= int(resp.headers["retry-after"]) <= 60 and error["data"]["retry_after_s"] == int(
                    resp.headers["retry-after"]
                )
        assert statuses.count(200) == 6 and statuses.count(429) == 4, statuses
        # Another identity has its own budget; a per-tool limit is tighter than the identity's.
        where = []
        for i in range(3):
            body = {
                "jsonrpc": "2.0",
                "id": i,
                "method": "tools/call",
                "params": {"name": "echo.where", "arguments": {}, "_meta": META},
            }
            where.append(
                httpx.post(
                    (first, second)[i % 2] + "/mcp",
                    json=body,
                    timeout=10,
                    headers={
                        **MODERN,
                        "mcp-method": "tools/call",
                        "mcp-name": "echo.where",
                        "authorization": f"Bearer {ROOT}",
                    },
                ).status_code
            )
        assert where == [200, 200, 429]
        metrics = httpx.get(first + "/metrics").text + httpx.get(second + "/metrics").text
        assert (
            'edgefleet_rate_limited_total{scope="identity"}' in metrics
            and 'edgefleet_rate_limited_total{scope="tool"}' in metrics
        )
    finally:
        fleet.stop()
