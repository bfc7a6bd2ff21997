"""Pipelines on Temporal, through real processes: the embedded Temporal server, dispatcher
processes and a ledger agent that writes down every execution of its tools (the proof of
"exactly once" is the agent's own file, not what the dispatcher reports).

A dispatcher killed -9 mid-step: the run finishes on another one, completed steps are not
run again; an idempotent step in flight is run again elsewhere, a non-idempotent one is
``outcome_unknown`` and the run compensates. A failing step compensates the completed ones
once each, in reverse; an approval waits across a dispatcher restart and goes on when
approved; a rejection compensates; a client's cancel compensates.
"""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import httpx2
import mcp_types as types
import pytest
import yaml
from mcp import Client, MCPError
from mcp.client.streamable_http import streamable_http_client

from edgefleet.dispatcher.security.auth import hash_key, new_key

from tests.dispatcher.tasks.test_tasks import create_task, legacy_result
from tests.support.fleet import ROOT, Fleet

pytestmark = pytest.mark.integration

LEDGER = "tests.support.ledger_agent"
HEARTBEAT_S = 2.0

CONFIG = """
pipelines:
  three:
    description: One, two (idempotent, slow), three.
    input_schema: {type: object, properties: {id: {type: string}, slow: {type: number}}, required: [id]}
    steps:
      - name: one
        tool: ledger.apply
        arguments: {key: "one-${input.id}"}
        compensate: {tool: ledger.undo, arguments: {key: "one-${input.id}"}}
      - name: two
        tool: ledger.upsert
        arguments: {key: "two-${input.id}", seconds: "${input.slow}"}
        timeout_s: 60
        compensate: {tool: ledger.undo, arguments: {key: "two-${input.id}"}}
      - name: three
        tool: ledger.apply
        arguments: {key: "three-${steps.two.text}"}
  unsafe:
    steps:
      - name: one
        tool: ledger.apply
        arguments: {key: "one-${input.id}"}
        compensate: {tool: ledger.undo, arguments: {key: "one-${input.id}"}}
      - name: two
        tool: ledger.apply
        arguments: {key: "two-${input.id}", seconds: 8}
        retry: {attempts: 3, backoff_s: 0.1}
        compensate: {tool: ledger.undo, arguments: {key: "two-${input.id}"}}
      - name: three
        tool: ledger.apply
        arguments: {key: "three-${input.id}"}
  failing:
    steps:
      - name: one
        tool: ledger.apply
        arguments: {key: "one-${input.id}"}
        compensate: {tool: ledger.undo, arguments: {key: "one-${input.id}"}}
      - name: two
        tool: ledger.apply
        arguments: {key: "two-${input.id}"}
        compensate: {tool: ledger.undo, arguments: {key: "two-${input.id}"}}
      - name: three
        tool: ledger.fail
        arguments: {key: "three-${input.id}"}
        retry: {attempts: 2, backoff_s: 0.05}
  review:
    steps:
      - name: one
        tool: ledger.apply
        arguments: {key: "one-${input.id}"}
        compensate: {tool: ledger.undo, arguments: {key: "one-${input.id}"}}
      - name: check
        approval: {timeout_s: 600, approvers: [alice], prompt: "Ship ${steps.one.text}?"}
      - name: three
        tool: ledger.apply
        arguments: {key: "three-${input.id} ${steps.check.structuredContent.comment}"}
"""


class Ledger:
    def __init__(self, path: Path) -> None:
        self.path = path

    def lines(self) -> list[str]:
        try:
            return self.path.read_text().splitlines()
        except FileNotFoundError:
            return []

    def count(self, line: str) -> int:
        return self.lines().count(line)


@pytest.fixture
def ledger(tmp_path: Path) -> Ledger:
    return Ledger(tmp_path / "ledger.log")


