"""The REST surface (FastAPI): registry for agents and operators, probes for orchestrators."""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from collections.abc import Sequence
from typing import Annotated, Any

import orjson
import redis.exceptions
from fastapi import Depends, FastAPI, Header, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response, StreamingResponse

from edgefleet.dispatcher.fleet.admission import admit
from edgefleet.dispatcher.fleet.fleet import Fleet
from edgefleet.dispatcher.fleet.naming import public_name
from edgefleet.dispatcher.observability.metrics import CONTENT_TYPE, Metrics
from edgefleet.dispatcher.rest.guard import BodyGuard
from edgefleet.dispatcher.security.agent_auth import AgentAuthenticator, AgentCredential
from edgefleet.dispatcher.security.audit import AuditLog, AuditReader, fingerprint
from edgefleet.dispatcher.security.auth import (
    Authenticator,
    Identity,
    bearer,
    protected_resource_metadata,
    resource_urls,
)
from edgefleet.dispatcher.tasks.methods import TaskMethods
from edgefleet.shared.errors import (
    EdgefleetError,
    Forbidden,
    InvalidParams,
    NotFound,
    RateLimited,
    RegistrationError,
    StoreUnavailable,
    Unauthorized,
)
from edgefleet.shared.models import Heartbeat, RegisterRequest


