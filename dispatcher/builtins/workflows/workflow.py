"""The pipeline workflow: a run's orchestration, deterministic, replayed from its history.

Steps run in the spec's order, a parallel group's steps at once; each tool step is the
``edgefleet.pipeline.call`` activity (``policy`` says how it is retried and what a lost
attempt means); an approval step waits for a ``decide`` signal up to its timeout (a
durable timer: the wait survives every dispatcher restarting). When a step fails for good,
a person rejects, an approval expires or the run is cancelled, the compensations of the
completed steps run in reverse completion order, each an activity of its own (durable too).
The ``status`` query answers where the run is; a run that belongs to an MCP task settles it
with its outcome (``edgefleet.pipeline.settle``).

Versioning: the workflow replays its history on whichever dispatcher version picks it up,
so a change to the commands this code issues (activities, timers, their order) must be
guarded with ``workflow.patched(...)``; ``tests/dispatcher/builtins/test_workflow_replay.py``
replays recorded histories of earlier versions against this code (README, "Pipelines").
"""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Any

from temporalio import workflow
from temporalio.common import RetryPolicy
from temporalio.exceptions import ActivityError, ApplicationError
from temporalio.exceptions import CancelledError as ActivityCancelled

with workflow.unsafe.imports_passed_through():
    from edgefleet.dispatcher.builtins.pipelines import PipelineSpec, Step, render
    from edgefleet.dispatcher.builtins.workflows import policy
    from edgefleet.dispatcher.builtins.workflows.model import (
        ATTACH_SIGNAL,
        CALL_ACTIVITY,
        DECIDE_SIGNAL,
        SETTLE_ACTIVITY,
        STATUS_QUERY,
        WORKFLOW_NAME,
        CallInput,
        Decision,
        RunInput,
        Settlement,
    )
    from edgefleet.shared.errors import ApprovalExpired, ApprovalRejected, InvalidParams, OutcomeUnknown, UpstreamError


_HOW = {
    policy.LOST: "was lost with its dispatcher",
    "upstream_timeout": "did not answer in time",
    "outcome_unknown": "broke after it was sent",
}


class _StepFailed(Exception):
    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