@pytest.fixture
def wf_fleet(
    redis_url: str, redis_prefix: str, temporal_address: str, task_queue: str, tmp_path: Path, ledger: Ledger
) -> Iterator[tuple[Fleet, dict[str, Any]]]:
    config = tmp_path / "edgefleet.yaml"
    config.write_text(CONFIG)
    # Agents outlive a killed dispatcher in the registry for this long (another one keeps routing to them).
    fleet = Fleet(redis_url, redis_prefix, heartbeat_ttl_s=30)
    settings = {
        "config_file": config,
        "temporal_address": temporal_address,
        "temporal_task_queue": task_queue,
        "temporal_heartbeat_s": HEARTBEAT_S,
        "task_poll_interval_ms": 200,
    }
    try:
        fleet.start_dispatcher(**settings)
        fleet.start_agent(LEDGER, "eu-west", env={"LEDGER_LOG": str(ledger.path)})
        yield fleet, settings
    finally:
        fleet.stop()


def raw(fleet: Fleet, method: str, path: str, url: str | None = None, **kwargs: Any) -> httpx.Response:
    return httpx.request(method, (url or fleet.url) + path, timeout=10, **kwargs)


def rest(fleet: Fleet, method: str, path: str, url: str | None = None, **kwargs: Any) -> Any:
    resp = raw(fleet, method, path, url, **kwargs)
    assert resp.status_code < 400, f"{method} {path}: {resp.status_code} {resp.text}"
    return resp.json()


def task_view(fleet: Fleet, task_id: str, url: str | None = None, **kwargs: Any) -> dict[str, Any]:
    view: dict[str, Any] = rest(fleet, "GET", f"/v1/tasks/{task_id}", url, **kwargs)
    return view


def wait_task(
    fleet: Fleet, task_id: str, *, timeout: float = 60, url: str | None = None, **kwargs: Any
) -> dict[str, Any]:
    found: dict[str, Any] = {}

    def terminal() -> bool:
        found.update(task_view(fleet, task_id, url, **kwargs))
        return found["status"] in ("completed", "failed", "cancelled")

    fleet.wait_for(terminal, f"task {task_id} to end", timeout=timeout)
    return found


def run_of(fleet: Fleet, tool: str, url: str | None = None) -> dict[str, Any]:
    """The newest run of ``tool``'s pipeline, as GET /v1/pipelines/runs/{run} shows it."""
    runs = rest(fleet, "GET", "/v1/pipelines/runs", url)["runs"]
    newest = next(r for r in runs if r["pipeline"] == tool.split(".", 1)[1])
    run: dict[str, Any] = rest(fleet, "GET", f"/v1/pipelines/runs/{newest['run']}", url)
    return run


async def start_task(fleet: Fleet, tool: str, arguments: dict[str, Any]) -> str:
    async with Client(fleet.mcp_url, mode="legacy") as client:
        task = await create_task(client, tool, arguments, ttl=600_000)
    assert task.status == "working"
    return task.task_id


def cli_run(fleet: Fleet, *args: str) -> subprocess.CompletedProcess[str]:
    command = [sys.executable, "-m", "edgefleet.dispatcher", *args, "--url", fleet.url]
    return subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=60, env=fleet.base_env)


def kill9(fleet: Fleet, index: int = 0) -> int:
    url, proc = fleet.dispatchers.pop(index)
    proc.kill9()
    return int(url.rsplit(":", 1)[1])