def build_api(
    fleet: Fleet,
    token: str,
    lifespan: Any,
    metrics: Metrics | None = None,
    *,
    tasks: TaskMethods | None = None,
    auth: Authenticator | None = None,
    audit: AuditLog | None = None,
    registry_auth: AgentAuthenticator | None = None,
) -> FastAPI:
    api = FastAPI(title="edgefleet dispatcher", version="0.1.0", lifespan=lifespan, docs_url="/docs", redoc_url=None)

    def _refusal(request: Request, exc: EdgefleetError) -> JSONResponse:
        headers = {"www-authenticate": 'Bearer realm="edgefleet"'} if isinstance(exc, Unauthorized) else None
        if isinstance(exc, RateLimited):
            headers = {"retry-after": str(exc.data.get("retry_after_s", 1))}
        _audit_refusal(request, exc)
        return JSONResponse(exc.to_rest(), status_code=exc.http_status, headers=headers)

    @api.exception_handler(EdgefleetError)
    async def _edgefleet_error(request: Request, exc: EdgefleetError) -> JSONResponse:
        return _refusal(request, exc)

    def _audit_refusal(request: Request, exc: EdgefleetError) -> None:
        if audit is None or not audit.enabled:
            return
        if isinstance(exc, Unauthorized):
            event = "auth.failure"
        elif isinstance(exc, RateLimited):
            event = "limit.hit"
        elif isinstance(exc, RegistrationError) and request.url.path == "/v1/agents":
            event = "agent.refused"
        elif isinstance(exc, (Forbidden, RegistrationError)):
            event = "access.denied"
        else:
            return
        audit.record(
            event,
            code=exc.code,
            reason=exc.message,
            path=request.url.path,
            method=request.method,
            caller=request.client.host if request.client else None,
            credential=fingerprint(
                bearer(request.headers.get("authorization")) or request.headers.get("authorization")
            ),
            agent=exc.data.get("agent"),
            scope=exc.data.get("scope"),
        )

    @api.exception_handler(redis.exceptions.RedisError)
    async def _store_error(request: Request, exc: redis.exceptions.RedisError) -> JSONResponse:
        # Registry, heartbeats, tasks and the audit reader live in Redis: while it is away
        # they say so (503, retry), rather than a 500 with a traceback.
        error = StoreUnavailable(f"Redis cannot be asked right now ({type(exc).__name__}: {exc}); retry shortly.")
        return JSONResponse(error.to_rest(), status_code=error.http_status, headers={"retry-after": "1"})

    @api.exception_handler(RequestValidationError)
    async def _validation_error(request: Request, exc: RequestValidationError) -> JSONResponse:
        error = _invalid_input(request.url.path, exc.errors())
        return JSONResponse(error.to_rest(), status_code=error.http_status)

    registry_auth = registry_auth or AgentAuthenticator(token, {}, auth)

    def registrant(authorization: Annotated[str | None, Header()] = None) -> AgentCredential:
        return registry_auth.authenticate(authorization)

    def operator(authorization: Annotated[str | None, Header()] = None) -> AgentCredential:
        credential = registry_auth.authenticate(authorization)
        registry_auth.check_operator(credential)
        return credential

    def gate(request: Request) -> None:
        """The credentials a /v1 route checks, checked before its body is read (BodyGuard)."""
        if not request.url.path.startswith("/v1/"):
            return
        authorization = request.headers.get("authorization")
        if auth is not None and request.url.path.startswith(_CLIENT_ROUTES):
            auth.authenticate(authorization)
        else:
            registry_auth.authenticate(authorization)

    api.add_middleware(BodyGuard, limit=fleet.settings.max_body_bytes, gate=gate, refuse=_refusal)

    who_registers = Depends(registrant)
    authorized = [Depends(operator)]

    async def replica_agent(replica_id: str) -> str:
        record = await fleet.registry.get(replica_id)
        if record is None:
            raise NotFound(f"Replica {replica_id} is not registered (lease expired?); register again.")
        return record.agent

    @api.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @api.get("/.well-known/oauth-protected-resource")
    @api.get("/.well-known/oauth-protected-resource/mcp")
    async def oauth_protected_resource(request: Request) -> dict[str, Any]:
        # RFC 9728: MCP clients read this after a 401 to find the authorization server.
        scope = {"scheme": request.url.scheme}
        resource, _ = resource_urls(fleet.settings, scope, {"host": request.headers.get("host", "localhost")})
        return protected_resource_metadata(resource, fleet.settings.oauth_authorization_servers)

    @api.get("/metrics", include_in_schema=False)
    async def prometheus_metrics() -> Response:
        # Unauthenticated like the probes: scrapers sit on the cluster network (see README).
        return Response(metrics.exposition() if metrics is not None else b"", media_type=CONTENT_TYPE)

    @api.get("/readyz")
    async def readyz() -> Response:
        """Ready = this dispatcher can serve calls from a catalog that holds the fleet: the
        registry was read, and every agent it saw within a day has a warm replica here (or
        EDGEFLEET_READY_WAIT_S passed since the start). Once ready, it stays ready while
        Redis is away: calls to known tools keep working on the direct path, and a load
        balancer must not drop every dispatcher at once; "registry" says so, for alerts."""
        registry = "ok" if fleet.registry_ok else "unreachable"
        if not fleet.loaded.is_set():
            return JSONResponse(
                {
                    "status": "not ready",
                    "registry": registry,
                    "synced": fleet.synced.is_set(),
                    "waiting_for": sorted(fleet.waiting_for),
                },
                status_code=503,
            )
        warming = [r.id for r in fleet.replicas.values() if not r.warm]
        return JSONResponse(
            {
                "status": "ready",
                "registry": registry,
                "replicas": len(fleet.replicas),
                "warming": warming,
                "tools": len(fleet.catalog.entries),
            }
        )

    @api.post("/v1/agents", status_code=201)
    async def register(body: RegisterRequest, credential: AgentCredential = who_registers) -> dict[str, Any]:
        registry_auth.check_register(credential, body.name, body.region)
        record = await admit(body, fleet)
        if audit is not None:
            audit.record(
                "agent.register",
                by=credential.name,
                credential_kind=credential.kind,
                agent=record.agent,
                region=record.region,
                replica=record.replica_id,
                url=record.url,
                version=record.version or None,
                tools=len(record.tools),
            )
        return {
            "replica_id": record.replica_id,
            "era": record.era,
            "tools": [public_name(record.agent, t["name"]) for t in record.tools],
            "heartbeat_ttl_s": fleet.settings.heartbeat_ttl_s,
            # Agents know one URL (ours); where the bus is, they learn here.
            "bus": {
                "url": fleet.settings.bus_public_url or fleet.settings.bus_url,
                "prefix": fleet.settings.redis_prefix,
            }
            if fleet.settings.bus_url
            else None,
        }

    @api.post("/v1/agents/replicas/{replica_id}/heartbeat")
    async def heartbeat(
        replica_id: str, body: Heartbeat, credential: AgentCredential = who_registers
    ) -> dict[str, Any]:
        if registry_auth.agent_keys:  # names are bound to keys: a heartbeat only for your own replicas
            registry_auth.check_replica(credential, await replica_agent(replica_id))
        if not await fleet.registry.heartbeat(replica_id, body.model_dump()):
            raise NotFound(f"Replica {replica_id} is not registered (lease expired?); register again.")
        return {"ok": True}

    @api.delete("/v1/agents/replicas/{replica_id}", status_code=204)
    async def deregister(replica_id: str, credential: AgentCredential = who_registers) -> Response:
        agent = await replica_agent(replica_id)
        registry_auth.check_replica(credential, agent, operator_ok=True)
        if not await fleet.registry.remove(replica_id):
            raise NotFound(f"Replica {replica_id} is not registered.")
        if audit is not None:
            audit.record(
                "agent.deregister", by=credential.name, credential_kind=credential.kind, agent=agent, replica=replica_id
            )
        fleet.wake()
        return Response(status_code=204)

    @api.delete("/v1/agents/{name}")
    async def remove_agent(name: str, credential: AgentCredential = Depends(operator)) -> dict[str, Any]:  # noqa: B008 - FastAPI declares dependencies this way; the dependency is a closure, which a string annotation (Annotated) cannot name
        removed = [r.replica_id for r in await fleet.registry.live() if r.agent == name]
        if not removed:
            raise NotFound(f"No agent named {name!r} is registered.")
        for replica_id in removed:
            await fleet.registry.remove(replica_id)
        fleet.wake()
        if audit is not None:
            audit.record(
                "agent.remove", by=credential.name, credential_kind=credential.kind, agent=name, replicas=removed
            )
        return {"removed": removed}

    @api.get("/v1/agents", dependencies=authorized)
    async def list_agents() -> dict[str, Any]:
        now = time.time()
        agents: dict[str, dict[str, Any]] = {}
        for record in await fleet.registry.live():
            local = fleet.replicas.get(record.replica_id)
            agent = agents.setdefault(
                record.agent, {"name": record.agent, "regions": set(), "tools": set(), "replicas": []}
            )
            agent["regions"].add(record.region)
            agent["tools"].update(public_name(record.agent, t["name"]) for t in record.tools)
            agent["replicas"].append(
                {
                    "id": record.replica_id,
                    "region": record.region,
                    "url": record.url,
                    "version": record.version,
                    "static": record.static,
                    "era": record.era,
                    "warm": bool(local and local.warm),
                    "healthy": bool(local and local.healthy),
                    "routable": bool(local and local.routable),
                    "inflight": local.inflight if local else 0,
                    "breaker": local.breaker.snapshot() if local else None,
                    "latency_ewma_ms": round(local.latency_ewma_ms, 3) if local else None,
                    "load": record.load,
                    "heartbeat_age_s": round(now - record.heartbeat_at, 2),
                    "last_error": local.last_error if local else None,
                }
            )
        items = [{**a, "regions": sorted(a["regions"]), "tools": sorted(a["tools"])} for a in agents.values()]
        return {"agents": sorted(items, key=lambda a: a["name"])}

    if audit is not None and audit.redis is not None:
        reader = AuditReader(audit.redis, audit.key)

        @api.get("/v1/audit", dependencies=authorized)
        async def audit_events(
            after: str | None = None, last: int = 20, limit: int = 100, wait: float = 0.0
        ) -> dict[str, Any]:
            """The audit stream for operators: the ``last`` events, or those ``after`` a stream
            id (waiting up to ``wait`` s for one); ``next`` is the id to pass back."""
            if after is not None and not _stream_id(after):
                raise InvalidParams(
                    "after must be a stream id like 1732270000000-0 (the 'next' of a previous answer): "
                    "milliseconds and a sequence number, each below 2^64."
                )
            if not 0 < limit <= 1000 or not 0 <= last <= 10_000 or not 0 <= wait <= 60:
                raise InvalidParams("limit must be 1..1000, last 0..10000 and wait 0..60 seconds.")
            if after is None:
                events = await reader.last(last)
                cursor = events[-1]["id"] if events else (await reader.newest_id())
            else:
                # Nothing can follow the largest id, and Redis refuses to range past it.
                events = await reader.after(after, limit, wait) if after != _LAST_STREAM_ID else []
                cursor = events[-1]["id"] if events else after
            return {"events": events, "next": cursor}

    if tasks is not None and auth is not None:
        _task_routes(api, tasks, auth)
    return api


