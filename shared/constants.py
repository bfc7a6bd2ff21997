"""Every protocol constant, Redis key, stream and topic name in one place.

Keys are built by functions so a test (or a second fleet in the same Redis) can use
its own prefix: ``keys("edgefleet-test-1").replica("abc")``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# --- MCP protocol eras -------------------------------------------------------------
MODERN_PROTOCOL_VERSION = "2026-07-28"
MODERN_PROTOCOL_VERSIONS = (MODERN_PROTOCOL_VERSION,)
# Handshake-era versions we accept from clients (all share the session shape of 2025-11-25).
LEGACY_PROTOCOL_VERSIONS = ("2025-11-25", "2025-06-18", "2025-03-26")
LATEST_LEGACY_VERSION = LEGACY_PROTOCOL_VERSIONS[0]
SUPPORTED_PROTOCOL_VERSIONS = MODERN_PROTOCOL_VERSIONS + LEGACY_PROTOCOL_VERSIONS

META_PROTOCOL_VERSION = "io.modelcontextprotocol/protocolVersion"
META_CLIENT_INFO = "io.modelcontextprotocol/clientInfo"
META_CLIENT_CAPABILITIES = "io.modelcontextprotocol/clientCapabilities"
META_LOG_LEVEL = "io.modelcontextprotocol/logLevel"
META_SERVER_INFO = "io.modelcontextprotocol/serverInfo"
# On every message of a subscriptions/listen stream: the JSON-RPC id of the listen request.
META_SUBSCRIPTION_ID = "io.modelcontextprotocol/subscriptionId"
# Our own _meta keys use our own reverse-DNS prefix (spec: second label must not be mcp).
META_EDGE_AGENT = "dev.edgefleet/agent"
META_EDGE_REPLICA = "dev.edgefleet/replica"
META_EDGE_REGION = "dev.edgefleet/region"
META_EDGE_UPSTREAM_NAME = "dev.edgefleet/upstreamName"
# On a tool definition: results of this read-only tool may be cached for N seconds.
META_EDGE_CACHE_TTL = "dev.edgefleet/cacheTtlS"
# On a tool definition: "bus" to have calls go over the bus instead of direct HTTP.
META_EDGE_PATH = "dev.edgefleet/path"
# A tool's task support when its agent cannot say it in ``execution.taskSupport`` (the SDK's
# tool decorator has no such field): "required" | "optional" | "forbidden".
META_EDGE_TASK_SUPPORT = "dev.edgefleet/taskSupport"
# An agent's hint that a tool runs for long (minutes): 2026-era clients that declare the
# tasks extension get a task for it at once instead of a held-open stream.
META_EDGE_LONG_RUNNING = "dev.edgefleet/longRunning"
META_RELATED_TASK = "io.modelcontextprotocol/related-task"
META_MODEL_IMMEDIATE_RESPONSE = "io.modelcontextprotocol/model-immediate-response"
TASKS_EXTENSION = "io.modelcontextprotocol/tasks"

HEADER_PROTOCOL_VERSION = "mcp-protocol-version"
HEADER_SESSION_ID = "mcp-session-id"
HEADER_METHOD = "mcp-method"
HEADER_NAME = "mcp-name"
# Our own HTTP headers (lowercase: ASGI header maps are lowercase).
# Client -> dispatcher: preferred regions ("eu-west,us-east" or "eu-west;only").
HEADER_REGION_HINT = "x-edge-region"
# Client -> dispatcher (optional, capped) and dispatcher -> agent: milliseconds left.
HEADER_TIMEOUT = "edgefleet-timeout-ms"
# Dispatcher -> client: where the call went ("region=eu-west; replica=...; reason=network").
HEADER_ROUTE = "edgefleet-route"

# --- names --------------------------------------------------------------------------
# MCP tool names: [A-Za-z0-9_.-]{1,128}. Agent names are stricter (no dot) so that the
# namespaced form "agent.tool" always splits unambiguously at the first dot.
TOOL_NAME_RE = re.compile(r"^[A-Za-z0-9_.\-]{1,128}$")
AGENT_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
REGION_NAME_RE = re.compile(r"^[a-z][a-z0-9-]{0,31}$")
NAMESPACE_SEPARATOR = "."
MAX_TOOL_NAME = 128
# Namespace reserved for tools the dispatcher itself provides (fan-out, pipelines).
RESERVED_AGENT_NAMES = frozenset({"edgefleet", "edge", "dispatcher", "admin"})

DEFAULT_REDIS_PREFIX = "edgefleet"


@dataclass(frozen=True)
class RedisKeys:
    """Redis key names for one fleet (one prefix)."""

    prefix: str = DEFAULT_REDIS_PREFIX

    @property
    def replicas(self) -> str:
        """ZSET replica id -> expiry (ms since epoch); static agents have +inf."""
        return f"{self.prefix}:replicas"

    def replica(self, replica_id: str) -> str:
        """JSON record of one replica (with a TTL unless static)."""
        return f"{self.prefix}:replica:{replica_id}"

    @property
    def fleet_changed(self) -> str:
        """Pub/sub channel: a registration or removal happened; dispatchers resync."""
        return f"{self.prefix}:fleet:changed"

    @property
    def audit(self) -> str:
        """STREAM: the audit events of every dispatcher of the fleet (dispatcher/audit.py)."""
        return f"{self.prefix}:audit"

    def session(self, session_id: str) -> str:
        """A 2025-era MCP session (so any dispatcher replica can serve it)."""
        return f"{self.prefix}:session:{session_id}"

    def task(self, task_id: str) -> str:
        """HASH: one task's record (status, times, owner, request, result or error)."""
        return f"{self.prefix}:task:{task_id}"

    def task_history(self, task_id: str) -> str:
        """LIST: one task's status changes, oldest first (JSON entries)."""
        return f"{self.prefix}:task:{task_id}:history"

    def tasks_of(self, owner: str) -> str:
        """ZSET task id -> created (ms): one identity's tasks (tasks/list pages through it)."""
        return f"{self.prefix}:tasks:owner:{owner}"

    @property
    def tasks_all(self) -> str:
        """ZSET task id -> created (ms): every task (admin listing)."""
        return f"{self.prefix}:tasks:all"

    @property
    def task_deadlines(self) -> str:
        """ZSET task id -> deadline (ms) of every unfinished task: past it the task fails."""
        return f"{self.prefix}:tasks:deadlines"

    @property
    def task_leases(self) -> str:
        """ZSET task id -> lease expiry (ms) of tasks run inside a dispatcher process: a lease
        nobody renews means that process is gone and another one recovers the task."""
        return f"{self.prefix}:tasks:leases"

    @property
    def task_events(self) -> str:
        """Pub/sub channel: a task changed (status, progress, cancel); waiters wake up."""
        return f"{self.prefix}:tasks:events"

    def subscriptions(self, session_id: str) -> str:
        """SET: the resource URIs a 2025-era session subscribed to (``resources/subscribe``),
        with the session's TTL; the dispatcher holding the session's GET stream keeps the
        upstream subscriptions for them (dispatcher/mcp/subscriptions.py)."""
        return f"{self.prefix}:subscriptions:{session_id}"

    @property
    def mcp_events(self) -> str:
        """Pub/sub channel between dispatchers about 2025-era sessions' streams: a session's
        subscriptions changed, its GET stream moved to another dispatcher, it was deleted."""
        return f"{self.prefix}:mcp-events"

    def relay(self, instance: str) -> str:
        """STREAM: a client's answers to server->client requests that one dispatcher instance
        relayed, when the answer reached another instance (dispatcher/mcp/relay.py)."""
        return f"{self.prefix}:relay:{instance}"

    def rounds(self, instance: str) -> str:
        """STREAM: retries of calls one dispatcher instance holds open for a client's input
        (or their cancels), when the retry reached another instance (dispatcher/mcp/held.py)."""
        return f"{self.prefix}:rounds:{instance}"

    def round_reply(self, token: str) -> str:
        """STREAM: the answer to one such retry, written by the holding instance, relayed by
        the one the client is connected to."""
        return f"{self.prefix}:round-reply:{token}"


