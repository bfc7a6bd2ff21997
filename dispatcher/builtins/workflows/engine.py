"""The dispatcher's side of Temporal: the client, this process's worker, and pipeline runs.

Every dispatcher connects to the same Temporal namespace and polls one task queue with a
worker that has the pipeline workflow and its activities: whichever dispatcher is alive
runs whatever step is due, so a run outlives the dispatcher that started it.

A pipeline is called three ways, all starting a run here:

- as an MCP task (both eras; 2026-era clients of the tasks extension always get one, the
  pipeline being long-running): the run settles the task when it ends, the task's status
  and progress come from the run's ``status`` query, ``tasks/cancel`` cancels the run (this
  is the ``tasks.hosted.TaskHost`` the runner is given);
- as an ordinary call: the caller waits for the run's result; if its client leaves and the
  call becomes a task (2025 era), the run is told to settle that task;
- from the REST API and the CLI: list, get, approve/reject, cancel (``rest.pipelines``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import TYPE_CHECKING, Any

from temporalio.client import Client, WorkflowExecutionStatus, WorkflowFailureError, WorkflowHandle
from temporalio.common import WorkflowIDConflictPolicy
from temporalio.exceptions import CancelledError as TemporalCancelled
from temporalio.service import RPCError, RPCStatusCode
from temporalio.worker import Worker

from edgefleet.dispatcher.builtins.pipelines import PipelineSpec, tool_name
from edgefleet.dispatcher.builtins.workflows import access
from edgefleet.dispatcher.builtins.workflows.activities import PipelineActivities, caller_of, wire_order
from edgefleet.dispatcher.builtins.workflows.model import (
    ATTACH_SIGNAL,
    DECIDE_SIGNAL,
    STATUS_QUERY,
    WORKFLOW_NAME,
    Decision,
    RunInput,
)
from edgefleet.dispatcher.builtins.workflows.workflow import PipelineWorkflow
from edgefleet.dispatcher.security.auth import Identity
from edgefleet.dispatcher.tasks.hosted import HOSTED, LiveStatus
from edgefleet.shared import telemetry
from edgefleet.shared.errors import (
    ApprovalNotPending,
    InvalidParams,
    NotAnApprover,
    RunNotFound,
    TaskCancelled,
    TaskFinished,
    ToolForbidden,
    UpstreamError,
    UpstreamTimeout,
    WorkflowUnavailable,
)

if TYPE_CHECKING:
    from edgefleet.dispatcher.builtins.invoker import Invoker
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.paths.call import ToolCall
    from edgefleet.dispatcher.routing.router import RouteOrder
    from edgefleet.dispatcher.security.audit import AuditLog
    from edgefleet.dispatcher.tasks.model import TaskRecord
    from edgefleet.dispatcher.tasks.runner import TaskRunner
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.pipelines")

RUN_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,199}$")
MAX_COMMENT = 2000
QUERY_TIMEOUT = timedelta(seconds=3)
RPC_TIMEOUT = timedelta(seconds=10)
LIST_LIMIT = 200
# A dispatcher being stopped lets in-flight steps finish this long before they are cut
# (a cut non-idempotent step is then outcome_unknown; an idempotent one runs elsewhere).
GRACEFUL_STEPS = timedelta(seconds=10)
_NOBODY = Identity("anonymous", method="none")  # a call without an identity (none is ever admin here)


def new_run_id(pipeline: str) -> str:
    return f"{pipeline}-{secrets.token_hex(8)}"


class PipelineEngine:
    def __init__(
        self,
        settings: DispatcherSettings,
        invoker: Invoker,
        runner: TaskRunner,
        pipelines: dict[str, PipelineSpec],
        *,
        instance: str,
        audit: AuditLog | None = None,
    ) -> None:
        if settings.temporal_address is None:
            raise ValueError("PipelineEngine needs EDGEFLEET_TEMPORAL_ADDRESS")
        self.settings = settings
        self.address: str = settings.temporal_address
        self.invoker = invoker
        self.runner = runner
        self.pipelines = pipelines
        self.instance = instance
        self.audit = audit
        self.tools = {tool_name(name): name for name in pipelines}
        self.activities = PipelineActivities(invoker, runner)
        self.client: Client | None = None
        self.worker: Worker | None = None
        self._loops: list[asyncio.Task[None]] = []
        self._calls: dict[asyncio.Future[Any], str] = {}  # ordinary calls waiting here -> their run
        self._stopping = False
        self.connected = asyncio.Event()

    # -- life cycle ------------------------------------------------------------------------
    async def start(self, wait_s: float = 5.0) -> None:
        """Connect and start the worker; if Temporal is not there yet, keep trying in the
        background (calls meanwhile get ``workflow_unavailable``; runs wait in Temporal)."""
        self._loops.append(asyncio.create_task(self._connect(), name="temporal-connect"))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.connected.wait(), wait_s)

    async def _connect(self) -> None:
        delay = 0.5
        while True:
            try:
                api_key = self.settings.temporal_api_key.get_secret_value() or None
                client = await Client.connect(
                    self.address,
                    namespace=self.settings.temporal_namespace,
                    api_key=api_key,
                    tls=self.settings.temporal_tls or api_key is not None,
                    identity=self.instance,
                )
                break
            except Exception as exc:  # noqa: BLE001 - the SDK raises RuntimeError/RPCError; keep trying whatever it was
                log.warning("Temporal at %s not reachable (%s); retrying in %.1f s", self.address, exc, delay)
                await asyncio.sleep(delay)
                delay = min(delay * 2, 10.0)
        self.client = client
        self.worker = Worker(
            client,
            task_queue=self.settings.temporal_task_queue,
            workflows=[PipelineWorkflow],
            activities=[self.activities.call, self.activities.settle],
            identity=self.instance,
            graceful_shutdown_timeout=GRACEFUL_STEPS,
            # A run whose dispatcher died moves to another one's worker this fast (default 10 s).
            sticky_queue_schedule_to_start_timeout=timedelta(seconds=2),
        )
        self._loops.append(asyncio.create_task(self.worker.run(), name="temporal-worker"))
        self.connected.set()
        log.info(
            "pipelines run on Temporal at %s (namespace %s, task queue %s): crash-proof",
            self.address,
            self.settings.temporal_namespace,
            self.settings.temporal_task_queue,
        )

    def stopping(self) -> None:
        """The dispatcher is stopping: calls cut now are not cancellations of their runs."""
        self._stopping = True

    async def aclose(self) -> None:
        self._stopping = True
        if self.worker is not None:
            await self.worker.shutdown()
        for loop in self._loops:
            loop.cancel()
        await asyncio.gather(*self._loops, return_exceptions=True)

    def _client(self) -> Client:
        if self.client is None:
            raise WorkflowUnavailable(f"Temporal at {self.address} is not reachable yet.")
        return self.client

    # -- starting runs ---------------------------------------------------------------------
    async def start_run(
        self,
        pipeline: str,
        arguments: dict[str, Any],
        identity: Identity | None,
        order: RouteOrder,
        *,
        run_id: str,
        task_id: str | None = None,
    ) -> WorkflowHandle[Any, Any]:
        spec = self.pipelines[pipeline]
        identity = identity or _NOBODY
        # The caller must be allowed every tool the run may call (checked again per call).
        forbidden = sorted(t for t in spec.tools() if not identity.may_call(t))
        if forbidden:
            raise ToolForbidden(
                f"{identity.name!r} may not call {', '.join(forbidden)}, which pipeline {pipeline} calls.",
                data={"tools": forbidden, "pipeline": pipeline},
            )
        catalog = self.invoker.fleet.catalog
        idempotent = sorted(t for t in spec.tools() if (entry := catalog.get(t)) is not None and entry.idempotent)
        run = RunInput(
            pipeline,
            spec.model_dump(mode="json"),
            arguments,
            caller_of(identity),
            wire_order(order),
            idempotent,
            self.settings.temporal_heartbeat_s,
            task_id,
            telemetry.current_traceparent(),
        )
        memo = {
            "owner": identity.name,
            "pipeline": pipeline,
            "approvers": {s.name: list(s.approval.approvers) for s in spec.approvals() if s.approval is not None},
        }
        try:
            handle: WorkflowHandle[Any, Any] = await self._client().start_workflow(
                WORKFLOW_NAME,
                run,
                id=run_id,
                task_queue=self.settings.temporal_task_queue,
                memo=memo,
                # A retried start of the same run (same id) is the same run, never a second one.
                id_conflict_policy=WorkflowIDConflictPolicy.USE_EXISTING,
                static_summary=f"{tool_name(pipeline)} for {identity.name}",
                rpc_timeout=RPC_TIMEOUT,
            )
        except RPCError as exc:
            raise WorkflowUnavailable(f"Temporal did not start the run of {pipeline}: {exc.message}") from None
        log.info(
            "pipeline %s: run %s started for %s%s",
            pipeline,
            run_id,
            identity.name,
            f" (task {task_id[:8]})" if task_id else "",
        )
        return handle

    def handler(self, pipeline: str) -> Callable[[ToolCall], Awaitable[dict[str, Any]]]:
        """The builtin tool ``edgefleet.<pipeline>`` (an ordinary call waits for the run)."""

        async def run(call: ToolCall) -> dict[str, Any]:
            return await self.call(pipeline, call)

        return run

    async def call(self, pipeline: str, call: ToolCall) -> dict[str, Any]:
        run_id = new_run_id(pipeline)
        handle = await self.start_run(pipeline, call.arguments, call.identity, call.order, run_id=run_id)
        current = asyncio.current_task()
        if current is not None:
            self._calls[current] = run_id
        try:
            async with asyncio.timeout(call.timeout_s):
                result: dict[str, Any] = await handle.result()
                return result
        except TimeoutError:
            await self._cancel(handle)
            raise UpstreamTimeout(
                f"Pipeline {pipeline} did not finish within the call's deadline ({call.timeout_s:g} s); run {run_id} "
                "was cancelled and compensated. Call it as a task for long runs.",
                data={"run": run_id},
            ) from None
        except asyncio.CancelledError:
            if not self._stopping:  # the caller cancelled (or its task was): the run compensates
                await asyncio.shield(self._cancel(handle))
            raise
        except WorkflowFailureError as exc:
            if isinstance(exc.cause, TemporalCancelled):
                raise TaskCancelled(
                    f"Pipeline run {run_id} was cancelled; its completed steps were compensated.", data={"run": run_id}
                ) from None
            raise UpstreamError(
                f"Pipeline run {run_id} failed in the engine: {exc.cause or exc}", data={"run": run_id}
            ) from None
        except RPCError as exc:
            raise WorkflowUnavailable(
                f"Lost Temporal while waiting for run {run_id} (it goes on there): {exc.message}", data={"run": run_id}
            ) from None
        finally:
            if current is not None:
                self._calls.pop(current, None)

    async def _cancel(self, handle: WorkflowHandle[Any, Any]) -> None:
        try:
            await handle.cancel(rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status != RPCStatusCode.NOT_FOUND:
                log.error("run %s was not cancelled: %s", handle.id, exc.message)

    # -- tasks.hosted.TaskHost ---------------------------------------------------------------
    def hosts(self, entry: ToolEntry) -> bool:
        return entry.handler is not None and entry.public_name in self.tools

    def prepare(self, record: TaskRecord) -> None:
        record.request["run"] = new_run_id(self.tools[record.tool])

    async def start_task(
        self, record: TaskRecord, params: dict[str, Any], order: RouteOrder, identity: Identity | None
    ) -> None:
        arguments = params.get("arguments") if isinstance(params.get("arguments"), dict) else {}
        await self.start_run(
            self.tools[record.tool], arguments or {}, identity, order, run_id=record.request["run"], task_id=record.id
        )

    def adoptable(self, record: TaskRecord, work: asyncio.Future[Any]) -> bool:
        run_id = self._calls.get(work)
        if run_id is None:
            return False
        record.request["run"] = run_id
        return True

    async def attach(self, record: TaskRecord) -> None:
        try:
            await (
                self._client()
                .get_workflow_handle(record.request["run"])
                .signal(ATTACH_SIGNAL, record.id, rpc_timeout=RPC_TIMEOUT)
            )
        except (RPCError, WorkflowUnavailable) as exc:
            # The call still waits here and settles the task when the run ends.
            log.warning("task %s: run %s not told to settle it (%s)", record.id, record.request.get("run"), exc)

    async def status(self, record: TaskRecord) -> LiveStatus | None:
        run_id = record.request.get("run")
        if not isinstance(run_id, str) or self.client is None:
            return None
        try:
            state = await self.client.get_workflow_handle(run_id).query(STATUS_QUERY, rpc_timeout=QUERY_TIMEOUT)
        except Exception as exc:  # noqa: BLE001 - RPC or query failure: the stored record answers instead
            log.debug("run %s: no status (%s)", run_id, exc)
            return None
        message = str(state.get("message") or "")
        progress = {"progress": state.get("done", 0), "total": state.get("total", 0), "message": message}
        waiting = state.get("waiting") or {}
        step = next(iter(waiting), None)
        awaiting = {"run": run_id, "step": step, **waiting[step]} if step is not None else None
        return LiveStatus(message, progress, awaiting)

    async def cancel(self, record: TaskRecord, by: str) -> None:
        run_id = record.request.get("run")
        if isinstance(run_id, str):
            log.info("run %s cancelled by %s (task %s)", run_id, by, record.id[:8])
            await self._cancel(self._client().get_workflow_handle(run_id))

    # -- runs for the REST API and the CLI -------------------------------------------------------
    async def _find(self, run_id: str, identity: Identity) -> tuple[WorkflowHandle[Any, Any], dict[str, Any], Any]:
        """The run's handle, memo and description, if ``identity`` may see it."""
        if not RUN_ID.match(run_id):
            raise RunNotFound(data={"run": run_id})
        handle = self._client().get_workflow_handle(run_id)
        try:
            described = await handle.describe(rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            if exc.status == RPCStatusCode.NOT_FOUND:
                raise RunNotFound(data={"run": run_id}) from None
            raise WorkflowUnavailable(f"Temporal did not describe run {run_id}: {exc.message}") from None
        memo = dict(await described.memo())
        if described.workflow_type != WORKFLOW_NAME or not access.may_see(identity, memo):
            raise RunNotFound(data={"run": run_id})
        return handle, memo, described

    async def runs(self, identity: Identity, *, limit: int = 50) -> list[dict[str, Any]]:
        """Runs ``identity`` may see, newest first."""
        limit = max(1, min(limit, LIST_LIMIT))
        out: list[dict[str, Any]] = []
        query = f"WorkflowType = '{WORKFLOW_NAME}' AND TaskQueue = '{self.settings.temporal_task_queue}'"
        try:
            async for execution in self._client().list_workflows(query, limit=LIST_LIMIT * 5, rpc_timeout=RPC_TIMEOUT):
                memo = dict(await execution.memo())
                if access.may_see(identity, memo):
                    out.append(_summary(execution, memo))
                    if len(out) >= limit:
                        break
        except RPCError as exc:
            raise WorkflowUnavailable(f"Temporal did not list runs: {exc.message}") from None
        return out

    async def run(self, run_id: str, identity: Identity) -> dict[str, Any]:
        handle, memo, described = await self._find(run_id, identity)
        view = _summary(described, memo)
        state = await self._state(handle)
        if state is not None:
            view.update({k: state[k] for k in ("phase", "message", "steps", "waiting", "compensations") if k in state})
            view["progress"] = {"progress": state.get("done", 0), "total": state.get("total", 0)}
            view["task"] = bool(state.get("task_id"))
        if described.status == WorkflowExecutionStatus.COMPLETED:
            with contextlib.suppress(Exception):  # the trace above is the view; the result adds the output
                result = await handle.result(rpc_timeout=RPC_TIMEOUT)
                view["result"] = result.get("structuredContent", result) if isinstance(result, dict) else result
        return view

    async def _state(self, handle: WorkflowHandle[Any, Any]) -> dict[str, Any] | None:
        try:
            state: dict[str, Any] = await handle.query(STATUS_QUERY, rpc_timeout=QUERY_TIMEOUT)
            return state
        except Exception as exc:  # noqa: BLE001 - no worker answered: the description still stands
            log.debug("run %s: status query failed (%s)", handle.id, exc)
            return None

    async def decide(
        self, run_id: str, step: str, *, approve: bool, comment: str, identity: Identity
    ) -> dict[str, Any]:
        if len(comment) > MAX_COMMENT:
            raise InvalidParams(f"A comment is at most {MAX_COMMENT} characters.", data={"run": run_id})
        handle, memo, _ = await self._find(run_id, identity)
        state = await self._state(handle)
        if state is None:
            raise WorkflowUnavailable(f"No worker answered for run {run_id}; retry shortly.", data={"run": run_id})
        waiting = (state.get("waiting") or {}).get(step)
        if not isinstance(waiting, dict):
            raise ApprovalNotPending(
                f"Step {step} of run {run_id} is not waiting for a decision (phase {state.get('phase')}).",
                data={"run": run_id, "step": step},
            )
        pipeline = str(memo.get("pipeline", ""))
        if not access.may_decide(identity, pipeline, waiting.get("approvers") or []):
            raise NotAnApprover(
                f"{identity.name!r} may not decide step {step} of {pipeline}.", data={"run": run_id, "step": step}
            )
        try:
            await handle.signal(DECIDE_SIGNAL, Decision(step, approve, identity.name, comment), rpc_timeout=RPC_TIMEOUT)
        except RPCError as exc:
            raise WorkflowUnavailable(
                f"Temporal did not take the decision: {exc.message}", data={"run": run_id}
            ) from None
        decision = "approved" if approve else "rejected"
        if self.audit is not None:
            self.audit.record(
                "pipeline.decide", run=run_id, pipeline=pipeline, step=step, decision=decision, by=identity.name
            )
        log.info("run %s: step %s %s by %s", run_id, step, decision, identity.name)
        return {"run": run_id, "step": step, "decision": decision, "by": identity.name, "comment": comment}

    async def cancel_run(self, run_id: str, identity: Identity) -> dict[str, Any]:
        handle, memo, described = await self._find(run_id, identity)
        if not access.may_cancel(identity, memo):
            raise NotAnApprover(
                f"{identity.name!r} may not cancel run {run_id}: only who started it or an admin.", data={"run": run_id}
            )
        if described.status != WorkflowExecutionStatus.RUNNING:
            status = described.status.name.lower() if described.status else "closed"
            raise TaskFinished(f"Run {run_id} already ended ({status}).", data={"run": run_id, "status": status})
        state = await self._state(handle)
        task_id = state.get("task_id") if state else None
        record = await self.runner.store.get(task_id) if isinstance(task_id, str) else None
        if record is not None and not record.terminal and record.path == HOSTED:
            try:  # the task says cancelled at once, then the run is cancelled (runner.cancel)
                await self.runner.cancel(record, identity.name)
            except TaskFinished:
                await self._cancel(handle)
        else:
            await self._cancel(handle)
        if self.audit is not None:
            self.audit.record("pipeline.cancel", run=run_id, pipeline=memo.get("pipeline"), by=identity.name)
        return {"run": run_id, "cancelled": True, "by": identity.name}


def _summary(execution: Any, memo: dict[str, Any]) -> dict[str, Any]:
    status = execution.status.name.lower() if execution.status is not None else "unknown"
    return {
        "run": execution.id,
        "pipeline": memo.get("pipeline"),
        "owner": memo.get("owner"),
        "status": status,
        "started_at": execution.start_time.isoformat(timespec="milliseconds") if execution.start_time else None,
        "closed_at": execution.close_time.isoformat(timespec="milliseconds") if execution.close_time else None,
    }
