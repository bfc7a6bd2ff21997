"""2025-era task requests through the official client (the SDK ships the task types but
no runtime for them)."""

from __future__ import annotations

from typing import Any

import mcp_types as types
from mcp import Client


async def create_task(
    client: Client,
    name: str,
    arguments: dict[str, Any],
    *,
    ttl: int | None = 60_000,
    meta: dict[str, Any] | None = None,
) -> types.Task:
    """A task-augmented tools/call through the official client's session. The SDK (2.3)
    ships the task types but validates every tools/call answer as a CallToolResult, so the
    request goes through the session's own raw send and the answer is parsed here."""
    params = types.CallToolRequestParams(name=name, arguments=arguments, task=types.TaskMetadata(ttl=ttl), _meta=meta)
    data = {"method": "tools/call", "params": params.model_dump(by_alias=True, mode="json", exclude_none=True)}
    opts: dict[str, Any] = {}
    session: Any = client.session
    session._stamp(data, opts)
    raw = await session._dispatcher.send_raw_request("tools/call", data["params"], opts)
    return types.CreateTaskResult.model_validate(raw, by_name=False).task


async def legacy_get(client: Client, task_id: str) -> types.GetTaskResult:
    return await client.session.send_request(
        types.GetTaskRequest(params=types.GetTaskRequestParams(task_id=task_id)), types.GetTaskResult
    )


async def legacy_result(client: Client, task_id: str) -> types.CallToolResult:
    request = types.GetTaskPayloadRequest(params=types.GetTaskPayloadRequestParams(task_id=task_id))
    return await client.session.send_request(request, types.CallToolResult)
