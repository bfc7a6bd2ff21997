"""``edgefleet tasks list|get|watch|cancel`` as a user runs it: a subprocess against a real
dispatcher (client auth required, API keys) with real agents; tasks are created through the
official ``mcp`` client, then inspected, followed and cancelled through the CLI."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from typing import Any

import httpx
import httpx2
import pytest
import yaml
from mcp import Client
from mcp.client.streamable_http import streamable_http_client

from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.security.auth import hash_key, new_key

from tests.support.fleet import ROOT, Fleet
from tests.support.tasks import create_task

pytestmark = pytest.mark.integration

ALICE = new_key()
BOB = new_key()
ADMIN = new_key()


@pytest.fixture(scope="module")
def task_fleet(tmp_path_factory: pytest.TempPathFactory, redis_url: str) -> Iterator[Fleet]:
    keys = tmp_path_factory.mktemp("tasks-cli") / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"identity": "alice", "sha256": hash_key(ALICE)},
                    {"identity": "bob", "sha256": hash_key(BOB)},
                    {"identity": "root", "sha256": hash_key(ADMIN), "scopes": ["admin"]},
                ]
            }
        )
    )
    fleet = Fleet(redis_url, f"eftest-tasks-cli-{int(time.time() * 1000)}")
    fleet.default_auth = "required"
    try:
        fleet.start_dispatcher(task_poll_interval_ms=100, api_keys_file=keys)
        fleet.start_agent("edgefleet.agents.examples.echo", "eu-west")
        fleet.start_agent("edgefleet.agents.examples.trainer", "eu-west")
        yield fleet
    finally:
        fleet.stop()


def _client(fleet: Fleet, key: str) -> Client:
    http = httpx2.AsyncClient(headers={"authorization": f"Bearer {key}"}, timeout=30)
    return Client(streamable_http_client(fleet.mcp_url, http_client=http), mode="legacy")


async def alice_task(fleet: Fleet, name: str, arguments: dict[str, Any]) -> str:
    async with _client(fleet, ALICE) as client:
        return (await create_task(client, name, arguments)).task_id


def _env(key: str | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "OTEL_"))}
    if key is not None:
        env["EDGEFLEET_API_KEY"] = key
    return env


def cli(fleet: Fleet, *args: str, key: str | None = ALICE, url: str | None = None) -> subprocess.CompletedProcess[str]:
    """``edgefleet tasks ARGS --url URL`` with the key in EDGEFLEET_API_KEY (None: no credential)."""
    run = [sys.executable, "-m", "edgefleet.dispatcher", "tasks", *args, "--url", url or fleet.url]
    return subprocess.run(run, env=_env(key), cwd=ROOT, capture_output=True, text=True, timeout=60)


async def test_list_get_and_watch_a_training_task(task_fleet: Fleet) -> None:
    task_id = await alice_task(task_fleet, "trainer.train", {"epochs": 5})

    listed = await asyncio.to_thread(cli, task_fleet, "list")
    assert listed.returncode == 0, listed.stderr
    header, *rows = listed.stdout.splitlines()
    assert header.split() == ["ID", "TOOL", "STATUS", "PROGRESS", "AGE", "OWNER"]
    row = next(r.split() for r in rows if r.startswith(task_id))
    assert row[1] == "trainer.train" and row[2] in ("working", "completed") and row[-1] == "alice"

    got = await asyncio.to_thread(cli, task_fleet, "get", task_id)
    assert got.returncode == 0, got.stderr
    assert f"id        {task_id}" in got.stdout and "tool      trainer.train" in got.stdout
    assert any(
        line.startswith("status    ") and line.split()[1] in ("working", "completed")
        for line in got.stdout.splitlines()
    )

    watched = await asyncio.to_thread(cli, task_fleet, "watch", task_id)
    assert watched.returncode == 0, watched.stderr
    assert "5/5" in watched.stderr, watched.stderr  # the progress bar, at least its last state
    assert f"task {task_id} completed" in watched.stderr
    assert json.loads(watched.stdout)["epochs"] == 5  # structuredContent

    done = await asyncio.to_thread(cli, task_fleet, "get", task_id)
    assert "status    completed" in done.stdout and "progress  5/5" in done.stdout
    assert "history" in done.stdout and "result" in done.stdout and '"epochs": 5' in done.stdout
    raw = json.loads((await asyncio.to_thread(cli, task_fleet, "get", task_id, "--json")).stdout)
    assert (
        raw["id"] == task_id
        and raw["status"] == "completed"
        and [h["status"] for h in raw["history"]] == ["working", "completed"]
    )

    # Owners: bob sees neither the task nor its id; an admin sees everyone's and may filter.
    bob = await asyncio.to_thread(cli, task_fleet, "list", "--json", key=BOB)
    assert task_id not in {t["id"] for t in json.loads(bob.stdout)["tasks"]}
    hidden = await asyncio.to_thread(cli, task_fleet, "get", task_id, key=BOB)
    assert hidden.returncode == 1 and "not found" in hidden.stderr
    admin = await asyncio.to_thread(cli, task_fleet, "list", "--owner", "alice", "--json", key=ADMIN)
    assert task_id in {t["id"] for t in json.loads(admin.stdout)["tasks"]}


async def test_cancel_ctrl_c_paging_and_errors(task_fleet: Fleet) -> None:
    task_id = await alice_task(task_fleet, "echo.wait", {"seconds": 30})
    await alice_task(task_fleet, "echo.echo", {"text": "second, for paging"})

    # Ctrl-C on watch stops watching, not the task.
    run = [sys.executable, "-m", "edgefleet.dispatcher", "tasks", "watch", task_id, "--url", task_fleet.url]
    watcher = subprocess.Popen(
        run, env=_env(ALICE), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    await asyncio.sleep(2.0)
    watcher.send_signal(signal.SIGINT)
    _, err = await asyncio.to_thread(watcher.communicate, timeout=20)
    assert watcher.returncode == 130, err
    assert "[working]" in err and "stopped watching" in err
    view = httpx.get(
        f"{task_fleet.url}/v1/tasks/{task_id}", headers={"authorization": f"Bearer {ALICE}"}, timeout=10
    ).json()
    assert view["status"] == "working"

    page = await asyncio.to_thread(cli, task_fleet, "list", "--limit", "1")
    assert page.returncode == 0 and len(page.stdout.splitlines()) == 2
    assert "more: edgefleet tasks list --cursor " in page.stderr and "--limit 1" in page.stderr

    cancelled = await asyncio.to_thread(cli, task_fleet, "cancel", task_id)
    assert cancelled.returncode == 0, cancelled.stderr
    assert "status    cancelled - Cancelled by alice." in cancelled.stdout
    again = await asyncio.to_thread(cli, task_fleet, "cancel", task_id)
    assert again.returncode == 1 and again.stdout == ""
    assert (
        again.stderr.strip()
        == f"edgefleet: task {task_id} already finished (cancelled); only working tasks can be cancelled"
    )
    ended = await asyncio.to_thread(cli, task_fleet, "watch", task_id)
    assert ended.returncode == 1 and f"task {task_id} cancelled" in ended.stderr

    unknown = await asyncio.to_thread(cli, task_fleet, "get", "f" * 32)
    assert unknown.returncode == 1 and "not found" in unknown.stderr and len(unknown.stderr.splitlines()) == 1

    anonymous = await asyncio.to_thread(cli, task_fleet, "list", key=None)
    assert (
        anonymous.returncode == 1
        and "HTTP 401" in anonymous.stderr
        and "pass --key KEY or set EDGEFLEET_API_KEY" in anonymous.stderr
    )
    wrong = await asyncio.to_thread(cli, task_fleet, "get", task_id, "--key", "ef_" + "0" * 40, key=None)
    assert wrong.returncode == 1 and "HTTP 401" in wrong.stderr and "check the key" in wrong.stderr

    down = await asyncio.to_thread(cli, task_fleet, "watch", task_id, url=f"http://127.0.0.1:{free_port()}")
    assert down.returncode == 3 and "cannot reach the dispatcher" in down.stderr


def test_help_names_every_action() -> None:
    out = subprocess.run(
        [sys.executable, "-m", "edgefleet.dispatcher", "tasks", "--help"],
        env=_env(None),
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0 and all(action in out.stdout for action in ("list", "get", "watch", "cancel"))
