"""A task as the store keeps it, its status rules, and its wire forms.

One record, three shapes: the 2025-11-25 ``Task`` (SEP-1686: ``ttl``, ``pollInterval``,
result only through ``tasks/result``), the 2026-07-28 extension's ``DetailedTask``
(SEP-2663: ``ttlMs``, ``pollIntervalMs``, result or error inline) and the REST view for
operators (owner, tool, progress, history).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson

from edgefleet.dispatcher.security.auth import Identity

WORKING = "working"
INPUT_REQUIRED = "input_required"
COMPLETED = "completed"
FAILED = "failed"
CANCELLED = "cancelled"
TERMINAL = frozenset({COMPLETED, FAILED, CANCELLED})
STATUSES = (WORKING, INPUT_REQUIRED, COMPLETED, FAILED, CANCELLED)
# SEP-1686 "Task Status Lifecycle": the only moves a receiver may make.
TRANSITIONS: dict[str, frozenset[str]] = {
    WORKING: frozenset({INPUT_REQUIRED, COMPLETED, FAILED, CANCELLED}),
    INPUT_REQUIRED: frozenset({WORKING, COMPLETED, FAILED, CANCELLED}),
}

# How a task came to be (REST view, logs): asked for by the client, a call the dispatcher
# turned into a task because it ran long, or a call the client dropped.
ORIGINS = ("requested", "promoted", "detached")


def iso(ms: int) -> str:
    """RFC 3339 UTC with milliseconds, as the spec's examples write timestamps."""
    return datetime.fromtimestamp(ms / 1000, UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _json(raw: bytes | None) -> Any:
    return orjson.loads(raw) if raw else None


@dataclass(slots=True)
class TaskRecord:
    id: str
    owner: str
    tool: str
    status: str
    created_ms: int
    updated_ms: int
    ttl_ms: int
    poll_ms: int
    deadline_ms: int
    path: str = "direct"  # direct | bus | builtin: where the work runs
    origin: str = "requested"
    era: str = "legacy"  # legacy (2025-11-25) | modern (2026-07-28): the answer's shape
    message: str | None = None
    progress: dict[str, Any] | None = None  # {progress, total?, message?} of the last report
    result: dict[str, Any] | None = None  # the CallToolResult (completed)
    error: dict[str, Any] | None = None  # the JSON-RPC error object (failed, and cancelled)
    request: dict[str, Any] = field(default_factory=dict)  # {name, arguments, _meta}: what re-running needs
    runner: str | None = None  # the dispatcher instance running it (in-process paths)
    region: str | None = None
    replica: str | None = None
    attempts: int = 1
    # The owner's restriction when the task was made (its identity's regions and tool
    # allowlist; empty = none): whoever runs the task again (recovery after a dispatcher
    # died) is held to it, since the credential itself is gone by then.
    regions: tuple[str, ...] = ()
    tools: tuple[str, ...] = ()

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def identity(self) -> Identity:
        """The owner as far as running its call again needs: name, tools and regions."""
        return Identity(self.owner, tools=self.tools, regions=self.regions, method="task")

    @classmethod
    def from_hash(cls, task_id: str, raw: dict[bytes, bytes]) -> TaskRecord:
        def text(key: bytes) -> str | None:
            value = raw.get(key)
            return value.decode() if value is not None else None

        return cls(
            id=task_id,
            owner=text(b"owner") or "",
            tool=text(b"tool") or "",
            status=text(b"status") or WORKING,
            created_ms=int(raw.get(b"created", 0)),
            updated_ms=int(raw.get(b"updated", 0)),
            ttl_ms=int(raw.get(b"ttl", 0)),
            poll_ms=int(raw.get(b"poll", 1000)),
            deadline_ms=int(raw.get(b"deadline", 0)),
            path=text(b"path") or "direct",
            origin=text(b"origin") or "requested",
            era=text(b"era") or "legacy",
            message=text(b"message") or None,
            progress=_json(raw.get(b"progress")),
            result=_json(raw.get(b"result")),
            error=_json(raw.get(b"error")),
            request=_json(raw.get(b"request")) or {},
            runner=text(b"runner") or None,
            region=text(b"region") or None,
            replica=text(b"replica") or None,
            attempts=int(raw.get(b"attempts", 1)),
            regions=tuple(r for r in (text(b"regions") or "").split(",") if r),
            tools=tuple(_json(raw.get(b"tools")) or ()),
        )

    def to_hash(self) -> dict[str, str | bytes | int]:
        fields: dict[str, str | bytes | int] = {
            "owner": self.owner,
            "tool": self.tool,
            "status": self.status,
            "created": self.created_ms,
            "updated": self.updated_ms,
            "ttl": self.ttl_ms,
            "poll": self.poll_ms,
            "deadline": self.deadline_ms,
            "path": self.path,
            "origin": self.origin,
            "era": self.era,
            "request": orjson.dumps(self.request),
            "attempts": self.attempts,
        }
        if self.message:
            fields["message"] = self.message
        if self.runner:
            fields["runner"] = self.runner
        if self.regions:
            fields["regions"] = ",".join(self.regions)  # region names never hold a comma
        if self.tools:
            fields["tools"] = orjson.dumps(list(self.tools))
        return fields

    # -- wire forms --------------------------------------------------------------------
    def _task(self, ttl_key: str, poll_key: str) -> dict[str, Any]:
        task: dict[str, Any] = {
            "taskId": self.id,
            "status": self.status,
            "createdAt": iso(self.created_ms),
            "lastUpdatedAt": iso(self.updated_ms),
            ttl_key: self.ttl_ms,
        }
        if self.message:
            task["statusMessage"] = self.message
        if not self.terminal:
            task[poll_key] = self.poll_ms
        return task

    def legacy(self) -> dict[str, Any]:
        """SEP-1686 ``Task`` (2025-11-25): tasks/get, tasks/list, tasks/cancel, CreateTaskResult."""
        return self._task("ttl", "pollInterval")

    def modern(self) -> dict[str, Any]:
        """SEP-2663 ``DetailedTask`` (2026-07-28 extension): the result or error inline."""
        task = self._task("ttlMs", "pollIntervalMs")
        if self.status == COMPLETED and self.result is not None:
            task["result"] = self.result
        elif self.status == FAILED and self.error is not None:
            task["error"] = self.error
        elif self.status == FAILED and self.result is not None:
            task["result"] = self.result
        return task

    def rest(self, *, history: list[dict[str, Any]] | None = None, detail: bool = True) -> dict[str, Any]:
        """The operator's view (REST, CLI): everything but the request's arguments."""
        view: dict[str, Any] = {
            "id": self.id,
            "tool": self.tool,
            "owner": self.owner,
            "status": self.status,
            "message": self.message,
            "progress": self.progress,
            "created_at": iso(self.created_ms),
            "updated_at": iso(self.updated_ms),
            "ttl_ms": self.ttl_ms,
            "deadline_at": iso(self.deadline_ms),
            "path": self.path,
            "origin": self.origin,
            "attempts": self.attempts,
        }
        if self.region:
            view["region"] = self.region
        if self.replica:
            view["replica"] = self.replica
        if detail:
            if self.result is not None:
                view["result"] = self.result
            if self.error is not None:
                view["error"] = self.error
            if history is not None:
                view["history"] = history
        return view

    def outcome(self) -> dict[str, Any]:
        """What ``tasks/result`` answers: exactly what the call would have returned - its
        result, or (failed, cancelled) its JSON-RPC error - as {"result": ...} or {"error": ...}."""
        if self.status in (COMPLETED, FAILED) and self.result is not None:
            return {"result": self.result}  # FAILED with a result: a 2025-era tool error (isError)
        if self.error is not None:
            return {"error": self.error}
        return {"error": {"code": -32603, "message": f"Task {self.status} without a recorded result."}}