def _task_routes(api: FastAPI, tasks: TaskMethods, auth: Authenticator) -> None:
    """Tasks for operators and non-MCP callers, with the same credentials as /mcp: an
    identity sees and cancels its own tasks; an admin (scope ``admin``) everyone's."""

    def caller(authorization: Annotated[str | None, Header()] = None) -> Identity:
        return auth.authenticate(authorization)

    who = Depends(caller)

    @api.get("/v1/tasks")
    async def list_tasks(
        owner: str | None = None, cursor: str | None = None, limit: int = 50, identity: Identity = who
    ) -> dict[str, Any]:
        return await tasks.rest_list(identity, owner=owner, cursor=cursor, limit=limit)

    @api.get("/v1/tasks/{task_id}")
    async def get_task(task_id: str, identity: Identity = who) -> dict[str, Any]:
        record = await tasks.lookup(task_id, identity)
        return record.rest(history=await tasks.store.history(task_id))

    @api.post("/v1/tasks/{task_id}/cancel")
    async def cancel_task(task_id: str, identity: Identity = who) -> dict[str, Any]:
        record = await tasks.lookup(task_id, identity)
        await tasks.runner.cancel(record, identity.name)
        record = await tasks.find(task_id, identity)
        return record.rest(history=await tasks.store.history(task_id))

    @api.get("/v1/tasks/{task_id}/events")
    async def task_events(task_id: str, identity: Identity = who) -> StreamingResponse:
        """Server-sent events: the task (as GET /v1/tasks/{id} shows it) on every change, until it ends."""
        await tasks.lookup(task_id, identity)  # 404 before the stream starts

        async def stream() -> Any:
            async with tasks.store.events.watch(task_id) as changes:
                last = None
                while True:
                    try:
                        record = await tasks.find(task_id, identity)
                    except EdgefleetError as exc:  # expired meanwhile
                        yield _sse("error", exc.to_rest())
                        return
                    view = record.rest()
                    if view != last:
                        last = view
                        yield _sse("task", view)
                    if record.terminal:
                        return
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(changes.get(), 15.0)
                    while not changes.empty():
                        changes.get_nowait()
                    yield b": keep-alive\n\n"

        return StreamingResponse(
            stream(), media_type="text/event-stream", headers={"cache-control": "no-cache", "x-accel-buffering": "no"}
        )