@workflow.defn(name=WORKFLOW_NAME)
class PipelineWorkflow:
    def __init__(self) -> None:
        self.pipeline = ""
        self.phase = "running"  # running | compensating | completed | failed | cancelled
        self.trace: list[dict[str, Any]] = []
        self.compensations: list[dict[str, Any]] = []
        self.waiting: dict[str, dict[str, Any]] = {}  # approval steps waiting now: prompt, approvers, until
        self.decisions: dict[str, Decision] = {}
        self.task_id: str | None = None
        self.total = 0

    # -- handlers ------------------------------------------------------------------------
    @workflow.signal(name=DECIDE_SIGNAL)
    def decide(self, decision: Decision) -> None:
        # The dispatcher authorised the decider; a decision for a step not waiting (yet, or
        # any more) changes nothing: the first one while it waits counts.
        if decision.step in self.waiting and decision.step not in self.decisions:
            self.decisions[decision.step] = decision

    @workflow.signal(name=ATTACH_SIGNAL)
    def attach_task(self, task_id: str) -> None:
        """A synchronous call whose client left became an MCP task: settle it at the end."""
        self.task_id = self.task_id or task_id

    @workflow.query(name=STATUS_QUERY)
    def status(self) -> dict[str, Any]:
        done = sum(1 for t in self.trace if t["status"] == "completed")
        running = [t["name"] for t in self.trace if t["status"] in ("running", "waiting")]
        return {
            "pipeline": self.pipeline,
            "phase": self.phase,
            "done": done,
            "total": self.total,
            "running": running,
            "waiting": dict(self.waiting),
            "steps": list(self.trace),
            "compensations": list(self.compensations),
            "task_id": self.task_id,
            "message": self._message(done, running),
        }

    def _message(self, done: int, running: list[str]) -> str:
        if self.waiting:
            step, wait = next(iter(self.waiting.items()))
            return f"Waiting for approval of step {step} (until {wait['until']}): {wait['prompt']}"
        if self.phase == "compensating":
            return f"Compensating: {', '.join(c['step'] for c in self.compensations) or 'nothing'}."
        if self.phase == "running":
            return f"Step {min(done + 1, self.total)}/{self.total}: {', '.join(running) or 'starting'}."
        return f"Pipeline {self.pipeline} {self.phase}."

    # -- the run -------------------------------------------------------------------------
    @workflow.run
    async def run(self, run: RunInput) -> dict[str, Any]:
        spec = PipelineSpec.model_validate(run.spec)
        self.pipeline = run.pipeline
        self.task_id = self.task_id or run.task_id
        groups = spec.groups()
        self.total = sum(len(g) for g in groups)
        started = workflow.time()
        context: dict[str, Any] = {"input": run.arguments, "steps": {}}
        completed: list[Step] = []  # in completion order, for the saga
        failed: dict[str, Any] | None = None
        cancelled = False
        try:
            for group in groups:
                results = await asyncio.gather(
                    *(self._step(run, s, context, completed) for s in group), return_exceptions=True
                )
                errors = [r for r in results if isinstance(r, BaseException)]
                unexpected = [e for e in errors if not isinstance(e, _StepFailed)]
                if unexpected:
                    raise unexpected[0]
                if errors:
                    first = next(t for t in self.trace if t["status"] == "failed")
                    failed = {"step": first["name"], "tool": first.get("tool"), "error": first.get("error")}
                    break
        except asyncio.CancelledError:
            cancelled = True
        seen = {t["name"] for t in self.trace}
        self.trace.extend(
            {"name": s.name, "tool": s.tool or None, "status": "skipped", "attempts": 0}
            for g in groups
            for s in g
            if s.name not in seen
        )
        if failed or cancelled:
            await self._compensate(run, spec, completed, context)
        self.phase = "cancelled" if cancelled else "failed" if failed else "completed"
        result = self._result(run, spec, context, failed, cancelled, started)
        if self.task_id:
            await workflow.execute_activity(
                SETTLE_ACTIVITY,
                Settlement(self.task_id, "cancelled" if cancelled else "completed", result),
                start_to_close_timeout=timedelta(seconds=30),
                schedule_to_close_timeout=timedelta(days=1),
                retry_policy=RetryPolicy(
                    maximum_interval=timedelta(seconds=30)
                ),  # the task's store may be down a while
            )
        if cancelled:
            raise asyncio.CancelledError()  # the run is cancelled (compensated); its trace stays queryable
        return result

    def _result(
        self,
        run: RunInput,
        spec: PipelineSpec,
        context: dict[str, Any],
        failed: dict[str, Any] | None,
        cancelled: bool,
        started: float,
    ) -> dict[str, Any]:
        summary: dict[str, Any] = {
            "pipeline": run.pipeline,
            "run": workflow.info().workflow_id,
            "status": self.phase,
            "duration_ms": round((workflow.time() - started) * 1000, 3),
            "steps": self.trace,
        }
        if failed or cancelled:
            if failed:
                summary["failed_step"] = failed
            summary["compensations"] = self.compensations
            undone = ", ".join(c["step"] for c in self.compensations) or "nothing"
            if failed:
                message = (failed.get("error") or {}).get("message", "failed")
                text = f"Pipeline {run.pipeline} failed at step {failed['step']}: {message}. Compensated: {undone}."
            else:
                text = f"Pipeline {run.pipeline} was cancelled. Compensated: {undone}."
            return {"content": [{"type": "text", "text": text}], "structuredContent": summary, "isError": True}
        last = spec.groups()[-1][-1]
        output = context["steps"].get(last.name) or {}
        summary["output"] = output.get("structuredContent", output)
        text = f"Pipeline {run.pipeline} completed {len(self.trace)} steps in {summary['duration_ms']:.0f} ms."
        return {"content": [{"type": "text", "text": text}], "structuredContent": summary, "isError": False}

    async def _step(self, run: RunInput, step: Step, context: dict[str, Any], completed: list[Step]) -> None:
        entry: dict[str, Any] = {"name": step.name, "tool": step.tool or None, "status": "running", "attempts": 0}
        if step.approval is not None:
            entry["kind"] = "approval"
        self.trace.append(entry)
        began = workflow.time()
        try:
            result = await (
                self._approval(run, step, context, entry)
                if step.approval is not None
                else self._tool_step(run, step, context, entry)
            )
        except _StepFailed as exc:
            entry.update(status="failed", error=exc.error)
            raise
        except asyncio.CancelledError:
            entry["status"] = "cancelled"
            raise
        finally:
            entry["duration_ms"] = round((workflow.time() - began) * 1000, 3)
        entry["status"] = "completed"
        context["steps"][step.name] = result
        completed.append(step)

    async def _tool_step(
        self, run: RunInput, step: Step, context: dict[str, Any], entry: dict[str, Any]
    ) -> dict[str, Any]:
        try:
            arguments = render(step.arguments, context)
        except KeyError as exc:
            raise _StepFailed(
                InvalidParams(f"argument mapping: no value at {exc.args[0]}", data={"step": step.name}).to_jsonrpc()
            ) from None
        out = await self._call(
            run,
            step.name,
            step.tool,
            arguments,
            step.timeout_s,
            step.region,
            entry,
            attempts=step.retry.attempts,
            backoff_s=step.retry.backoff_s,
            max_backoff_s=step.retry.max_backoff_s,
        )
        entry.update({k: out[k] for k in ("region", "replica") if out.get(k)})
        result: dict[str, Any] = out["result"]
        return result

    async def _call(
        self,
        run: RunInput,
        step: str,
        tool: str,
        arguments: dict[str, Any],
        timeout_s: float,
        region: str | None,
        entry: dict[str, Any],
        *,
        attempts: int,
        backoff_s: float,
        max_backoff_s: float,
        compensation: bool = False,
    ) -> dict[str, Any]:
        idempotent = tool in run.idempotent
        schedules = policy.schedules(attempts, idempotent=idempotent)
        request = CallInput(
            workflow.info().workflow_id,
            run.pipeline,
            step,
            tool,
            arguments,
            timeout_s,
            run.caller,
            run.order,
            region=region,
            compensation=compensation,
            traceparent=run.traceparent,
        )
        schedule = takeovers = 0
        while True:
            schedule += 1
            try:
                out: dict[str, Any] = await workflow.execute_activity(
                    CALL_ACTIVITY,
                    request,
                    result_type=dict,
                    start_to_close_timeout=policy.start_to_close(timeout_s, run.heartbeat_s),
                    heartbeat_timeout=timedelta(seconds=run.heartbeat_s),
                    retry_policy=policy.activity_retry(attempts, backoff_s, max_backoff_s, idempotent=idempotent),
                    # A cancelled run waits until the step's call is really stopped before it compensates.
                    cancellation_type=workflow.ActivityCancellationType.WAIT_CANCELLATION_COMPLETED,
                    summary=f"{'undo ' if compensation else ''}{step}: {tool}",
                )
                entry["attempts"] = entry.get("attempts", 0) + int(out.get("attempt", 1))
                return out
            except ActivityError as exc:
                cause = exc.cause
                if isinstance(cause, ActivityCancelled):
                    raise asyncio.CancelledError() from None  # only the run's own cancel stops a call
                kind, error = _failure(cause, tool, step)
                if kind == policy.LOST and idempotent and takeovers < policy.TAKEOVERS:
                    # Its dispatcher died (or hung) mid-call: not the step's failure. Safe to run
                    # again (idempotent), on whichever dispatcher's worker is alive.
                    takeovers += 1
                    entry["attempts"] = entry.get("attempts", 0) + 1
                    continue
                # Temporal made every attempt of an idempotent call unless the failure was permanent.
                entry["attempts"] = entry.get("attempts", 0) + (
                    attempts if idempotent and kind not in policy.PERMANENT else 1
                )
                if kind in policy.MAY_HAVE_RUN and not idempotent:
                    raise _StepFailed(
                        OutcomeUnknown(
                            f"{tool} may or may not have run (its call {_HOW[kind]}); "
                            "it does not declare idempotentHint, so it was not called again.",
                            data={"tool": tool, "step": step, "cause": kind},
                        ).to_jsonrpc()
                    ) from None
                if idempotent or schedule >= schedules or not policy.again(kind):
                    raise _StepFailed(error) from None
                await workflow.sleep(policy.backoff(schedule, backoff_s, max_backoff_s))

    async def _approval(
        self, run: RunInput, step: Step, context: dict[str, Any], entry: dict[str, Any]
    ) -> dict[str, Any]:
        approval = step.approval
        assert approval is not None
        try:
            prompt = (
                str(render(approval.prompt, context))
                if approval.prompt
                else f"Approve step {step.name} of {run.pipeline}?"
            )
        except KeyError:
            prompt = approval.prompt
        until = workflow.now() + timedelta(seconds=approval.timeout_s)
        self.waiting[step.name] = {
            "prompt": prompt,
            "approvers": list(approval.approvers),
            "until": until.isoformat(timespec="seconds"),
        }
        entry["status"] = "waiting"
        try:
            await workflow.wait_condition(
                lambda: step.name in self.decisions, timeout=timedelta(seconds=approval.timeout_s)
            )
        except TimeoutError:
            raise _StepFailed(
                ApprovalExpired(
                    f"Nobody decided step {step.name} within {approval.timeout_s:g} s.", data={"step": step.name}
                ).to_jsonrpc()
            ) from None
        finally:
            self.waiting.pop(step.name, None)
        decision = self.decisions[step.name]
        entry.update(decided_by=decision.by, comment=decision.comment)
        if not decision.approve:
            reason = f": {decision.comment}" if decision.comment else "."
            raise _StepFailed(
                ApprovalRejected(
                    f"{decision.by} rejected step {step.name}{reason}",
                    data={"step": step.name, "by": decision.by, "comment": decision.comment},
                ).to_jsonrpc()
            )
        return {
            "content": [{"type": "text", "text": decision.comment or "approved"}],
            "structuredContent": {"approved": True, "by": decision.by, "comment": decision.comment},
        }

    async def _compensate(
        self, run: RunInput, spec: PipelineSpec, completed: list[Step], context: dict[str, Any]
    ) -> None:
        """Undo completed steps, last completed first; a failing compensation is recorded and
        the others still run (nobody is left to undo it for us)."""
        self.phase = "compensating"
        for step in reversed(completed):
            if step.compensate is None:
                continue
            item: dict[str, Any] = {"step": step.name, "tool": step.compensate.tool, "status": "running", "attempts": 0}
            self.compensations.append(item)
            began = workflow.time()
            try:
                arguments = render(step.compensate.arguments, context)
                await self._call(
                    run,
                    step.name,
                    step.compensate.tool,
                    arguments,
                    step.compensate.timeout_s,
                    step.region,
                    item,
                    attempts=policy.COMPENSATION_ATTEMPTS,
                    backoff_s=policy.COMPENSATION_BACKOFF_S,
                    max_backoff_s=policy.COMPENSATION_MAX_BACKOFF_S,
                    compensation=True,
                )
                item["status"] = "completed"
            except KeyError as exc:
                item.update(
                    status="failed", error=InvalidParams(f"argument mapping: no value at {exc.args[0]}").to_jsonrpc()
                )
            except _StepFailed as exc:
                item.update(status="failed", error=exc.error)
            item["duration_ms"] = round((workflow.time() - began) * 1000, 3)


def _failure(cause: BaseException | None, tool: str, step: str) -> tuple[str, dict[str, Any]]:
    """(kind, JSON-RPC error) of a failed call activity: the activity's own error, or an
    attempt that ended without an answer (timed out: its dispatcher died or hung)."""
    if isinstance(cause, ApplicationError):
        kind = cause.type or "upstream_error"
        details = cause.details[0] if cause.details and isinstance(cause.details[0], dict) else None
        return kind, details or UpstreamError(cause.message, data={"tool": tool, "step": step}).to_jsonrpc()
    return policy.LOST, UpstreamError(
        f"The call of {tool} was lost ({cause or 'no answer'}).",
        data={"tool": tool, "step": step, "code": "upstream_error"},
    ).to_jsonrpc()
