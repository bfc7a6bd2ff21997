"""Settings for every edgefleet service, read from ``EDGEFLEET_*`` environment variables.

One object per service (dispatcher, agent). Tests build them with keyword arguments and
never patch ``os.environ``. ``check_environment`` rejects unknown ``EDGEFLEET_*`` names
at start-up so a typo (``EDGEFLEET_REDIS_ULR``) fails loudly instead of being ignored.
"""

from __future__ import annotations

import difflib
import ipaddress
import os
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Literal

from pydantic import AliasChoices, Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

from edgefleet.shared.constants import DEFAULT_REDIS_PREFIX, REGION_NAME_RE
from edgefleet.shared.errors import ConfigError

ENV_PREFIX = "EDGEFLEET_"
# Variables read by the test fixtures, not by a service.
_TEST_PREFIX = "EDGEFLEET_TEST_"
# Read by the command-line client (`edgefleet tools|call`), not by a service.
_CLIENT_VARIABLES = frozenset({"EDGEFLEET_API_KEY"})


class DispatcherSettings(BaseSettings):
    """The resident dispatcher (``edgefleet serve`` / ``edgefleet dev``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX, extra="forbid", frozen=True)

    host: str = Field("127.0.0.1", description="Interface the dispatcher listens on.")
    port: int = Field(8700, ge=0, le=65535, description="Port of the dispatcher (MCP at /mcp, REST at /v1).")
    public_url: str | None = Field(None, description="URL clients use to reach this dispatcher (printed by dev).")
    region: str = Field("local", description="Region this dispatcher runs in; its replicas are preferred.")
    redis_url: str = Field("redis://127.0.0.1:6379/0", description="Redis holding the registry and sessions.")
    redis_prefix: str = Field(DEFAULT_REDIS_PREFIX, description="Prefix of every Redis key (one fleet per prefix).")
    fleet_token: SecretStr = Field(
        SecretStr(""), description="Shared secret agents present to register and heartbeat (required)."
    )
    config_file: Path | None = Field(None, description="TOML or YAML file listing static (unmodified) MCP servers.")
    heartbeat_ttl_s: float = Field(5.0, gt=0, description="A replica without a heartbeat for this long drops out.")
    registry_sync_s: float = Field(1.0, gt=0, description="How often each dispatcher re-reads the registry.")
    warm_connections: int = Field(
        4, ge=1, le=256, description="Keep-alive connections opened to a replica before it is routable."
    )
    max_connections_per_replica: int = Field(256, ge=1, description="Upper bound of pooled connections per replica.")
    probe_interval_s: float = Field(2.0, gt=0, description="Active health probe interval per replica.")
    surface_refresh_s: float = Field(
        30.0, gt=0, description="How often the prompts, resources and templates of each agent are read again."
    )
    probe_timeout_s: float = Field(1.0, gt=0, description="Timeout of one health probe.")
    unhealthy_after: int = Field(
        2, ge=1, description="Consecutive failed probes/calls that open a replica's circuit breaker."
    )
    eject_error_rate: float = Field(
        0.5, gt=0, le=1, description="Error rate over eject_window_s that opens the breaker (with eject_min_calls)."
    )
    eject_min_calls: int = Field(20, ge=1, description="Calls in the window before the error rate counts.")
    eject_window_s: float = Field(10.0, gt=0, description="Window of the error-rate check.")
    eject_base_s: float = Field(
        5.0, gt=0, description="First ejection time; doubles per repeated ejection, then a half-open trial."
    )
    eject_max_s: float = Field(60.0, gt=0, description="Longest ejection time.")
    replica_policy: Literal["p2c-ewma", "least-outstanding"] = Field(
        "p2c-ewma", description="Replica choice inside a region: p2c-ewma (latency-aware) or least-outstanding."
    )
    trusted_proxies: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs whose X-Forwarded-For/Forwarded headers are believed (comma-separated).",
    )
    forwarded_header: Literal["x-forwarded-for", "forwarded"] = Field(
        "x-forwarded-for",
        description="The one header trusted proxies write the client address to (the other is ignored).",
    )
    geoip_city_db: Path | None = Field(
        None, description="GeoIP2/GeoLite2 City .mmdb: caller coordinates -> nearest region."
    )
    geoip_private_db: Path | None = Field(
        None, description="Custom .mmdb whose records carry 'region' (private networks)."
    )
    region_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list, description="Static CIDR=region table, e.g. 10.1.0.0/16=eu-west,10.2.0.0/16=us-east."
    )
    region_order: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Region order for callers of unknown location (empty: own region, then nearest).",
    )
    region_hint: bool = Field(True, description="Honour the X-Edge-Region header (preferred or only regions).")
    bus_url: str | None = Field(
        None,
        description="Bus for bus-path calls: redis://, rediss://, unix:// or kafka://host:port (unset: direct path only).",
    )
    bus_public_url: str | None = Field(
        None, description="Bus URL handed to agents at registration when theirs differs (default: bus_url)."
    )
    bus_tools: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Tools (globs over agent.tool) sent over the bus, e.g. trainer.*,data.describe.",
    )
    bus_stream_maxlen: int = Field(100_000, ge=100, description="Bound of each Redis stream (approximate MAXLEN).")
    result_cache_entries: int = Field(
        10000, ge=0, description="Results kept for read-only tools that declare a cache TTL (0: off)."
    )
    connect_timeout_s: float = Field(2.0, gt=0, description="TCP connect timeout to a replica.")
    call_timeout_s: float = Field(300.0, gt=0, description="Default deadline of one tool call.")
    request_state_keys: SecretStr = Field(
        SecretStr(""),
        description="Comma-separated secrets (32+ bytes each) sealing input_required rounds; the first seals, all "
        "open. Same on every dispatcher behind one URL (unset: a per-process key, rounds resume only there).",
    )
    round_timeout_s: float = Field(
        600.0, gt=0, description="How long an input_required round waits for the client's retry (and its state lives)."
    )
    held_calls_per_identity: int = Field(
        16, ge=1, description="Calls of one identity a dispatcher holds open while 2025-era agents wait for input."
    )
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024, description="Largest accepted request body (413 above).")
    # NoDecode: the env value is a comma-separated list, not JSON.
    allowed_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=lambda: ["http://localhost", "http://127.0.0.1", "https://localhost"],
        description="Browser Origins allowed on /mcp (scheme://host, any port); others get 403.",
    )
    session_ttl_s: float = Field(3600.0, gt=0, description="Idle lifetime of a 2025-era MCP session.")
    stream_keepalive_s: float = Field(
        15.0,
        gt=0,
        description="An SSE comment is sent on quiet notification streams (subscriptions/listen, 2025 GET) this often.",
    )
    max_streams: int = Field(
        10_000, ge=1, description="Open notification streams (listen + 2025 GET) one dispatcher serves at once."
    )
    max_streams_per_identity: int = Field(
        256, ge=1, description="Open notification streams one identity may hold on one dispatcher."
    )
    max_resource_subscriptions: int = Field(
        256, ge=1, description="Resource URIs one subscriptions/listen, or one 2025 session, may subscribe to."
    )
    max_upstream_subscriptions: int = Field(
        10_000,
        ge=1,
        description="Distinct agent resources one dispatcher subscribes to upstream (shared by its clients).",
    )
    max_event_bytes: int = Field(
        64 * 1024,
        ge=1024,
        description="Largest notification relayed from an agent's stream (larger ones are dropped and logged).",
    )
    task_ttl_s: float = Field(
        86400.0,
        gt=0,
        description="How long a task and its result are kept from creation when the client asks for no ttl.",
    )
    task_max_ttl_s: float = Field(
        7 * 86400.0, gt=0, description="Longest task retention a client may ask for (longer asks are cut to this)."
    )
    task_timeout_s: float = Field(
        3600.0, gt=0, description="Deadline of the work of one task (a task past it fails with upstream_timeout)."
    )
    task_poll_interval_ms: int = Field(1000, ge=50, description="pollInterval suggested to clients polling tasks/get.")
    task_after_ms: int = Field(
        10_000,
        ge=0,
        description="2026-era clients that declare the tasks extension: a call still running after this long is answered with a task (0: never).",
    )
    task_lease_s: float = Field(
        10.0,
        gt=0,
        description="A task run inside a dispatcher that stops renewing its lease this long is recovered by another dispatcher.",
    )
    log_level: str = Field("info", description="debug | info | warning | error.")
    log_format: str = Field("json", description="json (one object per line) or text (for humans).")
    auth: Literal["required", "none"] = Field(
        "required",
        description="Client authentication on /mcp: required (API keys and/or JWT must be configured) or none (dev only).",
    )
    api_keys_file: Path | None = Field(
        None, description="YAML file of API keys (hashed), each with identity, scopes, tools, regions."
    )
    jwt_secret: SecretStr | None = Field(None, description="HS256 secret for JWT bearer tokens.")
    jwt_jwks: str | None = Field(None, description="JWKS file path or https URL with the keys of RS256/ES256 tokens.")
    jwt_issuer: str | None = Field(None, description="Required `iss` of JWTs (unset: not checked).")
    jwt_audience: str | None = Field(
        None, description="Required `aud` of JWTs, usually this server's /mcp URL (unset: not checked)."
    )
    jwt_leeway_s: float = Field(30.0, ge=0, description="Clock skew tolerated on exp/nbf.")
    agent_networks: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="CIDRs agent URLs must resolve into (comma-separated; unset: any but link-local/metadata).",
    )
    rate_limit: str | None = Field(
        None, description="Calls per identity across all dispatchers on one Redis, e.g. 600/minute (unset: none)."
    )
    tool_rate_limits: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Per identity and tool, e.g. trainer.*=2/minute,text.*=20/second (comma-separated).",
    )
    rate_limit_lease_ms: int = Field(
        100,
        ge=0,
        le=10_000,
        description="How long a busy identity's calls use hits this dispatcher took from Redis at once "
        "(at most 1 % of a limit; 0: ask Redis on every call).",
    )
    max_concurrent_calls: int = Field(
        0, ge=0, description="Calls one identity may have in flight on one dispatcher (0: no cap)."
    )
    task_rate_limit: str | None = Field(
        None,
        description="tasks/* requests and /v1/tasks reads per identity across all dispatchers, e.g. 20/second (unset: none).",
    )
    max_open_tasks: int = Field(
        100, ge=0, description="Unfinished tasks one identity may have across the fleet (0: no cap)."
    )
    max_result_bytes: int = Field(
        16 * 1024 * 1024, ge=1024, description="Largest tool answer relayed to a client (result_too_large above)."
    )
    validate_results: bool = Field(
        True,
        description="Check structuredContent against the tool's outputSchema (invalid_tool_result when it does not match).",
    )
    agent_keys_file: Path | None = Field(
        None, description="YAML file of per-agent credentials (hashed), each bound to one agent name."
    )
    audit: bool = Field(
        True,
        description="Write the audit stream (Redis stream <prefix>:audit): registrations, calls, tasks, auth failures, limit hits.",
    )
    audit_arguments: bool = Field(
        False, description="Include tool argument values in the audit stream's call events (off: names only)."
    )
    audit_maxlen: int = Field(
        1_000_000, ge=1000, description="Events kept in the audit stream (approximate MAXLEN; older ones are trimmed)."
    )
    temporal_address: str | None = Field(
        None,
        description="Temporal frontend (host:port) that runs pipelines as crash-proof workflows "
        "(unset: pipelines run in-process, not crash-proof).",
    )
    temporal_namespace: str = Field("default", description="Temporal namespace of the pipeline workflows.")
    temporal_task_queue: str = Field(
        "edgefleet-pipelines",
        description="Temporal task queue every dispatcher's pipeline worker polls (one per fleet).",
    )
    temporal_tls: bool = Field(False, description="Connect to Temporal over TLS (implied by temporal_api_key).")
    temporal_api_key: SecretStr = Field(
        SecretStr(""), description="API key for Temporal Cloud (sent as a bearer token, over TLS)."
    )
    temporal_heartbeat_s: float = Field(
        5.0,
        gt=0,
        le=300,
        description="A pipeline step whose dispatcher stops heartbeating this long is taken over by another "
        "(idempotent tools) or fails as outcome_unknown.",
    )
    # -- what the dispatcher accepts from agents, and how long it waits for them ------------
    max_agent_answer_bytes: int = Field(
        4 * 1024 * 1024,
        ge=1024,
        description="Largest answer read from an agent outside tool calls: server/discover, initialize, probes, each tools/list page and all pages of one listing together (agent_answer_too_large above).",
    )
    attempt_timeout_s: float = Field(
        5.0,
        ge=0,
        description="A replica that has not started reading a call after this long (no 100 Continue) counts as hung: the attempt ends, idempotent tools go to another replica, others get outcome_unknown. Bounds only replicas seen to send 100 Continue, never how long a tool works (0: off).",
    )
    oauth_authorization_servers: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Authorization server URLs named in /.well-known/oauth-protected-resource (comma-separated).",
    )
    # -- bounds on what clients and agents can make a dispatcher hold, and readiness --------
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request's head must arrive within this long of its connection opening (or its first byte): else 408 and closed.",
    )
    body_timeout_s: float = Field(
        30.0, gt=0, description="A request's body must arrive within this long of its head: else 408 and closed."
    )
    max_connections: int = Field(
        4096, ge=1, description="Client connections one dispatcher holds open; more get 503 and are closed at once."
    )
    max_header_bytes: int = Field(
        65536,
        ge=4096,
        description="Largest request head (request line and headers) a client may send: 431 and closed above.",
    )
    ready_wait_s: float = Field(
        15.0,
        ge=0,
        description="After a start, /readyz waits up to this long for the agents the registry saw within a day to be back in the catalog.",
    )
    max_tools_per_agent: int = Field(
        1000, ge=1, description="Tools one agent may publish; registration above it is refused (too_many_tools)."
    )
    max_schema_bytes: int = Field(
        65536,
        ge=1024,
        description="Largest JSON of one tool's definition (schemas, description); registration above it is refused (tool_too_large).",
    )
    max_sessions_per_identity: int = Field(
        1000,
        ge=1,
        description="2025-era sessions one identity holds across the fleet; opening one more ends its least recently used.",
    )

    @field_validator("region")
    @classmethod
    def _region_name(cls, value: str) -> str:
        if not REGION_NAME_RE.match(value):
            raise ValueError("region names are lowercase letters, digits and '-', starting with a letter")
        return value

    @field_validator(
        "allowed_origins",
        "trusted_proxies",
        "region_networks",
        "region_order",
        "bus_tools",
        "oauth_authorization_servers",
        "tool_rate_limits",
        "agent_networks",
        mode="before",
    )
    @classmethod
    def _split_lists(cls, value: object) -> object:
        if isinstance(value, str):
            return [item.strip() for item in value.split(",") if item.strip()]
        return value

    @field_validator("trusted_proxies", "agent_networks")
    @classmethod
    def _networks(cls, value: list[str]) -> list[str]:
        for item in value:
            try:
                ipaddress.ip_network(item, strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r} is not a CIDR network: {exc}") from None
        return value

    @field_validator("region_networks")
    @classmethod
    def _region_networks(cls, value: list[str]) -> list[str]:
        for item in value:
            cidr, sep, region = item.partition("=")
            try:
                ipaddress.ip_network(cidr.strip(), strict=False)
            except ValueError as exc:
                raise ValueError(f"{item!r}: {exc}") from None
            if not sep or not REGION_NAME_RE.match(region.strip()):
                raise ValueError(f"{item!r} must look like CIDR=region (10.1.0.0/16=eu-west)")
        return value

    @field_validator("region_order")
    @classmethod
    def _region_names(cls, value: list[str]) -> list[str]:
        for item in value:
            if not REGION_NAME_RE.match(item):
                raise ValueError(f"{item!r} is not a region name")
        return value

    @field_validator(
        "config_file", "geoip_city_db", "geoip_private_db", "api_keys_file", "agent_keys_file", mode="before"
    )
    @classmethod
    def _empty_path_is_unset(cls, value: object) -> object:
        # Compose passes `${EDGEFLEET_CONFIG_FILE:-}` through as "": no file, not the folder ".".
        return None if isinstance(value, str) and not value.strip() else value


class AgentSettings(BaseSettings):
    """An agent process built with the agent SDK (``python -m edgefleet.agents.examples.text``)."""

    model_config = SettingsConfigDict(env_prefix=ENV_PREFIX + "AGENT_", extra="forbid", frozen=True)

    dispatcher_url: str | None = Field(
        None,
        validation_alias=AliasChoices("EDGEFLEET_DISPATCHER_URL", "dispatcher_url"),
        description="The ONE dispatcher URL the agent registers with (unset: run standalone).",
    )
    fleet_token: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("EDGEFLEET_FLEET_TOKEN", "fleet_token"),
        description="Shared secret for registration and heartbeats.",
    )
    agent_key: SecretStr = Field(
        SecretStr(""),
        validation_alias=AliasChoices("EDGEFLEET_AGENT_KEY", "agent_key"),
        description="This agent's own credential (bound to its name on the dispatcher); used instead of the fleet token when set.",
    )
    region: str = Field("local", description="Region this replica serves.")
    host: str = Field("127.0.0.1", description="Interface the agent's MCP server listens on.")
    port: int = Field(0, ge=0, le=65535, description="Port of the agent (0: pick a free one).")
    public_url: str | None = Field(None, description="MCP URL the dispatcher uses to reach this replica.")
    heartbeat_s: float = Field(1.0, gt=0, description="Heartbeat interval.")
    drain_delay_s: float = Field(
        1.0, ge=0, description="On SIGTERM: keep serving this long after leaving the fleet (routing catches up)."
    )
    drain_timeout_s: float = Field(30.0, gt=0, description="On SIGTERM: longest wait for in-flight calls to finish.")
    bus_url: str | None = Field(
        None, description="Bus URL override (default: the one the dispatcher hands out at registration)."
    )
    bus_max_inflight: int = Field(16, ge=1, le=4096, description="Bus calls one replica runs at once (backpressure).")
    bus_visibility_s: float = Field(
        15.0, gt=0, description="A bus call pending this long on a dead replica goes to another."
    )
    log_level: str = Field("info", description="debug | info | warning | error.")
    log_format: str = Field("text", description="text (for humans) or json (one object per line, with trace ids).")

    @field_validator("region")
    @classmethod
    def _region_name(cls, value: str) -> str:
        if not REGION_NAME_RE.match(value):
            raise ValueError("region names are lowercase letters, digits and '-', starting with a letter")
        return value


def _known_names() -> set[str]:
    names = {ENV_PREFIX + name.upper() for name in DispatcherSettings.model_fields}
    for name, field in AgentSettings.model_fields.items():
        alias = field.validation_alias
        if isinstance(alias, AliasChoices):
            names.update(choice for choice in alias.choices if isinstance(choice, str) and choice.isupper())
        else:
            names.add(ENV_PREFIX + "AGENT_" + name.upper())
    return names


def check_environment(environ: Mapping[str, str] | None = None) -> None:
    """Fail on ``EDGEFLEET_*`` variables no service reads (typos), naming the closest match."""
    environ = os.environ if environ is None else environ
    known = _known_names()
    for name in environ:
        if (
            name.startswith(ENV_PREFIX)
            and not name.startswith(_TEST_PREFIX)
            and name not in known
            and name not in _CLIENT_VARIABLES
        ):
            close = difflib.get_close_matches(name, known, n=1)
            hint = f" Did you mean {close[0]}?" if close else ""
            raise ConfigError(f"Unknown setting {name}.{hint} The README's configuration table lists every setting.")


def settings_table() -> list[tuple[str, str, str]]:
    """(variable, default, description) rows for the README and `edgefleet config`."""
    rows: list[tuple[str, str, str]] = []
    for cls, prefix in ((DispatcherSettings, ENV_PREFIX), (AgentSettings, ENV_PREFIX + "AGENT_")):
        for name, field in cls.model_fields.items():
            alias = field.validation_alias
            var = (
                next((c for c in alias.choices if isinstance(c, str) and c.isupper()), None)
                if isinstance(alias, AliasChoices)
                else None
            )
            var = var or prefix + name.upper()
            default = field.get_default(call_default_factory=True)
            if isinstance(default, list):  # as it is written in the environment
                default = ",".join(map(str, default))
            if isinstance(default, SecretStr):
                default = "(required)" if var.endswith("FLEET_TOKEN") else ""
            rows.append((var, "" if default is None else str(default), field.description or ""))
    return rows
