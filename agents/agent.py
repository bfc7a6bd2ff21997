"""``Agent``: an MCP server (the official SDK's MCPServer) plus fleet membership.

The MCP side is served statelessly (protocol 2026-07-28, one POST per call, and 2025-era
clients still work): the dispatcher forwards each call on a pooled keep-alive connection
and needs no per-replica session. Cancellation is the SDK's: when the caller closes the
response stream the handler task is cancelled at its next ``await``.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import logging
import math
import signal
import socket
from collections.abc import Callable, Generator, Sequence
from typing import Any, TypeVar

import httpx
import uvicorn
from mcp.server.mcpserver import MCPServer
from mcp.types import ToolAnnotations

from edgefleet import bus
from edgefleet.agents.asgi import InflightCounter
from edgefleet.agents.bus_worker import BusWorker
from edgefleet.agents.registration import Registrar
from edgefleet.shared import logsetup, telemetry
from edgefleet.shared.constants import (
    AGENT_NAME_RE,
    DEFAULT_REDIS_PREFIX,
    HEADER_METHOD,
    HEADER_NAME,
    HEADER_PROTOCOL_VERSION,
    META_CLIENT_CAPABILITIES,
    META_EDGE_CACHE_TTL,
    META_EDGE_LONG_RUNNING,
    META_EDGE_PATH,
    META_EDGE_TASK_SUPPORT,
    META_PROTOCOL_VERSION,
    MODERN_PROTOCOL_VERSION,
    RESERVED_AGENT_NAMES,
    BusNames,
)
from edgefleet.shared.http_server import CoalescingHttpTools
from edgefleet.shared.settings import AgentSettings, check_environment

log = logging.getLogger("edgefleet.agent")

F = TypeVar("F", bound=Callable[..., Any])


class _OwnSignalsServer(uvicorn.Server):
    """uvicorn without its own SIGINT/SIGTERM handling: the agent owns the signals, so that
    it leaves the fleet first and only then lets uvicorn drain (see ``Agent.serve``)."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


