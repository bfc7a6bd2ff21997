"""How a running tool call ends early, as each protocol era says, and how it becomes a task.

- 2026-07-28: the client closing the response stream IS the cancel (the transport spec):
  the forwarding is cancelled, which closes the upstream connection, which cancels the
  agent's handler (``by_disconnect``). A client that declared the tasks extension gets a
  task instead when the call runs long (``promotable``).
- 2025-11-25: ``notifications/cancelled`` cancels; a dropped connection does not (the
  spec: disconnection is not cancellation), so the call goes on as a task of the same
  owner, found again with tasks/list or /v1/tasks (``by_notification``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any, Protocol

from edgefleet.dispatcher.paths.answer import send_message
from edgefleet.dispatcher.tasks.sink import TaskSink
from edgefleet.shared import jsonrpc
from edgefleet.shared.errors import EdgefleetError, TooManyTasks

if TYPE_CHECKING:
    from edgefleet.dispatcher.mcp.bridge import EraAnswer
    from edgefleet.dispatcher.mcp.sessions import Session
    from edgefleet.dispatcher.paths.answer import Answer
    from edgefleet.dispatcher.paths.call import ToolCall
    from edgefleet.dispatcher.tasks.model import TaskRecord
    from edgefleet.dispatcher.tasks.runner import TaskRunner
    from edgefleet.shared.asgi import Disconnects, Receive
    from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.mcp")


class Dispatch(Protocol):
    """Where a call runs: the dispatch point (``paths.dispatch.CallPaths``), or the same with
    a 2026-era agent's rounds asked of a 2025-era client in between (``mcp.shim``)."""

    async def call(self, call: ToolCall, answer: Answer) -> None: ...


MakeRecord = Callable[[str], "TaskRecord"]


class Cancellation:
    def __init__(self, settings: DispatcherSettings, runner: TaskRunner | None) -> None:
        self.settings = settings
        self.runner = runner
        # (session id, request id) -> the asyncio task running that call, for notifications/cancelled.
        self.legacy_inflight: dict[tuple[str, Any], asyncio.Task[None]] = {}

    def cancel_legacy(self, session_id: str, request_id: Any) -> None:
        """``notifications/cancelled`` for a session's request (unknown ids are ignored, as the spec says)."""
        task = self.legacy_inflight.get((session_id, request_id))
        if task is not None:
            task.cancel()

    async def by_disconnect(
        self,
        call: ToolCall,
        paths: Dispatch,
        answer: EraAnswer,
        receive: Receive,
        disconnects: Disconnects | None = None,
    ) -> None:
        # When the client closes the stream (2026 cancellation), cancel the forwarding, which
        # closes the upstream connection, which cancels the agent.
        current = asyncio.current_task()
        assert current is not None
        disconnected = False

        def lost() -> None:
            nonlocal disconnected
            if not answer.ended:
                disconnected = True
                current.cancel()

        with on_client_gone(disconnects, receive, lost):
            try:
                await _run(call, paths, answer)
            except asyncio.CancelledError:
                if not disconnected:
                    raise
                if call.obs is not None:
                    call.obs.outcome = "cancelled"
                current.uncancel()  # we consumed our own cancel; a later one (shutdown) must still land
                log.info("client closed the stream of %s: call cancelled", call.entry.public_name)

    async def by_notification(
        self,
        call: ToolCall,
        paths: Dispatch,
        answer: EraAnswer,
        session: Session,
        receive: Receive | None,
        make_record: MakeRecord | None,
        disconnects: Disconnects | None = None,
    ) -> None:
        key = (session.id, call.request_id)
        sink = TaskSink(forward=answer)
        task = asyncio.ensure_future(_run(call, paths, sink))
        self.legacy_inflight[key] = task
        # Woken when the call ends or its client goes away, whichever comes first.
        woken: asyncio.Future[None] = asyncio.get_running_loop().create_future()

        def wake(*_: object) -> None:
            if not woken.done():
                woken.set_result(None)

        task.add_done_callback(wake)
        gone = (
            on_client_gone(disconnects, receive, wake)
            if receive is not None and make_record is not None
            else contextlib.nullcontext()
        )
        try:
            with gone:
                await woken
            forward = await sink.take_over() if not task.done() and make_record is not None else None
            if forward is not None:
                assert make_record is not None and self.runner is not None
                self.legacy_inflight.pop(key, None)  # from now on it is cancelled as a task (tasks/cancel)
                record = make_record("detached")
                try:
                    await self.runner.adopt(record, sink, task)
                except Exception as exc:  # noqa: BLE001 - e.g. Redis down: no task, the call just runs to its end
                    _adopt_failed(record.tool, exc)
                    await sink.give_back(forward)
                    await asyncio.shield(task)
                    return
                if call.obs is not None:
                    call.obs.outcome = "detached"
                log.info("the client of %s went away: the call goes on as task %s", record.tool, record.id)
                return
            await asyncio.shield(task)
        except asyncio.CancelledError:
            if not task.cancelled():
                task.cancel()  # the HTTP request itself went away with the server shutting down
                raise
            if call.obs is not None:
                call.obs.outcome = "cancelled"
            # notifications/cancelled: the spec says no response follows; close the stream cleanly.
            await answer.end_without_answer()
        finally:
            self.legacy_inflight.pop(key, None)

    async def promotable(
        self,
        call: ToolCall,
        paths: Dispatch,
        answer: EraAnswer,
        receive: Receive,
        make_record: MakeRecord,
    ) -> None:
        """2026 era, client declared the tasks extension: an ordinary call, relayed as it
        runs, unless it is still running after ``task_after_ms`` - then its answer is a task
        (``resultType: "task"``) and the work goes on. Before that, closing the stream
        cancels, as the 2026 transport says."""
        sink = TaskSink(forward=answer)
        work = asyncio.ensure_future(_run(call, paths, sink))
        watcher = asyncio.create_task(disconnected(receive))
        try:
            done, _ = await asyncio.wait(
                {work, watcher}, timeout=self.settings.task_after_ms / 1000, return_when=asyncio.FIRST_COMPLETED
            )
            if watcher in done and not work.done():
                work.cancel()
                await asyncio.gather(work, return_exceptions=True)
                if call.obs is not None:
                    call.obs.outcome = "cancelled"
                log.info("client closed the stream of %s: call cancelled", call.entry.public_name)
                return
            if not work.done():
                forward = await sink.take_over()
                if forward is not None:
                    await self._promote(call, sink, work, forward, make_record)
                    return
            await asyncio.shield(work)
        except asyncio.CancelledError:
            work.cancel()
            raise
        finally:
            watcher.cancel()

    async def _promote(
        self, call: ToolCall, sink: TaskSink, work: asyncio.Future[None], forward: Answer, make_record: MakeRecord
    ) -> None:
        record = make_record("promoted")
        assert self.runner is not None
        try:
            await self.runner.adopt(record, sink, work)
        except Exception as exc:  # noqa: BLE001 - e.g. Redis down: the client keeps its ordinary answer
            _adopt_failed(call.entry.public_name, exc)
            await sink.give_back(forward)
            await asyncio.shield(work)
            return
        if call.obs is not None:
            call.obs.outcome = "task"
        # An SSE stream already open: the task is its last event; else the whole answer.
        await send_message(
            forward, jsonrpc.result_body(call.request_id, {"resultType": "task", **record.modern()}), None
        )


