"""The ``tasks/*`` methods of both protocol eras, over the store and the runner.

2025-11-25 (SEP-1686): ``tasks/get``, ``tasks/result`` (blocks until the task is terminal
and answers exactly what the call would have), ``tasks/list`` (the caller's own, paged),
``tasks/cancel`` (answers the cancelled task). 2026-07-28 extension (SEP-2663):
``tasks/get`` (result or error inline), ``tasks/update``, ``tasks/cancel`` (ack only).

A task is visible to the identity that created it, and to admins; to anyone else it does
not exist (the same ``task_not_found`` as an unknown id, so ids cannot be probed).

Every request of a client, MCP or REST, is counted once against the identity's task-method
rate limit (``EDGEFLEET_TASK_RATE_LIMIT``, across the fleet) before anything is read: the
public methods call ``admit``; ``find`` is the plain lookup they (and re-reads while a
request waits) use, and counts nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import TYPE_CHECKING, Any

import orjson

from edgefleet.dispatcher.paths.answer import Answer, fail, send_message
from edgefleet.dispatcher.tasks.model import TaskRecord
from edgefleet.dispatcher.tasks.store import BadCursor, TaskStore
from edgefleet.shared import sse
from edgefleet.shared.constants import META_RELATED_TASK
from edgefleet.shared.errors import InvalidParams, TaskFinished, TaskNotFound

if TYPE_CHECKING:
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.dispatcher.security.rate_limits import RateLimits
    from edgefleet.dispatcher.tasks.runner import TaskRunner

# tasks/result re-reads the record at least this often even without an event (a lost
# pub/sub message must not hang a waiter).
RECHECK_S = 5.0


def task_id_of(params: dict[str, Any]) -> str:
    task_id = params.get("taskId")
    if not isinstance(task_id, str) or not task_id:
        raise InvalidParams("params.taskId (a string) is required.")
    return task_id


class TaskMethods:
    def __init__(self, store: TaskStore, runner: TaskRunner, *, limits: RateLimits | None = None) -> None:
        self.store = store
        self.runner = runner
        self.limits = limits

    async def admit(self, identity: Identity) -> None:
        """Count one request of ``identity``; RateLimited (with retry_after_s) when over the limit."""
        if self.limits is not None:
            await self.limits.admit_task_method(identity.name)

    async def find(self, task_id: str, identity: Identity) -> TaskRecord:
        record = await self.store.get(task_id)
        if record is None or not (record.owner == identity.name or identity.admin):
            raise TaskNotFound(data={"taskId": task_id})
        return await self.runner.live(record)  # hosted tasks: status from their engine

    async def lookup(self, task_id: str, identity: Identity) -> TaskRecord:
        """``find`` for a new request (REST get, cancel, event stream): counted."""
        await self.admit(identity)
        return await self.find(task_id, identity)

    async def _page(
        self, owner: str | None, cursor: str | None, limit: int, bad_cursor: str
    ) -> tuple[list[TaskRecord], str | None]:
        try:
            return await self.store.list(owner, cursor=cursor, limit=limit)
        except BadCursor:
            raise InvalidParams(bad_cursor) from None

    # -- REST (operators, non-MCP callers) -------------------------------------------------
    async def rest_list(
        self, identity: Identity, *, owner: str | None = None, cursor: str | None = None, limit: int = 50
    ) -> dict[str, Any]:
        """GET /v1/tasks: the caller's tasks, newest first; an admin's are everyone's, or ``owner``'s."""
        await self.admit(identity)
        if not identity.admin:
            owner = identity.name  # everyone else sees only their own
        records, next_cursor = await self._page(
            owner, cursor, limit, "Unknown cursor: pass back the next_cursor of a previous page."
        )
        return {"tasks": [r.rest(detail=False) for r in records], "next_cursor": next_cursor}

    # -- 2025-11-25 ----------------------------------------------------------------------
    async def legacy_get(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        await self.admit(identity)
        return (await self.find(task_id_of(params), identity)).legacy()

    async def legacy_list(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        await self.admit(identity)
        cursor = params.get("cursor")
        if cursor is not None and not isinstance(cursor, str):
            raise InvalidParams("params.cursor must be a string from a previous tasks/list.")
        # What tasks/get would show must be listable: an admin's list is everyone's.
        records, next_cursor = await self._page(
            None if identity.admin else identity.name,
            cursor,
            50,
            "Unknown cursor: pass back the nextCursor of a previous tasks/list.",
        )
        result: dict[str, Any] = {"tasks": [r.legacy() for r in records]}
        if next_cursor:
            result["nextCursor"] = next_cursor
        return result

    async def legacy_cancel(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        await self.admit(identity)
        record = await self.find(task_id_of(params), identity)
        await self.runner.cancel(record, identity.name)
        return (await self.find(record.id, identity)).legacy()

    async def legacy_result(
        self, request_id: Any, params: dict[str, Any], identity: Identity, answer: Answer, *, stream: bool
    ) -> None:
        """Block until the task is terminal, then answer what the call would have answered.

        With an SSE-capable client the wait is a stream: progress the agent reports is
        relayed as ``notifications/progress`` (the call's own progressToken, tagged with the
        related task), so a client waiting here sees the work move."""
        await self.admit(identity)
        task_id = task_id_of(params)
        record = await self.find(task_id, identity)
        token = (
            (record.request.get("_meta") or {}).get("progressToken")
            if isinstance(record.request.get("_meta"), dict)
            else None
        )
        related = {META_RELATED_TASK: {"taskId": task_id}}
        # Progress is relayed only to a client that waits for it (not after the fact).
        last_progress: Any = record.progress if record.terminal else None
        async with self.store.events.watch(task_id) as events:
            record = await self.find(task_id, identity)  # again, now that no change can be missed
            while True:
                if stream and token is not None and record.progress and record.progress != last_progress:
                    last_progress = record.progress
                    note = {
                        "jsonrpc": "2.0",
                        "method": "notifications/progress",
                        "params": {"progressToken": token, **record.progress, "_meta": related},
                    }
                    await answer.open_stream(None)
                    await answer.send_events(sse.frame(orjson.dumps(note)))
                if record.terminal:
                    break
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(events.get(), RECHECK_S)
                while not events.empty():
                    events.get_nowait()
                try:
                    record = await self.find(task_id, identity)
                except TaskNotFound as exc:  # expired while we waited
                    await fail(answer, request_id, exc)
                    return
        outcome = record.outcome()
        if "result" in outcome:
            result = dict(outcome["result"])
            meta = result.get("_meta")
            result["_meta"] = {**(meta if isinstance(meta, dict) else {}), **related}
            message = {"jsonrpc": "2.0", "id": request_id, "result": result}
        else:
            error = dict(outcome["error"])
            data = error.get("data")
            error["data"] = {**(data if isinstance(data, dict) else {}), "_meta": related}
            message = {"jsonrpc": "2.0", "id": request_id, "error": error}
        await send_message(answer, orjson.dumps(message), None)

    # -- 2026-07-28 extension --------------------------------------------------------------
    async def modern_get(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        await self.admit(identity)
        return {"resultType": "complete", **(await self.find(task_id_of(params), identity)).modern()}

    async def modern_cancel(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        await self.admit(identity)
        record = await self.find(task_id_of(params), identity)
        # SEP-2663: an ack, even when the task finished first (it then stays as it ended).
        with contextlib.suppress(TaskFinished):
            await self.runner.cancel(record, identity.name)
        return {"resultType": "complete"}

    async def modern_update(self, params: dict[str, Any], identity: Identity) -> dict[str, Any]:
        await self.admit(identity)
        record = await self.find(task_id_of(params), identity)
        responses = params.get("inputResponses")
        if not isinstance(responses, dict):
            raise InvalidParams(
                "params.inputResponses must be an object keyed by inputRequests keys.", data={"taskId": record.id}
            )
        # Tasks hosted here never ask for input (no inputRequests are outstanding), and the
        # spec says responses to keys that are not outstanding are ignored: acknowledge.
        return {"resultType": "complete"}