async def test_kill9_during_step_two_the_run_finishes_on_another_dispatcher_step_one_ran_once(
    wf_fleet: tuple[Fleet, dict[str, Any]], ledger: Ledger
) -> None:
    fleet, settings = wf_fleet
    task_id = await start_task(fleet, "edgefleet.three", {"id": "k9", "slow": 6})
    fleet.wait_for(
        lambda: ledger.count("START upsert two-k9") == 1, "step two to start on the first dispatcher", timeout=30
    )
    progress = task_view(fleet, task_id)
    assert progress["status"] == "working" and progress["path"] == "workflow"
    assert (
        progress["progress"] == {"progress": 1, "total": 3, "message": progress["message"]}
        and "two" in progress["message"]
    )
    other = fleet.start_dispatcher(**settings)  # a second dispatcher, with its own worker
    killed_at = time.monotonic()
    kill9(fleet, 0)
    fleet.wait_for(
        lambda: ledger.count("START upsert two-k9") == 2, "step two to run again on the other dispatcher", timeout=30
    )
    resumed_s = time.monotonic() - killed_at
    view = wait_task(fleet, task_id, url=other)
    assert view["status"] == "completed", view
    summary = view["result"]["structuredContent"]
    assert summary["status"] == "completed" and [s["status"] for s in summary["steps"]] == ["completed"] * 3
    assert summary["steps"][1]["attempts"] == 2  # the lost attempt, then the one that answered
    # The agent's own record: step one exactly once, step three once, nothing undone.
    assert ledger.count("START apply one-k9") == 1 and ledger.count("DONE apply one-k9") == 1
    assert ledger.count("DONE upsert two-k9") == 1 and ledger.count("START apply three-upsert two-k9") == 1
    assert not [line for line in ledger.lines() if line.startswith("START undo")]
    print(f"\nresumed on the other dispatcher {resumed_s:.1f} s after kill -9 (heartbeat timeout {HEARTBEAT_S} s)")


async def test_kill9_during_a_non_idempotent_step_never_runs_it_twice_and_compensates(
    wf_fleet: tuple[Fleet, dict[str, Any]], ledger: Ledger
) -> None:
    fleet, settings = wf_fleet
    task_id = await start_task(fleet, "edgefleet.unsafe", {"id": "u1"})
    fleet.wait_for(lambda: ledger.count("START apply two-u1") == 1, "step two to start", timeout=30)
    other = fleet.start_dispatcher(**settings)
    kill9(fleet, 0)
    view = wait_task(fleet, task_id, url=other)
    summary = view["result"]["structuredContent"]
    assert view["result"]["isError"] and summary["failed_step"]["step"] == "two"
    assert summary["failed_step"]["error"]["data"]["code"] == "outcome_unknown"
    assert [(c["step"], c["status"]) for c in summary["compensations"]] == [("one", "completed")]
    assert ledger.count("START apply two-u1") == 1, ledger.lines()  # never a silent second run
    assert ledger.count("START undo one-u1") == 1 and ledger.count("START apply three-u1") == 0


async def test_a_failing_third_step_compensates_two_then_one_once_each(
    wf_fleet: tuple[Fleet, dict[str, Any]], ledger: Ledger
) -> None:
    fleet, _ = wf_fleet
    async with Client(fleet.mcp_url) as client:  # an ordinary call: it waits for the run
        result = await client.call_tool("edgefleet.failing", {"id": "f1"})
    assert result.is_error
    summary = result.structured_content
    assert summary is not None and summary["failed_step"]["step"] == "three"
    assert "three-f1 failed on purpose" in summary["failed_step"]["error"]["message"]
    assert [(c["step"], c["status"]) for c in summary["compensations"]] == [("two", "completed"), ("one", "completed")]
    assert ledger.count("FAIL fail three-f1") == 2  # its retry policy: 2 attempts
    undos = [line for line in ledger.lines() if line.startswith("START undo")]
    assert undos == ["START undo two-f1", "START undo one-f1"]


async def test_an_approval_waits_across_a_dispatcher_restart_and_goes_on_when_approved(
    wf_fleet: tuple[Fleet, dict[str, Any]], ledger: Ledger
) -> None:
    fleet, settings = wf_fleet
    task_id = await start_task(fleet, "edgefleet.review", {"id": "a1"})
    fleet.wait_for(
        lambda: "check" in run_of(fleet, "edgefleet.review").get("waiting", {}), "the approval to wait", timeout=30
    )
    run = run_of(fleet, "edgefleet.review")
    assert run["waiting"]["check"]["prompt"] == "Ship apply one-a1?" and run["waiting"]["check"]["approvers"] == [
        "alice"
    ]
    assert "Waiting for approval of step check" in task_view(fleet, task_id)["message"]
    port = kill9(fleet, 0)
    fleet.start_dispatcher(port=port, **settings)  # a new process where the old one was
    assert task_view(fleet, task_id)["status"] == "working"
    # The CLI, as a person would: approve with a comment.
    cli = cli_run(fleet, "pipelines", "approve", run["run"], "check", "-m", "go")
    assert cli.returncode == 0, cli.stderr + cli.stdout
    assert "approved" in cli.stdout
    view = wait_task(fleet, task_id)
    assert view["status"] == "completed" and not view["result"]["isError"], view
    steps = {s["name"]: s for s in view["result"]["structuredContent"]["steps"]}
    assert steps["check"]["decided_by"] == "anonymous" and steps["check"]["comment"] == "go"
    assert ledger.count("START apply one-a1") == 1 and ledger.count("DONE apply three-a1 go") == 1


