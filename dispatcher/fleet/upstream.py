"""Talking to agent replicas: the dispatcher's two connection pools and the per-replica protocol.

Both pools are ``http1`` (asyncio.Protocol + httptools; docs/architecture.md measured it at a
third of aiohttp's CPU per call): ``calls`` carries tool calls and warm-up, ``control`` the
small exchanges of discovery, ``initialize`` and probes, so that long calls holding every
call connection to a busy replica never make its probes queue and eject it. Nothing is
created per call. Every connection to an agent, in both pools, is checked against the agent
address rules with the address actually connected to (``security.agent_urls``), and no
redirect is ever followed.

Whatever an agent sends on the control plane is bounded in bytes
(``EDGEFLEET_MAX_AGENT_ANSWER_BYTES`` per answer and for all pages of one ``tools/list``)
and in time (the caller's timeout covers the whole exchange, body included).

``ReplicaClient`` knows one replica's protocol era. Modern replicas (2026-07-28) are
stateless: every POST stands alone. Legacy replicas (an unmodified 2025-era MCP server)
get upstream sessions, one per set of client capabilities, opened when first needed and
reopened if the server forgets them.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from typing import Any
from urllib.parse import quote, urlsplit

import orjson

from edgefleet.dispatcher import http1
from edgefleet.dispatcher.security.agent_urls import AgentAddressRules
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
from edgefleet.shared.errors import AgentAnswerTooLarge, AgentUnreachable, EdgefleetError, UpstreamError
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.upstream")

CLIENT_INFO = {"name": "edgefleet-dispatcher", "version": "0.1.0"}
ACCEPT = "application/json, text/event-stream"
# Idle connections close on our side first: agents (uvicorn) keep them 75 s.
IDLE_TIMEOUT_S = 60.0
CONTROL_CONNECTIONS = 4
_JSON_ACCEPT = b"content-type: application/json\r\naccept: " + ACCEPT.encode() + b"\r\n"
_EXPECT_CONTINUE = b"expect: 100-continue\r\n"


class UpstreamPool:
    """The dispatcher's HTTP clients for agent traffic: ``calls`` (tool calls, warm-up) and
    ``control`` (discovery, initialize, probes), both checking every connection's address
    with ``rules`` and resolving names with ``resolver``."""

    def __init__(
        self,
        settings: DispatcherSettings,
        *,
        rules: AgentAddressRules | None = None,
        resolver: http1.Resolver | None = None,
    ) -> None:
        self.settings = settings
        self.rules = rules or AgentAddressRules(settings.agent_networks)
        self.resolver: http1.Resolver = resolver or http1.system_resolver
        # One bound method object, kept: the pools compare it to the one a connection passed.
        self.check_peer: http1.PeerCheck = self.rules.check_peer
        self.max_answer_bytes = settings.max_agent_answer_bytes
        self.calls = http1.UpstreamPool(
            max_per_origin=settings.max_connections_per_replica,
            connect_timeout_s=settings.connect_timeout_s,
            idle_timeout_s=IDLE_TIMEOUT_S,
            resolver=self.resolver,
        )
        self.control = http1.UpstreamPool(
            max_per_origin=CONTROL_CONNECTIONS,
            connect_timeout_s=settings.connect_timeout_s,
            idle_timeout_s=IDLE_TIMEOUT_S,
            resolver=self.resolver,
        )

    async def start(self) -> None:
        """Nothing to open ahead: connections open per replica while it warms."""

    def connection_counts(self) -> tuple[int, int]:
        """(idle, active) connections of the call pool, for /metrics."""
        return self.calls.counts()

    def stale_resends(self) -> int:
        """Requests resent on a fresh connection after the keep-alive race, both pools."""
        return self.calls.stale_retries + self.control.stale_retries

    async def aclose(self) -> None:
        await self.calls.aclose()
        await self.control.aclose()


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


class _Budget:
    """Bytes an agent may still send for one logical answer (e.g. all pages of a listing)."""

    __slots__ = ("left", "limit", "what")

    def __init__(self, limit: int, what: str) -> None:
        self.limit = limit
        self.left = limit
        self.what = what


class ReplicaClient:
    """Control-plane protocol with one replica (era detection, discovery, probes, warming),
    and the request line and headers of its calls."""

    def __init__(self, pool: UpstreamPool, url: str, *, era: str | None = None) -> None:
        self.pool = pool
        self.url = url
        parts = urlsplit(url)
        target = quote(parts.path or "/", safe="/%:@!$&'()*+,;=-._~")
        if parts.query:
            target += "?" + quote(parts.query, safe="/%:@!$&'()*+,;=-._~?")
        self.target = target.encode("ascii")
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
        self.continues: bool | None = None
        """Does the replica answer ``Expect: 100-continue`` with a 100 (learned from calls)?"""
        self.without_continue = 0  # answers in a row that came without one, while unknown
        self._next_id = 0
        self._session_lock = asyncio.Lock()
        self._prefix_key: tuple[str | None, str, str | None] | None = None
        self._prefixes: dict[tuple[str, str | None, bool], bytes] = {}
        self._names: dict[str, bytes] = {}

    # -- the hot path: header bytes, built once ------------------------------------------
    def call_head(self, method: str, name: str | None, *, session: str | None, expect_continue: bool) -> bytes:
        """Header lines of a request forwarded on the direct path (without the per-call
        ones); ``session``: the 2025-era session that carries it, as for ``call_headers``."""
        state = (self.era, self.legacy_version, self.legacy_session)
        if self._prefix_key != state or len(self._prefixes) > 1024:
            self._prefix_key = state
            self._prefixes = {}
        prefix = self._prefixes.get((method, session, expect_continue))
        if prefix is None:
            pairs = [(k.encode(), v.encode()) for k, v in self.call_headers(method, None, session=session).items()]
            prefix = (_EXPECT_CONTINUE if expect_continue else b"") + http1.header_lines(pairs)
            self._prefixes[(method, session, expect_continue)] = prefix
        if session is not None or self.era == "legacy" or name is None:
            return prefix
        line = self._names.get(name)
        if line is None:
            line = http1.header_lines(((HEADER_NAME.encode(), encode_header_value(name).encode("ascii")),))
            if len(self._names) < 10_000:
                self._names[name] = line
        return prefix + line

    @property
    def legacy_session(self) -> str | None:
        """The dispatcher's own 2025-era session: control traffic ("" for a stateless server)."""
        return self.legacy_sessions.get(ALL_CAPABILITIES)

    def call_headers(self, method: str, name: str | None, *, session: str | None = None) -> dict[str, str]:
        """Headers of one request; ``session`` (a 2025-era session of this replica) sends it in that era."""
        # identity: without Accept-Encoding any coding is acceptable (RFC 9110), and answers
        # are relayed as they come; an encoded one is refused (paths/direct.py).
        headers = {"content-type": "application/json", "accept": ACCEPT, "accept-encoding": "identity"}
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

    def learn_continue(self, seen: bool) -> None:
        """After an answer to a call sent with ``Expect: 100-continue``: did a 100 come first?"""
        if seen:
            self.continues = True
            self.without_continue = 0
        elif self.continues is None:
            self.without_continue += 1
            if self.without_continue >= 3:
                self.continues = False  # this server does not send them: stop asking
        else:
            # It used to, and now answered without one (another server behind the URL):
            # start over rather than cut off calls that never get one.
            self.continues = None
            self.without_continue = 1

    # -- control-plane JSON-RPC ----------------------------------------------------------
    async def rpc(
        self,
        method: str,
        params: dict[str, Any] | None = None,
        *,
        timeout: float = 5.0,
        call_pool: bool = False,
        budget: _Budget | None = None,
    ) -> dict[str, Any]:
        """One request/response exchange; returns ``result`` or raises ``UpstreamError``
        (``AgentUnreachable`` for transport failures, ``AgentAnswerTooLarge`` past the byte limit)."""
        if self.era is None:
            await self.connect(timeout=timeout)
        for attempt in (0, 1):
            self._next_id += 1
            request_id = f"edge-{self._next_id}"
            params = dict(params or {})
            if self.era == "modern":
                params["_meta"] = {**modern_meta(), **params.get("_meta", {})}
            body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
            status, content_type, raw, _ = await self._post(
                method,
                body,
                self.call_headers(method, target_of(method, params)),
                timeout,
                call_pool=call_pool,
                budget=budget,
            )
            if status == 404 and self.era == "legacy" and attempt == 0:
                await self._open_legacy_session(timeout, force=True)
                continue
            message = parse_rpc_response(raw, content_type, request_id) if raw else {}
            if "error" in message:
                err = message["error"]
                if not isinstance(err, dict):
                    err = {"message": str(err)[:200]}
                raise UpstreamError(
                    f"{method} failed on the agent: {str(err.get('message'))[:500]} ({err.get('code')})",
                    data={"upstream_error": err},
                )
            result = message.get("result")
            if status >= 400 or not isinstance(result, dict):
                raise UpstreamError(f"{method}: the agent answered HTTP {status} without a result object")
            return result
        raise UpstreamError(f"{method}: the agent keeps forgetting its session")

    async def _post(
        self,
        what: str,
        body: dict[str, Any],
        headers: dict[str, str],
        timeout: float,
        *,
        call_pool: bool = False,
        budget: _Budget | None = None,
    ) -> tuple[int, str, bytes, str | None]:
        """POST one JSON-RPC message: (status, content type, body, Mcp-Session-Id). The
        timeout covers the whole exchange; the body is read up to the byte limit."""
        pool = self.pool
        limit = budget.left if budget is not None else pool.max_answer_bytes
        lines = http1.header_lines([(k.encode(), v.encode()) for k, v in headers.items()])
        try:
            async with asyncio.timeout(timeout):
                resp = await (pool.calls if call_pool else pool.control).request(
                    self.url, b"POST", self.target, lines, orjson.dumps(body), check_peer=pool.check_peer
                )
                try:
                    if 300 <= resp.status < 400:
                        location = resp.headers.get(b"location", b"").decode("latin-1")[:200]
                        raise AgentUnreachable(
                            f"{self.url} answered {what} with HTTP {resp.status} (a redirect to {location!r}); the "
                            "dispatcher never follows redirects: register the URL the agent serves MCP at.",
                            data={"url": self.url, "status": resp.status},
                        )
                    raw = await resp.read(limit)
                finally:
                    resp.close()
        except http1.BodyTooLarge as exc:
            raise AgentAnswerTooLarge(
                f"{self.url} answered {budget.what if budget else what} with more than {exc.limit} bytes "
                f"(EDGEFLEET_MAX_AGENT_ANSWER_BYTES is {pool.max_answer_bytes}).",
                data={"url": self.url, "limit_bytes": pool.max_answer_bytes, "request": what},
            ) from None
        except TimeoutError:
            raise AgentUnreachable(f"{self.url} did not answer {what} within {timeout:g} s.") from None
        except http1.HTTP1Error as exc:
            # Every transport failure becomes ours, so callers (warm loop, admission) see one error type.
            raise AgentUnreachable(f"cannot reach {self.url}: {type(exc).__name__}: {exc}") from None
        except ValueError as exc:  # a header value the agent gave us (session id) that cannot be sent
            raise AgentUnreachable(f"cannot send to {self.url}: {exc}") from None
        if budget is not None:
            budget.left -= len(raw)
        session = resp.headers.get(HEADER_SESSION_ID.encode())
        content_type = resp.headers.get(b"content-type", b"").decode("latin-1")
        return resp.status, content_type, raw, session.decode("latin-1") if session is not None else None

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
        status, content_type, raw, _ = await self._post("server/discover", body, headers, timeout)
        message: dict[str, Any] = {}
        if raw:
            try:
                message = parse_rpc_response(raw, content_type, "edge-discover")
            except UpstreamError:
                message = {}
        result = message.get("result")
        if not isinstance(result, dict):
            result = {}
        versions = result.get("supportedVersions")
        if status == 200 and isinstance(versions, list) and MODERN_PROTOCOL_VERSION in versions:
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
        status, _, _, _ = await self._post("a response to the agent's request", message, headers, timeout)
        if status >= 300:
            raise UpstreamError(f"{self.url} refused the answer to its request (HTTP {status})")

    async def cancel(self, session: str, request_id: str, reason: str, *, timeout: float) -> None:
        """``notifications/cancelled`` for our request on a 2025-era session (such a server takes
        a closed connection for a disconnection, not a cancel). Best effort: failures are logged."""
        params = {"requestId": request_id, "reason": reason}
        message = {"jsonrpc": "2.0", "method": "notifications/cancelled", "params": params}
        try:
            await self.send_response(session, message, timeout=timeout)
        except EdgefleetError as exc:
            log.info("could not tell %s that request %s was cancelled: %s", self.url, request_id, exc.message)

    async def session_rpc(self, session: str, method: str, params: dict[str, Any], *, timeout: float) -> dict[str, Any]:
        """One request on a given 2025-era session of ours (``resources/subscribe`` on the
        session of a client's capability set); the result, or ``UpstreamError`` carrying the
        server's own error in ``data.upstream_error``."""
        self._next_id += 1
        request_id = f"edge-{self._next_id}"
        body = {"jsonrpc": "2.0", "id": request_id, "method": method, "params": params}
        headers = self.call_headers(method, None, session=session)
        status, content_type, raw, _ = await self._post(method, body, headers, timeout)
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
            _, content_type, raw, session_id = await self._post("initialize", body, headers, timeout)
            try:
                message = parse_rpc_response(raw, content_type, "edge-init")
            except UpstreamError as exc:
                raise AgentUnreachable(f"{self.url} is not an MCP server: {exc.message}") from None
            result = message.get("result")
            if not isinstance(result, dict):
                raise AgentUnreachable(f"{self.url} did not accept initialize: {str(message.get('error'))[:500]}")
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
            await self._post(
                "notifications/initialized",
                notify,
                self.call_headers("notifications/initialized", None, session=session_id),
                timeout,
            )

    async def list_all(
        self, method: str, key: str, *, timeout: float = 5.0, limit: int = 10_000
    ) -> list[dict[str, Any]]:
        """Every item of a paged list (``prompts/list`` -> ``prompts``...), at most ``limit``
        items, 100 pages, and the byte limit of one answer for all pages together: whatever
        a server says, what it costs us is bounded."""
        items: list[dict[str, Any]] = []
        cursor: str | None = None
        budget = _Budget(self.pool.max_answer_bytes, f"{method} (all pages together)")
        for _ in range(100):
            result = await self.rpc(method, {"cursor": cursor} if cursor else {}, timeout=timeout, budget=budget)
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
        """Every page of ``tools/list``; all pages together are bounded like one answer."""
        tools: list[dict[str, Any]] = []
        cursor: str | None = None
        budget = _Budget(self.pool.max_answer_bytes, "tools/list (all pages together)")
        for _ in range(100):  # a bounded number of pages
            result = await self.rpc("tools/list", {"cursor": cursor} if cursor else {}, timeout=timeout, budget=budget)
            listed = result.get("tools")
            if isinstance(listed, list):
                tools.extend(t for t in listed if isinstance(t, dict) and isinstance(t.get("name"), str))
            next_cursor = result.get("nextCursor")
            cursor = next_cursor if isinstance(next_cursor, str) and next_cursor else None
            if not cursor:
                break
        return tools

    async def probe(self, *, timeout: float, call_pool: bool = False) -> None:
        """A cheap liveness check (on the control pool unless warming the call pool)."""
        method = "ping" if self.era == "legacy" else "server/discover"
        await self.rpc(method, {}, timeout=timeout, call_pool=call_pool)

    async def warm(self, connections: int, *, timeout: float) -> None:
        """Open ``connections`` keep-alive connections in the CALL pool before routing here,
        each one used once (the replica's side warms too)."""
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
    return "=?base64?" + base64.b64encode(value.encode()).decode() + "?="
