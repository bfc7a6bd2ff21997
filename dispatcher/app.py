"""Assembling the dispatcher: components, lifespan, and the ASGI routing between the raw
MCP endpoint and the FastAPI REST surface.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import uuid
from collections.abc import AsyncIterator
from typing import Any

import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.dispatcher.builtins import fanout, pipelines
from edgefleet.dispatcher import config_file as static_config, warmup
from edgefleet.dispatcher.fleet.catalog import builtin_entry
from edgefleet.dispatcher.builtins.invoker import Invoker
from edgefleet.dispatcher.fleet.admission import admit
from edgefleet.dispatcher.security.agent_auth import AgentAuthenticator, load_agent_keys
from edgefleet.dispatcher.security.audit import AuditLog
from edgefleet.dispatcher.rest.api import build_api
from edgefleet.shared.asgi import Receive, Scope, Send
from edgefleet.dispatcher.paths.bus import BusPath
from edgefleet.dispatcher.paths.direct import Executor
from edgefleet.dispatcher.fleet.fleet import Fleet
from edgefleet.dispatcher.mcp.endpoint import MCPEndpoint
from edgefleet.dispatcher.observability.metrics import Metrics
from edgefleet.dispatcher.paths.cache import ResultCache
from edgefleet.dispatcher.routing.router import Router
from edgefleet.dispatcher.mcp.sessions import SessionStore
from edgefleet.dispatcher.tasks.runner import TaskRunner
from edgefleet.dispatcher.tasks.store import TaskStore
from edgefleet.dispatcher.fleet.upstream import UpstreamPool
from edgefleet.shared import telemetry
from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.errors import ConfigError, EdgefleetError
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.dispatcher")

MCP_PATHS = frozenset({"/mcp", "/mcp/"})


class Dispatcher:
    """All components of one dispatcher process; constructing it does no I/O."""

    def __init__(self, settings: DispatcherSettings) -> None:
        if not settings.fleet_token.get_secret_value():
            raise ConfigError("EDGEFLEET_FLEET_TOKEN is required: agents present it to register.")
        self.settings = settings
        # Process-wide and idempotent: `edgefleet serve` has already done it (OTEL_* env).
        telemetry.configure("edgefleet-dispatcher", deployment_environment=None, cloud_region=settings.region)
        self.metrics = Metrics()
        config = static_config.load(settings.config_file) if settings.config_file else static_config.StaticConfig()
        self.static_agents = config.static_agents()
        # GeoIP readers and the region table open here, before the first call.
        self.router = Router(settings, config.region_specs())
        self.cache = ResultCache(settings.result_cache_entries)
        # Blocking pool: bursts wait for a connection instead of failing (redis-py caps at 100).
        self.redis = aioredis.Redis(connection_pool=aioredis.BlockingConnectionPool.from_url(
            settings.redis_url, max_connections=128, timeout=5.0, socket_connect_timeout=2.0, socket_timeout=5.0, health_check_interval=10,
        ))
        self.pool = UpstreamPool(settings)
        self.fleet = Fleet(settings, self.redis, self.pool)
        self.sessions = SessionStore(self.redis, RedisKeys(settings.redis_prefix), settings.session_ttl_s)
        self.executor = Executor(self.fleet, self.router)
        self.bus_path = BusPath(settings) if settings.bus_url else None
        if self.bus_path is not None:
            self.bus_path.metrics = self.metrics
            self.bus_path.streams = lambda: {(r.record.agent, r.record.region) for r in self.fleet.replicas.values() if r.record.bus}
        self.fleet.on_warm = lambda replica: warmup.exercise_replica(self.executor, replica)
        self.fleet.on_leave = lambda replica: self.metrics.forget_replica(replica.record.agent, replica.record.region, replica.id)
        self.invoker = Invoker(self.fleet, self.router, self.executor, self.bus_path, self.metrics)
        self.fleet.builtins = [builtin_entry(fanout.DEFINITION, functools.partial(fanout.run, self.invoker))]
        for name, spec in config.pipelines.items():
            self.fleet.builtins.append(builtin_entry(pipelines.definition(name, spec), functools.partial(pipelines.run, self.invoker, name, spec)))
        self.fleet.rebuild()
        if settings.auth == "none":
            log.warning("AUTHENTICATION IS OFF (EDGEFLEET_AUTH=none): anyone who can reach %s:%d can call every tool. "
                        "For local development only.", settings.host, settings.port)
        keys = RedisKeys(settings.redis_prefix)
        instance = self.bus_path.instance if self.bus_path is not None else f"{settings.region}-{uuid.uuid4().hex[:12]}"
        self.audit = AuditLog(self.redis if settings.audit else None, keys.audit, maxlen=settings.audit_maxlen,
                              arguments=settings.audit_arguments, source=instance)
        self.task_store = TaskStore(self.redis, keys, max_ttl_ms=int(settings.task_max_ttl_s * 1000),
                                    audit_maxlen=settings.audit_maxlen if settings.audit else 0, audit_source=instance)
        self.tasks = TaskRunner(settings, self.task_store, self.fleet, self.router, self.executor, self.bus_path, self.metrics, instance,
                                audit=self.audit)
        self.mcp = MCPEndpoint(settings, self.fleet, self.sessions, self.executor, self.router, self.cache, self.bus_path, self.metrics,
                               runner=self.tasks, audit=self.audit)
        self.metrics.watch(self.fleet, self.pool, self.cache, self.mcp.limits, self.tasks)
        agent_keys = load_agent_keys(settings.agent_keys_file) if settings.agent_keys_file else {}
        self.registry_auth = AgentAuthenticator(settings.fleet_token.get_secret_value(), agent_keys, self.mcp.auth)
        self.api = build_api(self.fleet, settings.fleet_token.get_secret_value(), self.lifespan, self.metrics, tasks=self.mcp.tasks,
                             auth=self.mcp.auth, audit=self.audit, registry_auth=self.registry_auth)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] in MCP_PATHS:
            await self.mcp(scope, receive, send)
        else:
            await self.api(scope, receive, send)

    @contextlib.asynccontextmanager
    async def lifespan(self, _app: Any) -> AsyncIterator[None]:
        await self.start()
        try:
            yield
        finally:
            await self.aclose()

    async def start(self) -> None:
        await self.audit.start()
        await self.pool.start()
        try:
            await self.redis.ping()
        except (redis.exceptions.RedisError, OSError) as exc:
            log.error("Redis at %s is not reachable (%s); /readyz stays 503 until it is", self.settings.redis_url, exc)
        await self.fleet.start()
        if self.bus_path is not None:
            await self.bus_path.start()
        for request in self.static_agents:
            try:
                record = await admit(request, self.fleet, allow_unreachable=True)
                self.audit.record("agent.register", by="config-file", credential_kind="static-config", agent=record.agent,
                                  region=record.region, replica=record.replica_id, url=record.url, tools=len(record.tools))
                log.info("static agent %s (%s) at %s: %d tools", record.agent, record.region, record.url, len(record.tools))
            except EdgefleetError as exc:
                log.error("static agent %s from %s refused: %s", request.name, self.settings.config_file, exc.message)
            except (redis.exceptions.RedisError, OSError) as exc:
                log.error("static agent %s not stored (Redis: %s)", request.name, exc)
        # Principle 1: nothing cold on the critical path. Wait (bounded) until the
        # catalog is loaded and every known replica has its pool warmed.
        try:
            await self.fleet.wait_warm(timeout=10.0)
        except asyncio.TimeoutError:
            log.warning("start-up: fleet not fully warm after 10 s; serving what is ready")
        await self.tasks.start()
        await warmup.exercise_endpoint(self.mcp)
        log.info(
            "dispatcher ready in region %s: %d replicas, %d tools",
            self.settings.region, len(self.fleet.replicas), len(self.fleet.catalog.entries),
        )

    async def aclose(self) -> None:
        await self.tasks.aclose()
        await self.fleet.aclose()
        if self.bus_path is not None:
            await self.bus_path.aclose()
        await self.pool.aclose()
        await self.audit.aclose()
        await self.redis.aclose()
        self.router.close()
        telemetry.flush()


def create_app(settings: DispatcherSettings | None = None) -> Dispatcher:
    return Dispatcher(settings or DispatcherSettings())
