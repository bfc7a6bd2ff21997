"""What travels on the bus: a call for an agent, and the replies (progress, result) that
come back to the dispatcher instance waiting for it. JSON (orjson) payloads; the trace
context also rides in the message headers so tooling can see it without parsing."""

from __future__ import annotations

import time
from typing import Any, Literal

import orjson
from pydantic import BaseModel, ConfigDict, Field


class CallEnvelope(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str = Field(min_length=1, max_length=128)
    agent: str
    tool: str  # the agent's own (upstream) tool name
    arguments: dict[str, Any] = Field(default_factory=dict)
    meta: dict[str, Any] = Field(default_factory=dict)  # the call's _meta (progressToken...)
    deadline_ms: int  # epoch milliseconds; work past it is not started
    attempt: int = 1
    reply_to: str  # the stream of the dispatcher instance waiting for the answer
    traceparent: str | None = None

    def remaining_s(self) -> float:
        return self.deadline_ms / 1000 - time.time()

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True))


class Reply(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str
    kind: Literal["progress", "result", "error"]
    # kind=result: the JSON-RPC ``result`` object exactly as the agent returned it.
    result: dict[str, Any] | None = None
    # kind=error: a JSON-RPC error object (the agent's, or ours for a deadline).
    error: dict[str, Any] | None = None
    # kind=progress: the params of a notifications/progress or notifications/message.
    notification: dict[str, Any] | None = None
    replica: str = ""
    region: str = ""
    duration_ms: float = 0.0

    def dumps(self) -> bytes:
        return orjson.dumps(self.model_dump(exclude_none=True))


class CancelRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")

    task_id: str
    reason: str = ""
