"""Admitting a replica into the registry: discover its tools, check names, store it.

Runs on ``POST /v1/agents`` (SDK agents, ``edgefleet agents add``) and for the static
servers of the config file. Discovery happens here, on the control path, so a name
collision is reported to whoever registers instead of surfacing later as a missing tool.
"""

from __future__ import annotations

import time
import uuid

from edgefleet.dispatcher.fleet.catalog import check_tool_limits
from edgefleet.dispatcher.fleet.fleet import Fleet
from edgefleet.dispatcher.fleet.naming import namespace_tools
from edgefleet.dispatcher.fleet.registry import tools_hash
from edgefleet.dispatcher.fleet.upstream import ReplicaClient
from edgefleet.dispatcher.security.agent_urls import check_agent_url
from edgefleet.shared.errors import AgentUnreachable, ToolConflict
from edgefleet.shared.models import RegisterRequest, ReplicaRecord


def static_replica_id(name: str, region: str, url: str) -> str:
    # Deterministic, so re-adding the same server (or restarting with the same config) updates it.
    return f"{name}-{region}-static-{uuid.uuid5(uuid.NAMESPACE_URL, url).hex[:10]}"


async def admit(request: RegisterRequest, fleet: Fleet, *, allow_unreachable: bool = False) -> ReplicaRecord:
    replica_id = request.replica_id or (
        static_replica_id(request.name, request.region, request.url)
        if request.static
        else f"{request.name}-{request.region}-{uuid.uuid4().hex[:10]}"
    )
    await check_agent_url(request.url, fleet.pool.rules, resolver=fleet.pool.resolver)
    client = ReplicaClient(fleet.pool, request.url)
    timeout = fleet.settings.probe_timeout_s * 5
    try:
        era = await client.connect(timeout=timeout)
        tools = await client.list_tools(timeout=timeout)
    except AgentUnreachable:
        if not allow_unreachable:
            raise
        era, tools = "modern", []  # the warm loop keeps trying and fills the tools in
    settings = fleet.settings
    check_tool_limits(
        request.name, tools, max_tools=settings.max_tools_per_agent, max_tool_bytes=settings.max_schema_bytes
    )
    namespace_tools(request.name, [t["name"] for t in tools])
    digest = tools_hash(tools)
    if tools:
        for other in await fleet.registry.live():
            same_name = other.agent == request.name and other.replica_id != replica_id and other.tools
            if same_name and other.version == request.version and other.tools_hash != digest:
                raise ToolConflict(
                    f"Agent name {request.name!r} (version {request.version or 'unversioned'}) is already registered by "
                    f"replica {other.replica_id} at {other.url} with a different set of tools. Two different agents "
                    "cannot share a name: rename one, or bump the version for a rolling upgrade.",
                    data={"agent": request.name, "existing_replica": other.replica_id},
                )
    now = time.time()
    record = ReplicaRecord(
        replica_id=replica_id,
        agent=request.name,
        region=request.region,
        url=request.url,
        version=request.version,
        static=request.static,
        bus=request.bus,
        era="legacy" if era == "legacy" else "modern",
        tools=tools,
        tools_hash=digest,
        registered_at=now,
        heartbeat_at=now,
    )
    await fleet.registry.put(record)
    fleet.wake()
    return record
