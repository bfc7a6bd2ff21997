"""Talking to agent replicas: the shared keep-alive pool and the per-replica protocol.

The per-call path uses aiohttp (docs/architecture.md measured httpx at ~10x the CPU of a lean
pool; aiohttp was the runner-up and is a well-kept library). One ``ClientSession`` holds
every replica's keep-alive connections; nothing is created per call.

``ReplicaClient`` knows one replica's protocol era. Modern replicas (2026-07-28) are
stateless: every POST stands alone. Legacy replicas (an unmodified 2025-era MCP server)
get ONE upstream session, opened while warming and reopened if the server forgets it.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from typing import Any

import aiohttp
import orjson

from edgefleet.shared.constants import (
    HEADER_METHOD,
    HEADER_NAME,
    HEADER_PROTOCOL_VERSION,
    HEADER_SESSION_ID,
    LATEST_LEGACY_VERSION,
    LEGACY_PROTOCOL_VERSIONS,
    META_CLIENT_CAPABILITIES,
    META_CLIENT_INFO,
    META_PROTOCOL_VERSION,
    META_SERVER_INFO,
    MODERN_PROTOCOL_VERSION,
)
from edgefleet.shared.errors import AgentUnreachable, UpstreamError
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.upstream")

CLIENT_INFO = {"name": "edgefleet-dispatcher", "version": "0.1.0"}
ACCEPT = "application/json, text/event-stream"


class UpstreamPool:
    """The dispatcher's one HTTP client for agent traffic (calls, probes, discovery)."""

    def __init__(self, settings: DispatcherSettings) -> None:
        self.settings = settings
        self._session: aiohttp.ClientSession | None = None
        self._control: aiohttp.ClientSession | None = None

    async def start(self) -> None:
        connector = aiohttp.TCPConnector(
            limit=0,
            limit_per_host=self.settings.max_connections_per_replica,
            keepalive_timeout=60,  # below the agents' 75 s so idle closes happen on our side
            ttl_dns_cache=30,
        )
        self._session = aiohttp.ClientSession(
            connector=connector,
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=self.settings.connect_timeout_s),
        )
        # Probes, discovery and warm-up get their own small pool: when long calls hold every
        # call connection to a busy replica, its probes must not queue behind them and
        # eject a healthy replica. Warm-up still opens the *call* pool (see ReplicaClient.warm).
        self._control = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0, limit_per_host=4, keepalive_timeout=60),
            auto_decompress=False,
            skip_auto_headers=("User-Agent", "Accept-Encoding"),
        )

    def timeout(self, total: float) -> aiohttp.ClientTimeout:
        """A per-request timeout that keeps the connect timeout (a per-request value replaces the session's)."""
        return aiohttp.ClientTimeout(total=total, sock_connect=self.settings.connect_timeout_s)

    @property
    def session(self) -> aiohttp.ClientSession:
        if self._session is None:
            raise RuntimeError("UpstreamPool.start() was not awaited")
        return self._session

    @property
    def control(self) -> aiohttp.ClientSession:
        if self._control is None:
            raise RuntimeError("UpstreamPool.start() was not awaited")
        return self._control

    def connection_counts(self) -> tuple[int, int]:
        """(idle, active) connections of the call pool, for /metrics."""
        connector = self._session.connector if self._session is not None else None
        if connector is None:
            return 0, 0
        # aiohttp keeps no public gauge; these two attributes have been stable since 3.0.
        idle = sum(len(conns) for conns in getattr(connector, "_conns", {}).values())
        return idle, len(getattr(connector, "_acquired", ()))

    async def aclose(self) -> None:
        for session in (self._session, self._control):
            if session is not None:
                await session.close()
        self._session = self._control = None


def modern_meta(extra: dict[str, Any] | None = None) -> dict[str, Any]:
    meta: dict[str, Any] = {
        META_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION,
        META_CLIENT_INFO: CLIENT_INFO,
        # Everything a client may declare: the catalog then lists every tool the server offers.
        META_CLIENT_CAPABILITIES: declared_capabilities(ALL_CAPABILITIES),
    }
    if extra:
        meta.update(extra)
    return meta


def parse_rpc_response(body: bytes, content_type: str, request_id: Any) -> dict[str, Any]:
    """The JSON-RPC response with ``request_id`` from a JSON or SSE body."""
    if content_type.startswith("text/event-stream"):
        for line in body.splitlines():
            if line.startswith(b"data:"):
                try:
                    message = orjson.loads(line[5:].strip())
                except orjson.JSONDecodeError:
                    continue
                if isinstance(message, dict) and message.get("id") == request_id:
                    return message
        raise UpstreamError("the agent's event stream ended without a response")
    try:
        message = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        raise UpstreamError(f"the agent answered with invalid JSON: {exc}") from None
    if not isinstance(message, dict):
        raise UpstreamError("the agent answered with a JSON value that is not a JSON-RPC response")
    return message


