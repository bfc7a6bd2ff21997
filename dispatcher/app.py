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
from typing import TYPE_CHECKING, Any

import redis.asyncio as aioredis
import redis.exceptions

from edgefleet.dispatcher import config_file, http1, warmup
from edgefleet.dispatcher.builtins import fanout, pipelines
from edgefleet.dispatcher.builtins.invoker import Invoker
from edgefleet.dispatcher.fleet.admission import admit
from edgefleet.dispatcher.fleet.catalog import builtin_entry
from edgefleet.dispatcher.fleet.fleet import Fleet
from edgefleet.dispatcher.fleet.replica import Replica
from edgefleet.dispatcher.fleet.streams import StreamClient
from edgefleet.dispatcher.fleet.upstream import UpstreamPool
from edgefleet.dispatcher.mcp.calls import ToolCalls
from edgefleet.dispatcher.mcp.endpoint import MCPEndpoint
from edgefleet.dispatcher.mcp.features import Features
from edgefleet.dispatcher.mcp.held import HeldCalls
from edgefleet.dispatcher.mcp.relay import RequestRelay
from edgefleet.dispatcher.mcp.request import SCOPE_VIEW
from edgefleet.dispatcher.mcp.request_state import RequestStates
from edgefleet.dispatcher.mcp.sessions import SessionStore
from edgefleet.dispatcher.mcp.subscriptions import Subscriptions
from edgefleet.dispatcher.observability.metrics import Metrics, StateSources
from edgefleet.dispatcher.paths.bus import BusPath
from edgefleet.dispatcher.paths.cache import ResultCache
from edgefleet.dispatcher.paths.checks import ResultChecks
from edgefleet.dispatcher.paths.direct import DirectPath
from edgefleet.dispatcher.paths.dispatch import CallPaths
from edgefleet.dispatcher.rest.api import build_api
from edgefleet.dispatcher.rest.pipelines import pipeline_routes
from edgefleet.dispatcher.routing.router import Router
from edgefleet.dispatcher.security.agent_auth import AgentAuthenticator, load_agent_keys
from edgefleet.dispatcher.security.audit import AuditLog
from edgefleet.dispatcher.security.auth import Authenticator
from edgefleet.dispatcher.security.rate_limits import RateLimits
from edgefleet.dispatcher.tasks.methods import TaskMethods
from edgefleet.dispatcher.tasks.runner import TaskRunner
from edgefleet.dispatcher.tasks.store import TaskStore
from edgefleet.shared import telemetry
from edgefleet.shared.asgi import Receive, Scope, Send
from edgefleet.shared.constants import RedisKeys
from edgefleet.shared.errors import ConfigError, EdgefleetError
from edgefleet.shared.settings import DispatcherSettings

if TYPE_CHECKING:
    from edgefleet.dispatcher.builtins.workflows.engine import PipelineEngine

log = logging.getLogger("edgefleet.dispatcher")

MCP_PATHS = frozenset({"/mcp", "/mcp/"})
# /mcp/agents/<agent>: one agent under its own names (conformance, IDEs pinned to one server).
MOUNT_PREFIX = "/mcp/agents/"