async def test_a_rejection_compensates_and_the_last_step_never_runs(
    wf_fleet: tuple[Fleet, dict[str, Any]], ledger: Ledger
) -> None:
    fleet, _ = wf_fleet
    task_id = await start_task(fleet, "edgefleet.review", {"id": "r1"})
    fleet.wait_for(
        lambda: "check" in run_of(fleet, "edgefleet.review").get("waiting", {}), "the approval to wait", timeout=30
    )
    run = run_of(fleet, "edgefleet.review")
    decided = rest(fleet, "POST", f"/v1/pipelines/runs/{run['run']}/steps/check/reject", json={"comment": "not today"})
    assert decided["decision"] == "rejected"
    view = wait_task(fleet, task_id)
    summary = view["result"]["structuredContent"]
    assert view["result"]["isError"] and summary["failed_step"]["error"]["data"]["code"] == "approval_rejected"
    assert "not today" in summary["failed_step"]["error"]["message"]
    assert ledger.count("START undo one-r1") == 1 and ledger.count("START apply three-r1 not today") == 0
    # A decided step is not waiting any more: a second decision is refused.
    again = raw(fleet, "POST", f"/v1/pipelines/runs/{run['run']}/steps/check/approve", json={})
    assert again.status_code in (404, 409) and again.json()["error"]["code"] in (
        "approval_not_pending",
        "run_not_found",
    )


async def test_cancel_from_a_client_stops_the_running_step_and_compensates(
    wf_fleet: tuple[Fleet, dict[str, Any]], ledger: Ledger
) -> None:
    fleet, _ = wf_fleet
    async with Client(fleet.mcp_url, mode="legacy") as client:
        task = await create_task(client, "edgefleet.three", {"id": "c1", "slow": 30}, ttl=600_000)
        fleet.wait_for(lambda: ledger.count("START upsert two-c1") == 1, "step two to start", timeout=30)
        await client.session.send_request(
            types.CancelTaskRequest(params=types.CancelTaskRequestParams(task_id=task.task_id)), types.CancelTaskResult
        )
    fleet.wait_for(lambda: ledger.count("START undo one-c1") == 1, "step one to be compensated", timeout=30)
    assert ledger.count("CANCELLED upsert two-c1") == 1  # the running step's call was stopped at the agent
    assert task_view(fleet, task.task_id)["status"] == "cancelled"
    fleet.wait_for(
        lambda: run_of(fleet, "edgefleet.three")["status"] == "canceled", "the run to end cancelled", timeout=30
    )
    run = run_of(fleet, "edgefleet.three")
    assert [(c["step"], c["status"]) for c in run["compensations"]] == [("one", "completed")]
    assert ledger.count("START undo two-c1") == 0 and ledger.count("START apply three-upsert two-c1") == 0


async def test_without_a_task_an_ordinary_call_returns_the_run_result(
    wf_fleet: tuple[Fleet, dict[str, Any]], ledger: Ledger
) -> None:
    fleet, _ = wf_fleet
    async with Client(fleet.mcp_url, mode="legacy") as client:
        result = await client.call_tool("edgefleet.three", {"id": "s1", "slow": 0})
        assert not result.is_error and result.structured_content is not None
        assert result.structured_content["output"] is not None and result.structured_content["run"].startswith("three-")
        task = await create_task(client, "edgefleet.three", {"id": "s2", "slow": 0})
        done = await legacy_result(client, task.task_id)
    assert not done.is_error and ledger.count("DONE apply three-upsert two-s2") == 1


