"""Tasks whose work an engine outside this process keeps going (pipelines on Temporal).

Such a task is created without a lease (no dispatcher "runs" it, so none recovers it when
one dies): the engine runs the work wherever it can, answers status and progress live,
cancels it, and writes the outcome to the store itself when the work ends. The task layer
only knows this small interface; ``app`` hands it the implementation
(``builtins.workflows.engine``), so the layers keep pointing down.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import ToolEntry
    from edgefleet.dispatcher.routing.router import RouteOrder
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.dispatcher.tasks.model import TaskRecord

HOSTED = "workflow"  # TaskRecord.path of a hosted task


@dataclass(frozen=True, slots=True)
class LiveStatus:
    """Where the work is now, as the engine says (overlaid on the stored record).

    ``awaiting``: the work waits for a person (a pipeline's approval step: run, step,
    prompt, until). The task stays ``working`` today and the decision comes over REST or
    the CLI; this is the seam where the MCP surface can instead answer ``input_required``
    and ask the connected client (elicitation / an ``inputRequests`` round), then pass the
    answer to the engine's ``decide`` as the identity that answered."""

    message: str
    progress: dict[str, Any] | None = None
    awaiting: dict[str, Any] | None = None


class TaskHost(Protocol):
    def hosts(self, entry: ToolEntry) -> bool:
        """The engine runs this tool's tasks."""

    def prepare(self, record: TaskRecord) -> None:
        """Mark ``record`` (before it is stored) with what finds its work again (``request``)."""

    async def start_task(
        self, record: TaskRecord, params: dict[str, Any], order: RouteOrder, identity: Identity | None
    ) -> None:
        """Start the work of a stored task; raises EdgefleetError when it cannot start."""

    def adoptable(self, record: TaskRecord, work: asyncio.Future[Any]) -> bool:
        """``work`` (a call running here) already runs in the engine: mark ``record`` for it."""

    async def attach(self, record: TaskRecord) -> None:
        """Tell the adopted work to settle ``record`` when it ends (best effort)."""

    async def status(self, record: TaskRecord) -> LiveStatus | None:
        """Live status of an unfinished task, or None when the engine cannot say now."""

    async def cancel(self, record: TaskRecord, by: str) -> None:
        """Stop the work (it compensates); the store already says ``cancelled`` or ``failed``."""
