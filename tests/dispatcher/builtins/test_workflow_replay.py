"""Workflow versioning: runs started by an earlier dispatcher version must replay on this
code. Each ``histories/*.json`` is a real run of an earlier version (recorded by
``histories/record.py``); replaying it here fails on any change to the commands the
workflow issues that is not guarded with ``workflow.patched(...)``. The second test shows
that this check can fail: a workflow that skips its compensations does not replay."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from temporalio import workflow
from temporalio.client import WorkflowHistory
from temporalio.worker import Replayer

from edgefleet.dispatcher.builtins.workflows.model import WORKFLOW_NAME, RunInput
from edgefleet.dispatcher.builtins.workflows.workflow import PipelineWorkflow

HISTORIES = sorted((Path(__file__).parent / "histories").glob("*.json"))


def load(path: Path) -> WorkflowHistory:
    return WorkflowHistory.from_json(path.stem, path.read_text())


def test_histories_of_every_shape_are_kept() -> None:
    shapes = {p.stem.split("-", 1)[1] for p in HISTORIES}
    assert {"parallel", "compensation", "approval-approve", "approval-reject", "cancel", "takeover"} <= shapes


@pytest.mark.parametrize("path", HISTORIES, ids=[p.stem for p in HISTORIES])
async def test_recorded_runs_replay_on_this_code(path: Path) -> None:
    await Replayer(workflows=[PipelineWorkflow]).replay_workflow(load(path))


@workflow.defn(name=WORKFLOW_NAME)
class _SkipsCompensations(PipelineWorkflow):
    """An unguarded change: no compensations any more."""

    @workflow.run
    async def run(self, run: RunInput) -> dict[str, Any]:
        return await super().run(run)

    async def _compensate(self, *args: Any) -> None:
        return None


async def test_an_unguarded_change_does_not_replay() -> None:
    history = load(next(p for p in HISTORIES if p.stem.endswith("-compensation")))
    result = await Replayer(workflows=[_SkipsCompensations]).replay_workflow(history, raise_on_replay_failure=False)
    assert result.replay_failure is not None