class ReplicaClient:
    """Control-plane protocol with one replica: era detection, discovery, probes, warming."""

    def __init__(self, pool: UpstreamPool, url: str, *, era: str | None = None) -> None:
        self.pool = pool
        self.url = url
        self.era: str | None = era
        self.legacy_version = LATEST_LEGACY_VERSION
        # 2025-era sessions with this replica, one per set of client capabilities (a server
        # asks a client only for what its session declared, and may offer some tools only to
        # clients that can sample, elicit or list roots). ALL_CAPABILITIES is the dispatcher's
        # own (control traffic, and the tool list of the catalog: every tool offered).
        self.legacy_sessions: dict[CapabilityKey, str] = {}
        # The server also speaks 2025-11-25 (a 2025 client is then served in that era).
        self.speaks_legacy = False
        # What the server says about itself (capabilities, instructions, serverInfo), from
        # server/discover or initialize: a per-agent mount shows the agent as it is.
        self.advertised: dict[str, Any] = {}
        # The capabilities its 2025-era initialize declared (a server of both eras may offer
        # different things in each: resource subscriptions, say).
        self.legacy_capabilities: dict[str, Any] = {}
        self._next_id = 0
        self._session_lock = asyncio.Lock()

    # -- headers used by the hot path --------------------------------------------------
    @property
    def legacy_session(self) -> str | None:
        """The dispatcher's own 2025-era session: control traffic ("" for a stateless server)."""
        return self.legacy_sessions.get(ALL_CAPABILITIES)

    def call_headers(self, method: str, name: str | None, *, session: str | None = None) -> dict[str, str]:
        """Headers of one request; ``session`` (a 2025-era session of this replica) sends it in that era."""
        headers = {"content-type": "application/json", "accept": ACCEPT}
        if session is not None or self.era == "legacy":
            headers[HEADER_PROTOCOL_VERSION] = self.legacy_version
            session = session or self.legacy_session
            if session:
                headers[HEADER_SESSION_ID] = session
        else:
            headers[HEADER_PROTOCOL_VERSION] = MODERN_PROTOCOL_VERSION
            headers[HEADER_METHOD] = method
            if name is not None:
                headers[HEADER_NAME] = encode_header_value(name)
        return headers

    # -- control-plane JSON-RPC ----------------------------------------------------------
    async def rpc(
        self, method: str, params: dict[str, Any] | None = None, *, timeout: float = 5.0, call_pool: bool = False
    ) -> dict[str, Any]:
        """One request/response exchange; returns ``result`` or raises ``UpstreamError``."""
        if self.era is None:
            await self.connect(timeout=timeout)
        for attempt in (0, 1):
            self._next_id += 1
            request_id = f"edge-{self._next_id}"
            params = dict(params or {})
            if self.era == "modern":
                params["_meta"] = {**modern_meta(), **params.get("_meta", {})}
            body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            status, content_type, raw = await self._post(
                body, self.call_headers(method, target_of(method, params)), timeout, call_pool=call_pool
            )
            if status == 404 and self.era == "legacy" and attempt == 0:
                await self._open_legacy_session(timeout, force=True)
                continue
            message = parse_rpc_response(raw, content_type, request_id) if raw else {}
            if "error" in message:
                err = message["error"]
                raise UpstreamError(
                    f"{method} failed on the agent: {err.get('message')} ({err.get('code')})",
                    data={"upstream_error": err},
                )
            result = message.get("result")
            if status >= 400 or not isinstance(result, dict):
                raise UpstreamError(f"{method}: the agent answered HTTP {status} without a result object")
            return result
        raise UpstreamError(f"{method}: the agent keeps forgetting its session")

    async def _post(
        self, body: dict[str, Any], headers: dict[str, str], timeout: float, *, call_pool: bool = False
    ) -> tuple[int, str, bytes]:
        session = self.pool.session if call_pool else self.pool.control
        try:
            async with session.post(
                self.url, data=orjson.dumps(body), headers=headers, timeout=self.pool.timeout(timeout)
            ) as resp:
                return resp.status, resp.headers.get("content-type", ""), await resp.read()
        except (TimeoutError, aiohttp.ClientError) as exc:
            # Every transport failure becomes ours, so callers (warm loop, admission) see one error type.
            raise AgentUnreachable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None

    async def connect(self, *, timeout: float = 5.0) -> str:
        """Detect the era (spec: try a modern request, fall back to ``initialize``)."""
        body = {
            "jsonrpc": "2.0",
            "id": "edge-discover",
            "method": "server/discover",
            "params": {"_meta": modern_meta()},
        }
        headers = {
            "content-type": "application/json",
            "accept": ACCEPT,
            HEADER_PROTOCOL_VERSION: MODERN_PROTOCOL_VERSION,
            HEADER_METHOD: "server/discover",
        }
        status, content_type, raw = await self._post(body, headers, timeout)
        message: dict[str, Any] = {}
        if raw:
            try:
                message = parse_rpc_response(raw, content_type, "edge-discover")
            except UpstreamError:
                message = {}
        result = message.get("result")
        if (
            status == 200
            and isinstance(result, dict)
            and MODERN_PROTOCOL_VERSION in result.get("supportedVersions", [])
        ):
            self.era = "modern"
            meta = result.get("_meta")
            info = meta.get(META_SERVER_INFO) if isinstance(meta, dict) else None
            self.advertised = _advertised(result, info)
            self.speaks_legacy = any(v in LEGACY_PROTOCOL_VERSIONS for v in result.get("supportedVersions", []))
            if not self.speaks_legacy:
                # Servers of both eras do not always list 2025-11-25 in server/discover: a
                # session-holding 2025 server behind the same URL is what matters (only a
                # session lets it ask the client things), so ask it for one.
                with contextlib.suppress(AgentUnreachable):
                    await self._open_legacy_session(timeout, force=True)
                self.speaks_legacy = bool(self.legacy_session)
            return self.era
        self.era = "legacy"
        self.speaks_legacy = True
        await self._open_legacy_session(timeout, force=True)
        return self.era

    async def send_response(self, session: str, message: dict[str, Any], *, timeout: float) -> None:
        """A client's answer to a request this replica sent on one of our sessions."""
        headers = self.call_headers("", None, session=session)
        status, _, _ = await self._post(message, headers, timeout)
        if status >= 300:
            raise UpstreamError(f"{self.url} refused the answer to its request (HTTP {status})")

    async def session_rpc(self, session: str, method: str, params: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """One request on a given 2025-era session of ours (``resources/subscribe`` on the
        session of a client's capability set); the result, or ``UpstreamError`` carrying the
        server's own error in ``data.upstream_error``."""
        self._next_id += 1
        request_id = f"edge-{self._next_id}"
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        status, content_type, raw = await self._post(body, self.call_headers(method, None, session=session), timeout)
        message = parse_rpc_response(raw, content_type, request_id) if raw else {}
        if isinstance(message.get("error"), dict):
            err = message["error"]
            raise UpstreamError(f"{method} failed on the agent: {err.get('message')}", data={"upstream_error": err})
        result = message.get("result")
        if status >= 400 or not isinstance(result, dict):
            raise UpstreamError(
                f"{method}: the agent answered HTTP {status} without a result object", data={"status": status}
            )
        return result

    async def session_for(self, key: CapabilityKey, *, timeout: float) -> str:
        """The 2025-era session for clients declaring ``key`` (opened on first use, then kept)."""
        found = self.legacy_sessions.get(key)
        if found is None:
            await self._open_legacy_session(timeout, key=key)
            found = self.legacy_sessions.get(key, "")
        return found

    def forget_session(self, key: CapabilityKey) -> None:
        """The replica forgot this session (it restarted): the next call opens a new one."""
        self.legacy_sessions.pop(key, None)

    async def _open_legacy_session(
        self, timeout: float, *, force: bool = False, key: CapabilityKey | None = None
    ) -> None:
        key = ALL_CAPABILITIES if key is None else key
        async with self._session_lock:
            if key in self.legacy_sessions and not force:
                return
            body = {
                "jsonrpc": "2.0",
                "id": "edge-init",
                "method": "initialize",
                "params": {
                    "protocolVersion": LATEST_LEGACY_VERSION,
                    "capabilities": declared_capabilities(key),
                    "clientInfo": CLIENT_INFO,
                },
            }
            headers = {"content-type": "application/json", "accept": ACCEPT}
            try:
                async with self.pool.session.post(
                    self.url, data=orjson.dumps(body), headers=headers, timeout=self.pool.timeout(timeout)
                ) as resp:
                    raw = await resp.read()
                    session_id = resp.headers.get(HEADER_SESSION_ID)
                    message = parse_rpc_response(raw, resp.headers.get("content-type", ""), "edge-init")
            except (TimeoutError, aiohttp.ClientError) as exc:
                raise AgentUnreachable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
            except UpstreamError as exc:
                raise AgentUnreachable(f"{self.url} is not an MCP server: {exc.message}") from None
            result = message.get("result")
            if not isinstance(result, dict):
                raise AgentUnreachable(f"{self.url} did not accept initialize: {message.get('error')}")
            version = result.get("protocolVersion")
            self.legacy_version = version if version in LEGACY_PROTOCOL_VERSIONS else LATEST_LEGACY_VERSION
            # A stateless 2025 server gives no session id: its requests then carry none ("").
            self.legacy_sessions[key] = session_id or ""
            if key == ALL_CAPABILITIES and isinstance(result.get("capabilities"), dict):
                self.legacy_capabilities = result["capabilities"]
            if key == ALL_CAPABILITIES and self.era == "legacy":
                info = result.get("serverInfo")
                self.advertised = _advertised(result, info if isinstance(info, dict) else None)
            notify = {"jsonrpc": "2.0", "method": "notifications/initialized"}
            await self._post(notify, self.call_headers("notifications/initialized", None, session=session_id), timeout)

    async def list_all(
        self, method: str, key: str, *, timeout: float = 5.0, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Every item of a paged list (``prompts/list`` -> ``prompts``...), at most ``limit``
        items and 100 pages: whatever a server says, what it costs us is bounded."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100):
            result = await self.rpc(method, {"cursor": cursor} if cursor else {}, timeout=timeout)
            found = result.get(key)
            items.extend(item for item in (found if isinstance(found, list) else []) if isinstance(item, dict))
            if len(items) >= limit:
                return items[:limit]
            next_cursor = result.get("nextCursor")
            if not isinstance(next_cursor, str) or not next_cursor:
                break
            cursor = next_cursor
        return items

    async def list_tools(self, *, timeout: float = 5.0) -> list[dict[str, Any]]:
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        for _ in range(100):  # a bounded number of pages
            result = await self.rpc("tools/list", {"cursor": cursor} if cursor else {}, timeout=timeout)
            tools.extend(t for t in result.get("tools", []) if isinstance(t, dict) and isinstance(t.get("name"), str))
            cursor = result.get("nextCursor")
            if not cursor:
                break
        return tools

    async def probe(self, *, timeout: float, call_pool: bool = False) -> None:
        """A cheap liveness check (on the control pool unless warming the call pool)."""
        method = "ping" if self.era == "legacy" else "server/discover"
        await self.rpc(method, {}, timeout=timeout, call_pool=call_pool)

    async def warm(self, connections: int, *, timeout: float) -> None:
        """Open ``connections`` keep-alive connections in the CALL pool before routing here."""
        await asyncio.gather(*(self.probe(timeout=timeout, call_pool=True) for _ in range(connections)))


# Client capabilities that change what a server may ask of a client or offer to it, as
# flags: the set of 2025 upstream sessions per replica stays small (2^8 at the very most)
# whatever a client declares.
CAPABILITY_FLAGS = (
    ("sampling", None),
    ("sampling", "tools"),
    ("sampling", "context"),
    ("elicitation", None),
    ("elicitation", "form"),
    ("elicitation", "url"),
    ("roots", None),
    ("roots", "listChanged"),
)
CapabilityKey = tuple[str, ...]
# What the dispatcher declares when it lists a server's tools: everything, so that tools
# offered only to capable clients are in the catalog too.
ALL_CAPABILITIES: CapabilityKey = tuple(f"{c}.{s}" if s else c for c, s in CAPABILITY_FLAGS)


def capability_key(capabilities: Any) -> CapabilityKey:
    """The flags of a client's declared capabilities (a 2025 session's, or a 2026 request's)."""
    if not isinstance(capabilities, dict):
        return ()
    flags = []
    for capability, sub in CAPABILITY_FLAGS:
        value = capabilities.get(capability)
        if not isinstance(value, dict):
            continue
        if sub is None:
            flags.append(capability)
        elif value.get(sub) not in (None, False):
            flags.append(f"{capability}.{sub}")
    return tuple(flags)


def declared_capabilities(key: CapabilityKey) -> dict[str, Any]:
    """The ``capabilities`` object of an initialize declaring ``key``."""
    declared: dict[str, Any] = {}
    for flag in key:
        capability, _, sub = flag.partition(".")
        entry = declared.setdefault(capability, {})
        if sub:
            entry[sub] = True if sub == "listChanged" else {}
    return declared


def _advertised(result: dict[str, Any], server_info: dict[str, Any] | None) -> dict[str, Any]:
    capabilities = result.get("capabilities")
    instructions = result.get("instructions")
    return {
        "capabilities": capabilities if isinstance(capabilities, dict) else {},
        "instructions": instructions if isinstance(instructions, str) else None,
        "serverInfo": server_info,
    }


def target_of(method: str, params: dict[str, Any]) -> str | None:
    """What a request names (its Mcp-Name header in 2026-07-28): the tool or prompt, the resource URI."""
    key = "uri" if method.startswith("resources/") else "name"
    value = params.get(key)
    return value if isinstance(value, str) else None


def encode_header_value(value: str) -> str:
    """Spec value encoding for Mcp-Name / Mcp-Param-*: plain ASCII or the base64 sentinel."""
    if (
        value.isascii()
        and value.isprintable()
        and value == value.strip()
        and not (value.startswith("=?base64?") and value.endswith("?="))
    ):
        return value
    import base64

    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="