@dataclass(frozen=True)
class BusNames:
    """Stream (Redis) / topic (Kafka) names of one fleet. Dots, not colons: Kafka topic
    names allow only [A-Za-z0-9._-]."""

    prefix: str = DEFAULT_REDIS_PREFIX

    def calls(self, agent: str, region: str) -> str:
        """Work for one agent in one region; its replicas there share it as group ``agent``."""
        return f"{self.prefix}.calls.{agent}.{region}"

    def replies(self, instance: str) -> str:
        """Results and progress for one dispatcher instance (the reply address)."""
        return f"{self.prefix}.replies.{instance}"

    def group(self, agent: str, region: str) -> str:
        """Consumer group of an agent's replicas in one region. One group per (fleet, agent,
        region): a Kafka group spans topics, so sharing one across regions (or fleets on one
        cluster) would make every replica's join rebalance all of them."""
        return f"{self.prefix}.{agent}.{region}"

    def task_replies(self) -> str:
        """Replies of bus calls run as tasks: shared by every dispatcher (group
        ``dispatchers``), so a task's result lands in the store even when the dispatcher
        that published the call is gone."""
        return f"{self.prefix}.task-replies"

    def dispatchers(self) -> str:
        """Consumer group of the dispatchers on the task replies stream."""
        return f"{self.prefix}.dispatchers"

    def cancels(self, agent: str) -> str:
        """Cancel requests for an agent's bus calls; every replica listens."""
        return f"{self.prefix}.cancels.{agent}"


def keys(prefix: str = DEFAULT_REDIS_PREFIX) -> RedisKeys:
    return RedisKeys(prefix)