# /v1 routes whose callers are /mcp's clients (API keys, JWTs); the others are the registry's.
_CLIENT_ROUTES = ("/v1/tasks", "/v1/pipelines")

_STREAM_ID = re.compile(r"^\d{1,20}(-\d{1,20})?$")
_U64_MAX = 2**64 - 1
_LAST_STREAM_ID = f"{_U64_MAX}-{_U64_MAX}"


def _stream_id(text: str) -> bool:
    """An id Redis takes: milliseconds[-sequence], each a 64-bit unsigned integer (Redis
    answers a larger one with an error, which is the client's, not the store's)."""
    return bool(_STREAM_ID.match(text)) and all(int(part) <= _U64_MAX for part in text.split("-"))


# Where a request's parts are, in the words of an error message.
_PLACES = {"query": "query parameter", "path": "path segment", "header": "header", "cookie": "cookie"}


def _invalid_input(path: str, errors: Sequence[Any]) -> EdgefleetError:
    """The error for a request FastAPI could not validate. A registry body (register,
    heartbeat) keeps its code, invalid_registration (422); anything else is invalid_params
    (400), as the routes' own checks of their parameters say, naming what was wrong."""
    problems = [
        {"in": str(e["loc"][0]), "field": ".".join(str(p) for p in e["loc"][1:]), "message": e["msg"]} for e in errors
    ]
    data = {"problems": problems}
    if all(p["in"] == "body" for p in problems):
        if path.startswith("/v1/agents"):
            return RegistrationError("The request body is invalid.", data=data)
        return InvalidParams("The request body is invalid.", data=data)
    first = next(p for p in problems if p["in"] != "body")
    more = f" (and {len(problems) - 1} more: see details.problems)" if len(problems) > 1 else ""
    place = _PLACES.get(first["in"], first["in"])
    return InvalidParams(f"Invalid {place} {first['field']!r}: {first['message']}{more}.", data=data)


def _sse(event: str, data: dict[str, Any]) -> bytes:
    return b"event: " + event.encode() + b"\ndata: " + orjson.dumps(data) + b"\n\n"