BOB, ALICE, CAROL, MALLORY = (new_key() for _ in range(4))


def keyed(key: str) -> dict[str, str]:
    return {"authorization": f"Bearer {key}"}


def mcp_as(fleet: Fleet, key: str) -> Client:
    http = httpx2.AsyncClient(headers=keyed(key), timeout=30)
    return Client(streamable_http_client(fleet.mcp_url, http_client=http), mode="legacy")


async def test_auth_rules_who_may_start_see_and_decide(
    redis_url: str, redis_prefix: str, temporal_address: str, task_queue: str, tmp_path: Path, ledger: Ledger
) -> None:
    config = tmp_path / "edgefleet.yaml"
    config.write_text(CONFIG)
    keys = tmp_path / "keys.yaml"
    keys.write_text(
        yaml.safe_dump(
            {
                "keys": [
                    {"identity": "bob", "sha256": hash_key(BOB), "tools": ["edgefleet.review", "ledger.*"]},
                    {"identity": "alice", "sha256": hash_key(ALICE), "tools": ["text.*"]},
                    {"identity": "carol", "sha256": hash_key(CAROL), "tools": ["edgefleet.review"]},
                    {"identity": "mallory", "sha256": hash_key(MALLORY)},
                ]
            }
        )
    )
    fleet = Fleet(redis_url, redis_prefix)
    fleet.default_auth = "required"
    try:
        fleet.start_dispatcher(
            config_file=config, temporal_address=temporal_address, temporal_task_queue=task_queue, api_keys_file=keys
        )
        fleet.start_agent(LEDGER, "eu-west", env={"LEDGER_LOG": str(ledger.path)})
        # carol may call the pipeline but not the tools it calls: refused before anything runs.
        async with mcp_as(fleet, CAROL) as client:
            with pytest.raises(MCPError) as refused:
                await client.call_tool("edgefleet.review", {"id": "x"})
        assert refused.value.data["code"] == "tool_forbidden" and "ledger.apply" in refused.value.message
        async with mcp_as(fleet, BOB) as client:
            task = await create_task(client, "edgefleet.review", {"id": "au"}, ttl=600_000)
        runs = rest(fleet, "GET", "/v1/pipelines/runs", headers=keyed(BOB))["runs"]
        run = runs[0]["run"]
        fleet.wait_for(
            lambda: "check" in rest(fleet, "GET", f"/v1/pipelines/runs/{run}", headers=keyed(BOB)).get("waiting", {}),
            "the approval to wait",
            timeout=30,
        )
        # Starting a run is not approving it; a stranger does not even see it; the named approver does.
        mine = raw(fleet, "POST", f"/v1/pipelines/runs/{run}/steps/check/approve", json={}, headers=keyed(BOB))
        assert mine.status_code == 403 and mine.json()["error"]["code"] == "not_an_approver"
        stranger = raw(fleet, "GET", f"/v1/pipelines/runs/{run}", headers=keyed(MALLORY))
        assert stranger.status_code == 404 and stranger.json()["error"]["code"] == "run_not_found"
        assert rest(fleet, "GET", "/v1/pipelines/runs", headers=keyed(MALLORY))["runs"] == []
        assert raw(fleet, "POST", f"/v1/pipelines/runs/{run}/cancel", headers=keyed(ALICE)).status_code == 403
        decided = rest(
            fleet, "POST", f"/v1/pipelines/runs/{run}/steps/check/approve", json={"comment": "ok"}, headers=keyed(ALICE)
        )
        assert decided["by"] == "alice"
        view = wait_task(fleet, task.task_id, headers=keyed(BOB))
        assert view["status"] == "completed" and not view["result"]["isError"]
        assert ledger.count("DONE apply three-au ok") == 1  # run as bob (ledger.*), approved by alice
    finally:
        fleet.stop()
