"""Record the histories ``test_workflow_replay`` replays: real runs of every shape the
pipeline workflow has (parallel group, retries, compensation, approval approved and
rejected, a lost step taken over, cancel), on the embedded Temporal with real dispatcher
and agent processes.

Run it when the workflow's commands change on purpose, AFTER guarding the change with
``workflow.patched(...)``: it adds this version's histories next to the older ones. Never
delete the histories of a version while runs started by it may still be waiting.

    python -m tests.dispatcher.builtins.histories.record v1
"""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from pathlib import Path

import httpx
from mcp import Client
from temporalio.client import Client as TemporalClient

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis
from edgefleet.dispatcher.devtools.embedded_temporal import EmbeddedTemporal

from tests.dispatcher.builtins.test_pipeline_workflows import CONFIG, LEDGER
from tests.dispatcher.tasks.test_tasks import create_task
from tests.support.fleet import Fleet

HERE = Path(__file__).parent
EXTRA = """
  wide:
    steps:
      - parallel:
          - {name: left, tool: ledger.upsert, arguments: {key: "l-${input.id}"}}
          - {name: right, tool: ledger.apply, arguments: {key: "r-${input.id}"}}
      - name: last
        tool: ledger.apply
        arguments: {key: "${steps.left.text} ${steps.right.text}"}
"""


def post(url: str, **kwargs: object) -> None:
    httpx.post(url, timeout=10, **kwargs)  # type: ignore[arg-type]


def wait(predicate: object, what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.1)
    raise SystemExit(f"timed out waiting for {what}")


async def main(version: str) -> None:
    tmp = Path(tempfile.mkdtemp(prefix="edgefleet-record-"))
    (tmp / "edgefleet.yaml").write_text(CONFIG + EXTRA)
    ledger = tmp / "ledger.log"
    with EmbeddedRedis() as redis, EmbeddedTemporal() as temporal:
        fleet = Fleet(redis.url, "record", heartbeat_ttl_s=30)
        settings = {
            "config_file": tmp / "edgefleet.yaml",
            "temporal_address": temporal.address,
            "temporal_task_queue": "record",
            "temporal_heartbeat_s": 2.0,
        }
        try:
            fleet.start_dispatcher(**settings)
            fleet.start_agent(LEDGER, "eu-west", env={"LEDGER_LOG": str(ledger)})
            runs: dict[str, str] = {}

            def newest(pipeline: str) -> str:
                found = httpx.get(fleet.url + "/v1/pipelines/runs", timeout=10).json()["runs"]
                return str(next(r["run"] for r in found if r["pipeline"] == pipeline))

            def waiting(run: str) -> bool:
                return "check" in (
                    httpx.get(f"{fleet.url}/v1/pipelines/runs/{run}", timeout=10).json().get("waiting") or {}
                )

            async with Client(fleet.mcp_url, mode="legacy") as client:
                await client.call_tool("edgefleet.wide", {"id": "w"})
                runs["parallel"] = newest("wide")
                await client.call_tool("edgefleet.failing", {"id": "f"})
                runs["compensation"] = newest("failing")
                for decision in ("approve", "reject"):
                    await create_task(client, "edgefleet.review", {"id": decision})
                    run = newest("review")
                    wait(lambda run=run: waiting(run), "the approval")
                    post(f"{fleet.url}/v1/pipelines/runs/{run}/steps/check/{decision}", json={"comment": decision})
                    runs[f"approval-{decision}"] = run
                task = await create_task(client, "edgefleet.three", {"id": "c", "slow": 30})
                wait(lambda: "START upsert two-c" in ledger.read_text(), "step two")
                post(f"{fleet.url}/v1/tasks/{task.task_id}/cancel")
                runs["cancel"] = newest("three")
                await create_task(client, "edgefleet.three", {"id": "k", "slow": 6})
                wait(lambda: "START upsert two-k" in ledger.read_text(), "step two")
                runs["takeover"] = newest("three")
                fleet.start_dispatcher(**settings)
                fleet.dispatchers.pop(0)[1].kill9()
            client_t = await TemporalClient.connect(temporal.address)
            for shape, run in runs.items():
                handle = client_t.get_workflow_handle(run)
                for _ in range(600):
                    if (await handle.describe()).close_time is not None:
                        break
                    await asyncio.sleep(0.1)
                history = await handle.fetch_history()
                (HERE / f"{version}-{shape}.json").write_text(history.to_json())
                print(f"{version}-{shape}.json: {len(history.events)} events")
        finally:
            fleet.stop()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1] if len(sys.argv) > 1 else "v1"))
