"""The tasks extension (``io.modelcontextprotocol/tasks``, SEP-2663) for the official
``mcp`` client, which ships the extension hooks but no tasks runtime.

``Client(url, extensions=[TasksExtension()])`` advertises the extension on every request;
when a ``tools/call`` is answered with ``resultType: "task"`` the claim's resolver polls
``tasks/get`` (honouring ``pollIntervalMs``) and hands the caller the ordinary
``CallToolResult`` - or raises the task's JSON-RPC error - so ``client.call_tool`` keeps
its usual contract. ``on_task`` sees each task as it is created (to persist its id).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, Literal

from mcp import MCPError
from mcp.client.extension import ClaimContext, ClientExtension, ResultClaim
from mcp_types import CallToolResult, ErrorData, Request, RequestParams, Result
from pydantic import ConfigDict

from edgefleet.shared.constants import TASKS_EXTENSION

TERMINAL = ("completed", "failed", "cancelled")


class DetailedTask(Result):
    """``tasks/get`` answer: the task, with its result or error once it has one."""

    model_config = ConfigDict(extra="allow")
    task_id: str
    status: str
    status_message: str | None = None
    created_at: str | None = None
    last_updated_at: str | None = None
    ttl_ms: int | None = None
    poll_interval_ms: int | None = None
    result: dict[str, Any] | None = None
    error: dict[str, Any] | None = None


class TaskHandle(DetailedTask):
    """``CreateTaskResult`` of the extension: a Task with ``resultType: "task"``."""

    result_type: Literal["task"] = "task"


class TaskIdParams(RequestParams):
    task_id: str


class UpdateTaskParams(RequestParams):
    task_id: str
    input_responses: dict[str, Any]


class GetTask(Request[TaskIdParams, Literal["tasks/get"]]):
    method: Literal["tasks/get"] = "tasks/get"
    params: TaskIdParams
    name_param = "taskId"  # SEP-2663: Mcp-Name carries the task id


class CancelTask(Request[TaskIdParams, Literal["tasks/cancel"]]):
    method: Literal["tasks/cancel"] = "tasks/cancel"
    params: TaskIdParams
    name_param = "taskId"


class UpdateTask(Request[UpdateTaskParams, Literal["tasks/update"]]):
    method: Literal["tasks/update"] = "tasks/update"
    params: UpdateTaskParams
    name_param = "taskId"


async def get_task(session: Any, task_id: str) -> DetailedTask:
    task: DetailedTask = await session.send_request(GetTask(params=TaskIdParams(task_id=task_id)), DetailedTask)
    return task


async def cancel_task(session: Any, task_id: str) -> None:
    await session.send_request(CancelTask(params=TaskIdParams(task_id=task_id)), Result)


class TasksExtension(ClientExtension):
    identifier = TASKS_EXTENSION

    def __init__(
        self,
        *,
        on_task: Callable[[TaskHandle], Awaitable[None] | None] | None = None,
        min_poll_s: float = 0.05,
        max_poll_s: float = 5.0,
    ) -> None:
        self.on_task = on_task
        self.min_poll_s = min_poll_s
        self.max_poll_s = max_poll_s

    def claims(self) -> Sequence[ResultClaim[Any]]:
        return (ResultClaim(result_type="task", model=TaskHandle, resolve=self._resolve),)

    async def _resolve(self, handle: TaskHandle, ctx: ClaimContext) -> CallToolResult:
        if self.on_task is not None:
            maybe = self.on_task(handle)
            if maybe is not None:
                await maybe
        interval = handle.poll_interval_ms
        while True:
            await asyncio.sleep(min(self.max_poll_s, max(self.min_poll_s, (interval or 1000) / 1000)))
            task = await get_task(ctx.session, handle.task_id)
            interval = task.poll_interval_ms or interval
            if task.status == "completed" and task.result is not None:
                return CallToolResult.model_validate(task.result, by_name=False)
            if task.status in ("failed", "cancelled"):
                error = task.error or {
                    "code": -31499 if task.status == "cancelled" else -32603,
                    "message": task.status_message or f"task {task.status}",
                }
                raise MCPError.from_error_data(ErrorData.model_validate(error))
