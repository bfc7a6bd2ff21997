"""Registration: the fleet token, name collisions, and existing MCP servers joining unchanged."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import httpx
from mcp import Client

from edgefleet.dispatcher.devtools.embedded_redis import free_port

from tests.support.fleet import ROOT, Fleet, Proc, plain_server


def test_registration_requires_the_fleet_token(fleet: Fleet) -> None:
    body = {"name": "x", "region": "eu-west", "url": "http://127.0.0.1:9/mcp"}
    assert httpx.post(fleet.url + "/v1/agents", json=body).status_code == 401
    wrong = httpx.post(fleet.url + "/v1/agents", json=body, headers={"authorization": "Bearer nope"})
    assert wrong.status_code == 401 and wrong.json()["error"]["code"] == "unauthorized"
    assert httpx.get(fleet.url + "/v1/agents").status_code == 401


def test_invalid_registration_names_the_field(fleet: Fleet) -> None:
    resp = httpx.post(
        fleet.url + "/v1/agents", json={"name": "Bad Name", "region": "eu-west", "url": "ftp://x"}, headers=fleet.auth()
    )
    assert resp.status_code == 422
    fields = {p["field"] for p in resp.json()["error"]["details"]["problems"]}
    assert {"name", "url"} <= fields


def test_an_agent_url_pointing_at_cloud_metadata_is_refused(fleet: Fleet) -> None:
    body = {"name": "sneaky", "region": "eu-west", "url": "http://169.254.169.254/latest/meta-data/"}
    resp = httpx.post(fleet.url + "/v1/agents", json=body, headers=fleet.auth(), timeout=30)
    assert resp.status_code == 422 and resp.json()["error"]["code"] == "agent_url_forbidden"
    assert "169.254.169.254" in resp.json()["error"]["message"]


def test_unreachable_agent_is_refused_clearly(fleet: Fleet) -> None:
    body = {"name": "ghost", "region": "eu-west", "url": f"http://127.0.0.1:{free_port()}/mcp"}
    resp = httpx.post(fleet.url + "/v1/agents", json=body, headers=fleet.auth(), timeout=30)
    assert resp.status_code == 424 and resp.json()["error"]["code"] == "agent_unreachable"


async def test_existing_mcp_server_joins_unchanged_via_the_cli(fleet: Fleet) -> None:
    proc, url = plain_server()
    try:
        cli = subprocess.run(
            [
                sys.executable,
                "-m",
                "edgefleet.dispatcher",
                "agents",
                "add",
                "weather",
                url,
                "--region",
                "us-east",
                "--url",
                fleet.url,
                "--token",
                fleet.token,
            ],
            cwd=ROOT,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert cli.returncode == 0, cli.stderr
        fleet.wait_for(
            lambda: any(a["name"] == "weather" and a["replicas"][0]["routable"] for a in fleet.agents_view()),
            "static agent warm",
        )
        async with Client(fleet.mcp_url) as client:
            result = await client.call_tool("weather.forecast", {"city": "Lisbon", "days": 2})
        assert not result.is_error and "Lisbon" in str(result.content)
        # A second, different server claiming the same name and version is a collision, not a silent override.
        clash = httpx.post(
            fleet.url + "/v1/agents",
            json={"name": "weather", "region": "eu-west", "url": fleet.mcp_url, "version": ""},
            headers=fleet.auth(),
            timeout=30,
        )
        assert clash.status_code == 409 and clash.json()["error"]["code"] == "tool_conflict"
    finally:
        proc.kill()
        proc.wait()


def test_static_agents_from_the_config_file(fleet: Fleet, tmp_path) -> None:  # type: ignore[no-untyped-def]
    proc, url = plain_server()
    try:
        config = tmp_path / "fleet.toml"
        config.write_text(f'[[agents]]\nname = "weather"\nregion = "ap-southeast"\nurl = "{url}"\n')
        other = fleet.start_dispatcher(config_file=str(config))
        fleet.wait_for(lambda: any(a["name"] == "weather" for a in fleet.agents_view(other)), "config agent listed")
    finally:
        proc.kill()
        proc.wait()


def test_unknown_setting_is_refused_at_start(fleet: Fleet) -> None:
    env = {**fleet.base_env, "EDGEFLEET_REDIS_ULR": "redis://x"}
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.dispatcher", "serve"],
        env=env,
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 2 and "EDGEFLEET_REDIS_URL" in out.stderr


__all__ = ["Proc"]


async def test_a_heartbeat_racing_a_removal_does_not_resurrect_the_replica(redis_url: str, redis_prefix: str) -> None:
    """The heartbeat reads, then writes; a DELETE in between must win (WATCH/MULTI)."""
    import redis.asyncio as aioredis

    from edgefleet.dispatcher.fleet.registry import Registry
    from edgefleet.shared.constants import RedisKeys
    from edgefleet.shared.models import ReplicaRecord

    client = aioredis.from_url(redis_url)
    registry = Registry(client, RedisKeys(redis_prefix), heartbeat_ttl_s=5)
    try:
        await registry.put(ReplicaRecord(replica_id="r1", agent="a", region="eu-west", url="http://x/mcp"))
        original_get = registry.redis.pipeline

        class RemovingPipeline:
            """Deletes the record right after the heartbeat has read it."""

            def __init__(self, inner: Any) -> None:
                self.inner = inner

            async def __aenter__(self) -> Any:
                pipe = await self.inner.__aenter__()
                read = pipe.get

                async def get_then_remove(key: str) -> Any:
                    value = await read(key)
                    await client.delete(key)  # a concurrent DELETE (another connection)
                    return value

                pipe.get = get_then_remove
                return pipe

            async def __aexit__(self, *exc: Any) -> Any:
                return await self.inner.__aexit__(*exc)

        registry.redis.pipeline = lambda **kw: RemovingPipeline(original_get(**kw))  # type: ignore[method-assign]
        assert await registry.heartbeat("r1", {"inflight": 1}) is False
        registry.redis.pipeline = original_get  # type: ignore[method-assign]
        assert await registry.get("r1") is None
    finally:
        await client.aclose()