class Agent:
    """A named agent: tools as decorated, type-hinted functions (schemas are derived)."""

    def __init__(
        self,
        name: str,
        *,
        description: str | None = None,
        version: str = "0.1.0",
        instructions: str | None = None,
    ) -> None:
        if not AGENT_NAME_RE.match(name) or name in RESERVED_AGENT_NAMES:
            raise ValueError(
                f"agent name {name!r} must match {AGENT_NAME_RE.pattern} and not be one of "
                f"{sorted(RESERVED_AGENT_NAMES)}: it becomes the namespace of its tools ('{name}.tool')"
            )
        self.name = name
        self.version = version
        # Where this replica serves (known once ``serve`` starts; tools may report it).
        self.region: str | None = None
        self.url: str | None = None
        self.mcp = MCPServer(name, description=description, instructions=instructions, version=version)

    def tool(
        self,
        name: str | None = None,
        *,
        title: str | None = None,
        description: str | None = None,
        annotations: ToolAnnotations | None = None,
        meta: dict[str, Any] | None = None,
        cache_ttl_s: float | None = None,
        path: str | None = None,
        task_support: str | None = None,
        long_running: bool = False,
    ) -> Callable[[F], F]:
        """Register a tool. Add a ``ctx: Context`` parameter to report progress or log.

        ``cache_ttl_s`` lets the dispatcher serve repeated calls with equal arguments from
        its cache for that long; it requires (and implies) ``readOnlyHint``. ``path="bus"``
        asks the dispatcher to send calls over the bus (durable, at-least-once) instead of
        direct HTTP.

        The dispatcher runs any tool as an MCP task. ``task_support="required"`` makes
        clients call it only as a task ("forbidden": never); ``long_running`` tells the
        dispatcher to answer 2026-era clients that accept tasks with one right away.
        """
        if task_support is not None:
            if task_support not in ("required", "optional", "forbidden"):
                raise ValueError("task_support is 'required', 'optional' or 'forbidden'")
            meta = {**(meta or {}), META_EDGE_TASK_SUPPORT: task_support}
        if long_running:
            meta = {**(meta or {}), META_EDGE_LONG_RUNNING: True}
        if path is not None:
            if path not in ("bus", "direct"):
                raise ValueError("path is 'bus' or 'direct'")
            meta = {**(meta or {}), META_EDGE_PATH: path}
        if cache_ttl_s is not None:
            if cache_ttl_s <= 0:
                raise ValueError("cache_ttl_s must be positive")
            if annotations is not None and annotations.read_only_hint is False:
                raise ValueError("only read-only tools can be cached (readOnlyHint=False given)")
            annotations = (annotations or ToolAnnotations()).model_copy(update={"read_only_hint": True})
            meta = {**(meta or {}), META_EDGE_CACHE_TTL: cache_ttl_s}
        return self.mcp.tool(name=name, title=title, description=description, annotations=annotations, meta=meta)

    def asgi_app(self, settings: AgentSettings) -> InflightCounter:
        """The MCP app at ``/mcp`` plus ``/healthz``, counting calls in flight for heartbeats."""
        inner = self.mcp.streamable_http_app(stateless_http=True, host=settings.host)
        return InflightCounter(inner)

    async def serve(self, settings: AgentSettings, *, ready: asyncio.Event | None = None) -> None:
        """Serve until cancelled or signalled; register and heartbeat while serving."""
        app = self.asgi_app(settings)
        sock = socket.socket(socket.AF_INET6 if ":" in settings.host else socket.AF_INET, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((settings.host, settings.port))
        port = sock.getsockname()[1]
        public_url = settings.public_url or f"http://{_url_host(settings.host)}:{port}/mcp"
        self.region, self.url = settings.region, public_url
        config = uvicorn.Config(
            app,
            log_level="warning",
            loop="none",
            http=CoalescingHttpTools,  # httptools, a JSON answer's head and body in one write
            lifespan="on",
            timeout_graceful_shutdown=math.ceil(settings.drain_timeout_s),
            timeout_keep_alive=75,  # longer than the dispatcher pool's idle timeout (60 s)
            access_log=False,
            proxy_headers=False,  # the agent has no use for client addresses; skip the middleware
        )
        server = _OwnSignalsServer(config)
        serve_task = asyncio.create_task(server.serve(sockets=[sock]))
        while not server.started:
            if serve_task.done():
                await serve_task
                return
            await asyncio.sleep(0.01)
        # Warm our own request path before anyone can route here, so the first real call
        # pays no lazy set-up (HTTP parser, MCP session manager, request models).
        await _warm_up(public_url)
        log.info("agent %s (%s) serving MCP at %s", self.name, settings.region, public_url)
        print(f"EDGEFLEET_AGENT_READY name={self.name} region={settings.region} url={public_url}", flush=True)
        registrar: Registrar | None = None
        worker: list[BusWorker] = []

        def start_bus_worker(info: dict[str, Any]) -> None:
            bus_info = info.get("bus") or {}
            url = settings.bus_url or bus_info.get("url")
            if worker or not url or registrar is None:
                return
            names = BusNames(bus_info.get("prefix") or DEFAULT_REDIS_PREFIX)
            bus_client = bus.connect(url)
            worker.append(
                BusWorker(
                    bus_client,
                    names,
                    agent=self.name,
                    region=settings.region,
                    replica_id=registrar.replica_id,
                    mcp_url=public_url,
                    max_inflight=settings.bus_max_inflight,
                    visibility_s=settings.bus_visibility_s,
                )
            )
            worker[0].start()
            log.info(
                "agent %s (%s) consuming bus calls from %s",
                self.name,
                settings.region,
                names.calls(self.name, settings.region),
            )

        if settings.dispatcher_url:
            registrar = Registrar(
                agent=self.name,
                version=self.version,
                region=settings.region,
                url=public_url,
                dispatcher_url=settings.dispatcher_url,
                # Its own key (bound to its name on the dispatcher) when it has one.
                fleet_token=settings.agent_key.get_secret_value() or settings.fleet_token.get_secret_value(),
                heartbeat_s=settings.heartbeat_s,
                load=lambda: {"inflight": app.inflight, "bus_ready": bool(worker and worker[0].ready)},
                bus=True,
                on_registered=start_bus_worker,
            )
            registrar.start()
        if ready is not None:
            ready.set()
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            with contextlib.suppress(NotImplementedError, RuntimeError):  # not the main thread (tests)
                loop.add_signal_handler(sig, stop.set)
        try:
            stop_task = asyncio.create_task(stop.wait())
            await asyncio.wait({serve_task, stop_task}, return_when=asyncio.FIRST_COMPLETED)
            stop_task.cancel()
        finally:
            # Graceful drain: leave the fleet first; keep serving while dispatchers learn
            # of it (calls already routed here still arrive); then finish what runs.
            if registrar is not None:
                await registrar.aclose()
                log.info(
                    "left the fleet; serving %.1f s more while dispatchers stop routing here", settings.drain_delay_s
                )
                await asyncio.sleep(settings.drain_delay_s)
            if worker:  # unfinished bus calls stay unacked: another replica takes them over
                await worker[0].aclose(drain_s=settings.drain_timeout_s)
                await worker[0].bus.close()
            server.should_exit = True  # uvicorn stops accepting and finishes in-flight calls
            await asyncio.gather(serve_task, return_exceptions=True)

    def main(self, argv: Sequence[str] | None = None) -> None:
        """Command-line entry: ``python -m edgefleet.agents.<name> [--region R] [--port P] [--dispatcher URL]``."""
        parser = argparse.ArgumentParser(
            prog=f"python -m edgefleet.agents.{self.name}", description=f"Run the {self.name!r} agent."
        )
        parser.add_argument("--region", help="region of this replica (EDGEFLEET_AGENT_REGION)")
        parser.add_argument("--host", help="interface to listen on (EDGEFLEET_AGENT_HOST)")
        parser.add_argument("--port", type=int, help="port to listen on, 0 = any free (EDGEFLEET_AGENT_PORT)")
        parser.add_argument("--dispatcher", help="dispatcher URL to register with (EDGEFLEET_DISPATCHER_URL)")
        args = parser.parse_args(argv)
        check_environment()
        overrides = {
            k: v
            for k, v in {
                "region": args.region,
                "host": args.host,
                "port": args.port,
                "dispatcher_url": args.dispatcher,
            }.items()
            if v is not None
        }
        settings = AgentSettings(**overrides)
        # Replaces the root handler the MCP SDK's MCPServer installed when the agent was built.
        logsetup.configure(settings.log_level, settings.log_format)
        logging.getLogger("httpx").setLevel(logging.WARNING)  # one line per heartbeat is noise
        telemetry.configure(f"edgefleet-agent-{self.name}", cloud_region=settings.region, service_version=self.version)
        for handler in logging.getLogger().handlers:
            # Warm-up calls of a nonexistent tool (ours in _warm_up, the dispatcher's in
            # dispatcher/warmup.py) are expected failures; the SDK would log each one.
            handler.addFilter(lambda record: "edgefleet-warm-up" not in record.getMessage())
        try:
            import uvloop

            uvloop.run(self.serve(settings))
        except ImportError:  # pragma: no cover - uvloop is a dependency on Linux/macOS
            asyncio.run(self.serve(settings))


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", "::", ""):
        return socket.gethostname()
    return f"[{host}]" if ":" in host else host


async def _warm_up(url: str) -> None:
    """Exercise the MCP request path with calls that have no effect: ``ping``,
    ``tools/list`` and a ``tools/call`` of a tool that does not exist."""
    meta = {META_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION, META_CLIENT_CAPABILITIES: {}}
    headers = {"accept": "application/json, text/event-stream", HEADER_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION}
    requests = [
        ("ping", None, {"_meta": meta}),
        ("tools/list", None, {"_meta": meta}),
        ("tools/call", "edgefleet-warm-up", {"name": "edgefleet-warm-up", "arguments": {}, "_meta": meta}),
    ]
    try:
        async with httpx.AsyncClient(timeout=5) as http:
            for method, name, params in requests:
                extra = {HEADER_METHOD: method, **({HEADER_NAME: name} if name else {})}
                await http.post(
                    url,
                    json={"jsonrpc": "2.0", "id": 0, "method": method, "params": params},
                    headers={**headers, **extra},
                )
    except httpx.HTTPError as exc:  # warm-up is an optimisation: never a reason not to start
        log.warning("warm-up of %s failed: %s", url, exc)