async def _run(call: ToolCall, paths: Dispatch, answer: Answer) -> None:
    """The call through the dispatch point; an error raised before anything was sent is
    answered here as the call's JSON-RPC error (HTTP 200: the exchange itself worked)."""
    try:
        await paths.call(call, answer)
    except EdgefleetError as exc:
        if call.obs is not None:
            call.obs.failed(exc)
        if answer.started:
            raise
        await answer.send_json(200, jsonrpc.error_body(call.request_id, exc), None)


async def disconnected(receive: Receive) -> None:
    """Returns when the client has closed the connection."""
    while (await receive())["type"] != "http.disconnect":
        pass


@contextlib.contextmanager
def on_client_gone(disconnects: Disconnects | None, receive: Receive, callback: Callable[[], None]) -> Iterator[None]:
    """Within the block, ``callback()`` runs if the client's connection is lost. Our server
    says so itself (``disconnects``, from the scope: no task per call, issue 19); under
    another ASGI server a task waits on ``receive()`` for ``http.disconnect``."""
    if disconnects is not None:
        disconnects.add(callback)
        try:
            yield
        finally:
            disconnects.discard(callback)
        return

    def ended(watcher: asyncio.Task[None]) -> None:
        if not watcher.cancelled() and watcher.exception() is None:
            callback()

    watcher = asyncio.create_task(disconnected(receive))
    watcher.add_done_callback(ended)
    try:
        yield
    finally:
        watcher.cancel()


def _adopt_failed(tool: str, exc: Exception) -> None:
    """A call that could not become a task runs on as an ordinary call: at the open-task cap
    that is the rule working, anything else (Redis down) deserves the traceback."""
    if isinstance(exc, TooManyTasks):
        log.info("the call of %s could not become a task (%s): it stays an ordinary call", tool, exc.message)
    else:
        log.error("the call of %s could not become a task: it stays an ordinary call", tool, exc_info=exc)