class Dispatcher:
    """All components of one dispatcher process, wired here and only here (each gets what it
    needs in its constructor); constructing it does no I/O."""

    def __init__(self, settings: DispatcherSettings, *, resolver: http1.Resolver | None = None) -> None:
        """``resolver``: host names of agents to addresses (the system's by default)."""
        if not settings.fleet_token.get_secret_value():
            raise ConfigError("EDGEFLEET_FLEET_TOKEN is required: agents present it to register.")
        self.settings = settings
        # Process-wide and idempotent: `edgefleet serve` has already done it (OTEL_* env).
        telemetry.configure("edgefleet-dispatcher", deployment_environment=None, cloud_region=settings.region)
        keys = RedisKeys(settings.redis_prefix)
        self.instance = f"{settings.region}-{uuid.uuid4().hex[:12]}"  # this process, in the bus and the audit stream
        self.metrics = Metrics()
        config = config_file.load(settings.config_file) if settings.config_file else config_file.StaticConfig()
        self.static_agents = config.static_agents()
        # GeoIP readers and the region table open here, before the first call.
        self.router = Router(settings, config.region_specs())
        self.cache = ResultCache(settings.result_cache_entries)
        # Blocking pool: bursts wait for a connection instead of failing (redis-py caps at 100).
        self.redis = aioredis.Redis(
            connection_pool=aioredis.BlockingConnectionPool.from_url(
                settings.redis_url,
                max_connections=128,
                timeout=5.0,
                socket_connect_timeout=2.0,
                socket_timeout=5.0,
                health_check_interval=10,
            )
        )
        self.pool = UpstreamPool(settings, resolver=resolver)
        self.fleet = Fleet(
            settings, self.redis, self.pool, on_warm=self._exercise_replica, on_leave=self._forget_replica
        )
        self.sessions = SessionStore(
            self.redis, keys, settings.session_ttl_s, max_per_owner=settings.max_sessions_per_identity
        )
        self.checks = ResultChecks(settings.max_result_bytes, settings.validate_results)
        self.direct = DirectPath(self.fleet, self.router, self.checks)
        self.bus_path = (
            BusPath(settings, self.checks, instance=self.instance, metrics=self.metrics, streams=self._bus_streams)
            if settings.bus_url
            else None
        )
        self.paths = CallPaths(self.direct, self.bus_path, self.cache)
        self.limits = RateLimits(settings)
        # Built-in tools call others on their caller's behalf, held to the caller's bounds.
        self.invoker = Invoker(self.fleet, self.router, self.paths, self.metrics, self.limits)
        self.fleet.add_builtin(builtin_entry(fanout.DEFINITION, functools.partial(fanout.run, self.invoker)))
        if settings.auth == "none":
            log.warning(
                "AUTHENTICATION IS OFF (EDGEFLEET_AUTH=none): anyone who can reach %s:%d can call every tool. "
                "For local development only.",
                settings.host,
                settings.port,
            )
        self.audit = AuditLog(
            self.redis if settings.audit else None,
            keys.audit,
            maxlen=settings.audit_maxlen,
            arguments=settings.audit_arguments,
            source=self.instance,
        )
        self.task_store = TaskStore(
            self.redis,
            keys,
            max_ttl_ms=int(settings.task_max_ttl_s * 1000),
            audit_maxlen=settings.audit_maxlen if settings.audit else 0,
            audit_source=self.instance,
        )
        self.tasks = TaskRunner(
            settings,
            self.task_store,
            self.fleet,
            self.router,
            self.paths,
            self.checks,
            self.metrics,
            self.instance,
            audit=self.audit,
        )
        # Pipelines: Temporal workflows when an address is set (crash-proof), else in-process.
        self.pipelines = sorted(config.pipelines)
        self.engine: PipelineEngine | None = None
        if config.pipelines and settings.temporal_address:
            self.engine = _engine()(
                settings, self.invoker, self.tasks, config.pipelines, instance=self.instance, audit=self.audit
            )
            self.tasks.host = self.engine
        elif waiting := sorted(n for n, spec in config.pipelines.items() if spec.approvals()):
            raise ConfigError(
                f"pipelines {waiting} have approval steps: waiting for people needs Temporal (EDGEFLEET_TEMPORAL_ADDRESS)."
            )
        for name, spec in config.pipelines.items():
            in_process = functools.partial(pipelines.run, self.invoker, name, spec)
            entry = builtin_entry(
                pipelines.definition(name, spec), self.engine.handler(name) if self.engine else in_process
            )
            entry.long_running = self.engine is not None  # a run may wait days: 2026 task clients get a task at once
            self.fleet.add_builtin(entry)
        self.auth = Authenticator.from_settings(settings)
        self.relay = RequestRelay(self.redis, keys, self.instance, self.fleet)
        self.request_states = _request_states(settings)
        self.held = HeldCalls(
            self.redis,
            keys,
            self.instance,
            self.relay,
            per_identity=settings.held_calls_per_identity,
            round_timeout_s=settings.round_timeout_s,
        )
        self.task_methods = TaskMethods(self.task_store, self.tasks, limits=self.limits)
        self.calls = ToolCalls(
            settings,
            self.fleet,
            self.router,
            self.paths,
            self.limits,
            self.metrics,
            runner=self.tasks,
            audit=self.audit,
            relay=self.relay,
            states=self.request_states,
            held=self.held,
        )
        self.features = Features(settings, self.fleet, self.router, self.paths, self.request_states)
        # Long-lived streams to agents (listen relays, resource watches) on their own client.
        self.stream_client = StreamClient(
            settings.connect_timeout_s, resolver=self.pool.resolver, check_peer=self.pool.check_peer
        )
        self.subscriptions = Subscriptions(
            settings, self.fleet, self.router, self.features, self.sessions, self.redis, keys, self.stream_client
        )
        self.fleet.on_rebuild.append(self.subscriptions.catalog_rebuilt)
        self.mcp = MCPEndpoint(
            settings,
            self.calls,
            self.features,
            self.sessions,
            self.subscriptions,
            self.auth,
            tasks=self.task_methods,
            audit=self.audit,
        )
        self.metrics.watch(
            StateSources(
                replicas=self.fleet.replica_states,
                pool=self.pool.connection_counts,
                stale_resends=self.pool.stale_resends,
                cache=lambda: (self.cache.hits, self.cache.misses, len(self.cache.entries)),
                catalog_tools=lambda: len(self.fleet.catalog.entries),
                refused=[
                    lambda: dict(self.limits.refused),
                    lambda: {"open_tasks": self.tasks.refused_open},
                    self.subscriptions.refusals,
                ],
                streams=self.subscriptions.counts,
            )
        )
        agent_keys = load_agent_keys(settings.agent_keys_file) if settings.agent_keys_file else {}
        self.registry_auth = AgentAuthenticator(settings.fleet_token.get_secret_value(), agent_keys, self.auth)
        self.api = build_api(
            self.fleet,
            settings.fleet_token.get_secret_value(),
            self.lifespan,
            self.metrics,
            tasks=self.task_methods,
            auth=self.auth,
            audit=self.audit,
            registry_auth=self.registry_auth,
        )
        if self.engine is not None:
            self.api.include_router(pipeline_routes(self.engine, self.auth))

    async def _exercise_replica(self, replica: Replica) -> None:
        await warmup.exercise_replica(self.direct, replica)

    def _forget_replica(self, replica: Replica) -> None:
        self.metrics.forget_replica(replica.record.agent, replica.record.region, replica.id)

    def _bus_streams(self) -> set[tuple[str, str]]:
        return {(r.record.agent, r.record.region) for r in self.fleet.replicas.values() if r.record.bus}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            path = scope["path"]
            if path in MCP_PATHS:
                await self.mcp(scope, receive, send)
                return
            if path.startswith(MOUNT_PREFIX):
                scope[SCOPE_VIEW] = path[len(MOUNT_PREFIX) :].rstrip("/")
                await self.mcp(scope, receive, send)
                return
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
                self.audit.record(
                    "agent.register",
                    by="config-file",
                    credential_kind="static-config",
                    agent=record.agent,
                    region=record.region,
                    replica=record.replica_id,
                    url=record.url,
                    tools=len(record.tools),
                )
                log.info(
                    "static agent %s (%s) at %s: %d tools", record.agent, record.region, record.url, len(record.tools)
                )
            except EdgefleetError as exc:
                log.error("static agent %s from %s refused: %s", request.name, self.settings.config_file, exc.message)
            except (redis.exceptions.RedisError, OSError) as exc:
                log.error("static agent %s not stored (Redis: %s)", request.name, exc)
        # Principle 1: nothing cold on the critical path. Wait (bounded) until the
        # catalog is loaded and every known replica has its pool warmed.
        # Serve as soon as the registry was read: agents whose leases lapsed while no
        # dispatcher was up must reach us to register again. /readyz says when the catalog
        # holds the fleet (Fleet._check_loaded); replicas are routable only once warm.
        try:
            await asyncio.wait_for(self.fleet.synced.wait(), timeout=5.0)
        except TimeoutError:
            log.warning("start-up: the registry could not be read yet; /readyz stays 503 until it is")
        await self.tasks.start()
        await self.relay.start()
        await self.held.start()
        if not self.request_states.shared:
            log.info(
                "EDGEFLEET_REQUEST_STATE_KEYS is not set: input_required rounds are sealed with a key of this "
                "process only; behind a load balancer, give every dispatcher the same keys."
            )
        await self.stream_client.start()
        await self.subscriptions.start()
        if self.engine is not None:
            await self.engine.start()
        elif self.pipelines:
            log.warning(
                "pipelines %s run in-process: NOT crash-proof (a dispatcher stopping mid-run loses the run). "
                "Set EDGEFLEET_TEMPORAL_ADDRESS to run them on Temporal.",
                ", ".join(self.pipelines),
            )
        await warmup.exercise_endpoint(self.mcp)
        log.info(
            "dispatcher serving in region %s: %d replicas known, %d tools so far (/readyz: %s)",
            self.settings.region,
            len(self.fleet.replicas),
            len(self.fleet.catalog.entries),
            "ready"
            if self.fleet.loaded.is_set()
            else "waiting for " + (", ".join(sorted(self.fleet.waiting_for)) or "the registry"),
        )

    def stopping(self) -> None:
        """The server was told to stop (SIGTERM), before it waits for open responses: the
        long-lived ones (subscription streams) end now, gracefully, so that it need not."""
        self.subscriptions.stop()

    async def aclose(self) -> None:
        await self.held.aclose()
        await self.subscriptions.aclose()
        await self.stream_client.aclose()
        await self.relay.aclose()
        if self.engine is not None:
            self.engine.stopping()  # runs outlive this process: cut calls are not cancellations
        await self.tasks.aclose()
        if self.engine is not None:
            await self.engine.aclose()  # in-flight steps finish (bounded) while the fleet is still up
        await self.fleet.aclose()
        if self.bus_path is not None:
            await self.bus_path.aclose()
        await self.pool.aclose()
        await self.limits.aclose()
        await self.audit.aclose()
        await self.redis.aclose()
        self.router.close()
        telemetry.flush()


def create_app(settings: DispatcherSettings | None = None) -> Dispatcher:
    return Dispatcher(settings or DispatcherSettings())


def _engine() -> type[PipelineEngine]:
    """The Temporal side, imported only when it is used (temporalio is the [temporal] extra)."""
    try:
        from edgefleet.dispatcher.builtins.workflows.engine import PipelineEngine
    except ImportError as exc:
        raise ConfigError(
            f"EDGEFLEET_TEMPORAL_ADDRESS is set but the Temporal SDK is missing ({exc}): pip install 'edgefleet[temporal]'."
        ) from None
    return PipelineEngine


def _request_states(settings: DispatcherSettings) -> RequestStates:
    keys = [k.strip() for k in settings.request_state_keys.get_secret_value().split(",") if k.strip()]
    try:
        return RequestStates(keys, ttl_s=settings.round_timeout_s)
    except ValueError as exc:
        raise ConfigError(f"EDGEFLEET_REQUEST_STATE_KEYS: {exc}") from None
