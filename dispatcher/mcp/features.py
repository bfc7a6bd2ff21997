"""Resources, resource templates, prompts and completions through the one URL, both eras.

On ``/mcp`` the lists are the fleet's, from memory (``fleet.federation``: ``agent.prompt``
names, ``agent+<uri>`` URIs); a read, a prompt get or a completion goes to the agent that
owns the name, with the agent's own name or URI, and URIs in the answer are put back in
their public form. On a per-agent mount (``/mcp/agents/<agent>``) every request is the
agent's own and is forwarded as it came (lists included: the agent's own paging, always
current). Forwarded requests take the normal route (nearest healthy replica, failover,
size limits, tracing) through the one dispatch point.
"""

from __future__ import annotations

import base64
import binascii
import dataclasses
from typing import TYPE_CHECKING, Any

import orjson
from opentelemetry.trace import SpanKind

from edgefleet.dispatcher.fleet.catalog import own_definition
from edgefleet.dispatcher.fleet.naming import public_uri, split_public_uri
from edgefleet.dispatcher.mcp.calls import call_deadline, client_capabilities
from edgefleet.dispatcher.mcp.capabilities import INSTRUCTIONS, SERVER_INFO
from edgefleet.dispatcher.mcp.offers import forwards_listen, watch_mode
from edgefleet.dispatcher.mcp.request_state import RoundBinding
from edgefleet.dispatcher.paths.answer import CapturedAnswer
from edgefleet.dispatcher.paths.call import ToolCall
from edgefleet.shared import telemetry
from edgefleet.shared.constants import (
    META_CLIENT_CAPABILITIES,
    META_PROTOCOL_VERSION,
    MODERN_PROTOCOL_VERSION,
)
from edgefleet.shared.errors import InvalidParams, MethodNotFound, ToolForbidden, UpstreamError

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import AgentView, Catalog
    from edgefleet.dispatcher.fleet.fleet import Fleet
    from edgefleet.dispatcher.mcp.request import McpRequest
    from edgefleet.dispatcher.mcp.request_state import RequestStates
    from edgefleet.dispatcher.mcp.sessions import Session
    from edgefleet.dispatcher.paths.dispatch import CallPaths
    from edgefleet.dispatcher.routing.router import Router
    from edgefleet.dispatcher.security.auth import Identity
    from edgefleet.shared.settings import DispatcherSettings

_tracer = telemetry.tracer("edgefleet.dispatcher")
PAGE = 500
LISTS = {"resources/list": "resources", "resources/templates/list": "resourceTemplates", "prompts/list": "prompts"}
FORWARDED = ("resources/read", "prompts/get", "completion/complete")
METHODS = frozenset({*LISTS, *FORWARDED})
# "Resource not found": -32602 since SEP-2164, -32002 before it.
NOT_FOUND_CODES = (-32602, -32002)


class Features:
    def __init__(
        self,
        settings: DispatcherSettings,
        fleet: Fleet,
        router: Router,
        paths: CallPaths,
        states: RequestStates | None = None,
    ) -> None:
        self.settings = settings
        self.fleet = fleet
        self.router = router
        self.paths = paths
        self.states = states  # input_required rounds of prompts/get and resources/read (D9)

    def capabilities(self, view: str | None, *, modern: bool) -> dict[str, Any]:
        """What to advertise beyond tasks: only what the fleet (or the mounted agent) serves,
        and change notifications only where they are delivered (D10, D11).

        ``/mcp``: the dispatcher announces list changes itself (catalog rebuilds), and
        resource updates when at least one agent offers them. A mount: a 2026 client's
        ``subscriptions/listen`` goes to the agent itself when it speaks 2026-07-28, so the
        agent's own flags; otherwise the dispatcher delivers (list changes from its view of
        the agent, updates through its own subscription to the agent)."""
        catalog = self.fleet.catalog
        if view is None:
            served = catalog.federation.capabilities
            subscribe = any(
                watch_mode(agent, modern_client=modern, capabilities=None) is not None
                for agent in catalog.views.values()
            )
            return _capabilities(served, listed=True, subscribe=subscribe)
        agent = catalog.view(view)
        if agent is None:
            return _capabilities(set(), listed=True, subscribe=False)
        declared = agent.surface.capabilities
        served = {c for c in ("prompts", "resources", "completions", "logging") if agent.surface.serves(c)}
        if modern and forwards_listen(agent):
            caps = _capabilities(served, listed=False, subscribe=False)
            for kind in ("tools", "prompts", "resources"):
                own = declared.get(kind)
                if kind in caps and isinstance(own, dict):
                    flags = {k: own[k] for k in ("listChanged", "subscribe") if own.get(k) is True}
                    caps[kind].update(flags)
            return caps
        subscribe = watch_mode(agent, modern_client=modern, capabilities=None) is not None
        return _capabilities(served, listed=True, subscribe=subscribe)

    def describe(
        self, view: str | None, tasks: dict[str, Any], *, modern: bool
    ) -> tuple[dict[str, Any], dict[str, Any], str | None]:
        """(capabilities, serverInfo, instructions) for /mcp or a mount; ``tasks`` is what
        the era adds for the tasks the dispatcher hosts."""
        capabilities = {**self.capabilities(view, modern=modern), **tasks}
        if view is None:
            return capabilities, SERVER_INFO, INSTRUCTIONS
        agent = self.fleet.catalog.view(view)
        surface = agent.surface if agent is not None else None
        info = surface.server_info if surface is not None and surface.server_info else {**SERVER_INFO, "name": view}
        return capabilities, info, surface.instructions if surface is not None else None

    async def answer(self, request: McpRequest, *, modern: bool, session: Session | None = None) -> dict[str, Any]:
        """The result of one of METHODS (errors are raised, as the era handlers expect)."""
        method = request.message.method
        assert method in METHODS
        if request.view is not None:
            agent = self.fleet.catalog.view(request.view)
            if agent is None:
                raise MethodNotFound(f"Unknown agent {request.view!r}.")
            if not request.identity.may_use(agent.agent):
                raise ToolForbidden(f"{request.identity.name!r} may not use agent {agent.agent!r}.")
            return await self._forward(request, agent, dict(request.message.params), modern, session)
        if method in LISTS:
            return self._list(method, request.message.params, request.identity, self.fleet.catalog)
        if method == "resources/read":
            return await self._read(request, modern, session)
        if method == "prompts/get":
            return await self._get_prompt(request, modern, session)
        return await self._complete(request, modern, session)

    async def mount_tools(self, request: McpRequest, *, modern: bool, session: Session | None = None) -> dict[str, Any]:
        """tools/list on a per-agent mount: the agent's own answer, for this client's era and
        capabilities (a server may offer some tools only to clients that can sample or
        elicit, and a server of both eras may offer different tools in each), filtered to
        what the identity may call, with the tasks the dispatcher hosts."""
        assert request.view is not None
        agent = self.fleet.catalog.view(request.view)
        if agent is None:
            raise MethodNotFound(f"Unknown agent {request.view!r}.")
        result = await self._forward(request, agent, dict(request.message.params), modern, session, method="tools/list")
        tools = result.get("tools")
        identity = request.identity
        listed = [
            own_definition(t)
            for t in (tools if isinstance(tools, list) else [])
            if isinstance(t, dict)
            and isinstance(t.get("name"), str)
            and identity.may_call(f"{agent.agent}.{t['name']}")
        ]
        return {**result, "tools": listed}

    # -- /mcp: the fleet's lists from memory ------------------------------------------------
    def _list(self, method: str, params: dict[str, Any], identity: Identity, catalog: Catalog) -> dict[str, Any]:
        key = LISTS[method]
        federation = catalog.federation
        items = (
            federation.prompts
            if key == "prompts"
            else federation.resources
            if key == "resources"
            else federation.templates
        )
        if identity.tools:
            items = [i for i in items if identity.may_use(_agent_of(i, key))]
        offset = _offset(params.get("cursor"), catalog.version)
        page: dict[str, Any] = {key: items[offset : offset + PAGE]}
        if offset + PAGE < len(items):
            page["nextCursor"] = _cursor(catalog.version, offset + PAGE)
        return page

    # -- /mcp: requests forwarded to the owner ----------------------------------------------
    async def _read(self, request: McpRequest, modern: bool, session: Session | None) -> dict[str, Any]:
        params = request.message.params
        uri = params.get("uri")
        if not isinstance(uri, str):
            raise InvalidParams("resources/read needs params.uri (a string).")
        agent, own = self.owner_of_uri(uri)
        self._check(request.identity, agent.agent)
        try:
            result = await self._forward(request, agent, {**params, "uri": own}, modern, session)
        except _AgentError as exc:
            if exc.error.get("code") in NOT_FOUND_CODES:
                # SEP-2164: data.uri names the resource as the client asked for it, not as the agent knows it.
                found = exc.error.get("data")
                data: dict[str, Any] = found if isinstance(found, dict) else {}
                raise _AgentError({**exc.error, "data": {**data, "uri": uri}}) from None
            raise
        return _public_uris(result, agent.agent)

    async def _get_prompt(self, request: McpRequest, modern: bool, session: Session | None) -> dict[str, Any]:
        params = request.message.params
        name = params.get("name")
        found = self.fleet.catalog.federation.prompt_names.get(name) if isinstance(name, str) else None
        if found is None:
            raise InvalidParams(f"Unknown prompt: {name}", data={"name": name if isinstance(name, str) else None})
        agent = self._view(found[0])
        self._check(request.identity, agent.agent)
        result = await self._forward(request, agent, {**params, "name": found[1]}, modern, session)
        return _public_uris(result, agent.agent)

    async def _complete(self, request: McpRequest, modern: bool, session: Session | None) -> dict[str, Any]:
        params = request.message.params
        ref = params.get("ref")
        if not isinstance(ref, dict):
            raise InvalidParams("completion/complete needs params.ref (a prompt or resource reference).")
        if ref.get("type") == "ref/prompt" and isinstance(ref.get("name"), str):
            found = self.fleet.catalog.federation.prompt_names.get(ref["name"])
            if found is None:
                raise InvalidParams(f"Unknown prompt: {ref['name']}", data={"name": ref["name"]})
            agent, own_ref = self._view(found[0]), {**ref, "name": found[1]}
        elif ref.get("type") == "ref/resource" and isinstance(ref.get("uri"), str):
            agent, own = self.owner_of_uri(ref["uri"])
            own_ref = {**ref, "uri": own}
        else:
            raise InvalidParams("params.ref must be {type: ref/prompt, name} or {type: ref/resource, uri}.")
        self._check(request.identity, agent.agent)
        return await self._forward(request, agent, {**params, "ref": own_ref}, modern, session)

    def owner_of_uri(self, uri: str) -> tuple[AgentView, str]:
        """The agent serving ``uri`` and the URI as it knows it: ``agent+<uri>``, or a URI
        exactly one agent lists as it is (copied from an older answer, say)."""
        catalog = self.fleet.catalog
        split = split_public_uri(uri)
        if split is not None and catalog.view(split[0]) is not None:
            return self._view(split[0]), split[1]
        owners = catalog.federation.raw_uris.get(uri, [])
        if len(owners) == 1:
            return self._view(owners[0]), uri
        candidates = [public_uri(a, uri) for a in owners]
        # SEP-2164: an unknown resource is -32602 with the URI in data.
        raise InvalidParams(
            "Resource not found", data={"uri": uri, **({"candidates": candidates} if candidates else {})}
        )

    def _view(self, agent: str) -> AgentView:
        view = self.fleet.catalog.view(agent)
        if view is None:
            raise InvalidParams(f"Agent {agent!r} is not in the fleet any more.", data={"agent": agent})
        return view

    @staticmethod
    def _check(identity: Identity, agent: str) -> None:
        if not identity.may_use(agent):
            raise ToolForbidden(f"{identity.name!r} may not use agent {agent!r}.", data={"agent": agent})

    async def _forward(
        self,
        request: McpRequest,
        agent: AgentView,
        params: dict[str, Any],
        modern: bool,
        session: Session | None,
        method: str | None = None,
    ) -> dict[str, Any]:
        """The request sent to one replica of ``agent`` (nearest healthy one, failover), and the result."""
        message = request.message
        method = method or message.method or ""
        if not modern and session is not None:
            # A 2025 client's request reaching a 2026 agent needs the per-request fields.
            meta = dict(params["_meta"]) if isinstance(params.get("_meta"), dict) else {}
            meta.setdefault(META_PROTOCOL_VERSION, MODERN_PROTOCOL_VERSION)
            meta.setdefault(META_CLIENT_CAPABILITIES, session.capabilities)
            params["_meta"] = meta
        order = self.router.order(request.peer, request.headers, self.fleet.regions, allowed=request.identity.regions)
        binding = self._binding(request, method) if modern else None
        if binding is not None and "requestState" in params:
            # The retry of a round: the state is ours (the agent's inside), back to the replica that minted it.
            claims = binding.open(params["requestState"])
            params = {k: v for k, v in params.items() if k != "requestState"}
            if claims.get("s") is not None:
                params["requestState"] = claims["s"]
            if isinstance(claims.get("rep"), str):
                order = dataclasses.replace(order, affinity=claims["rep"])
        target = params.get("uri") if method == "resources/read" else params.get("name")
        call = ToolCall(
            agent.entry(),
            message.id,
            params,
            order,
            call_deadline(request.headers, self.settings.call_timeout_s),
            identity=request.identity,
            modern=modern,
            method=method,
            target=target if isinstance(target, str) else None,
            client_capabilities=client_capabilities(request.message.params, session),
        )
        with _tracer.start_as_current_span(
            f"{method} {agent.agent}", kind=SpanKind.SERVER, record_exception=False, set_status_on_exception=False
        ):
            if telemetry.recording():
                meta = dict(params["_meta"]) if isinstance(params.get("_meta"), dict) else {}
                telemetry.inject_into(meta)
                params["_meta"] = meta
            captured = CapturedAnswer()
            await self.paths.call(call, captured)
        response = captured.response()
        if response is None:
            raise UpstreamError(f"{agent.agent} gave no answer to {method}.", data={"agent": agent.agent})
        error = response.get("error")
        if isinstance(error, dict):
            raise _AgentError(error)
        result = response.get("result")
        if not isinstance(result, dict):
            raise UpstreamError(
                f"{agent.agent} answered {method} without a result object.", data={"agent": agent.agent}
            )
        if result.get("resultType") == "input_required":
            if binding is None:
                raise UpstreamError(
                    f"{agent.agent} answered {method} with an input_required round, which a 2025-11-25 client "
                    "cannot receive; use a 2026-07-28 client.",
                    data={"agent": agent.agent, "resultType": "input_required"},
                )
            route = captured.route
            state = binding.seal("wrap", rep=route.replica if route else None, s=result.get("requestState"))
            result = {**result, "requestState": state}
        return result

    def _binding(self, request: McpRequest, method: str) -> RoundBinding | None:
        """What a round of this request is bound to: the prompt or resource as the client named it."""
        if self.states is None or method not in ("prompts/get", "resources/read"):
            return None
        params = request.message.params
        target = params.get("uri") if method == "resources/read" else params.get("name")
        arguments = params.get("arguments") if method == "prompts/get" else None
        return RoundBinding(self.states, request.identity.name, method, str(target), arguments)


class _AgentError(Exception):
    """The agent answered with a JSON-RPC error: relayed to the client as it is."""

    def __init__(self, error: dict[str, Any]) -> None:
        super().__init__(error.get("message"))
        self.error = error


AgentError = _AgentError


def _capabilities(served: set[str], *, listed: bool, subscribe: bool) -> dict[str, Any]:
    """Capabilities for what is ``served``; ``listed``: list changes are announced."""
    changed = {"listChanged": True} if listed else {}
    caps: dict[str, Any] = {"tools": dict(changed), "logging": {}}
    if "prompts" in served:
        caps["prompts"] = dict(changed)
    if "resources" in served:
        caps["resources"] = {**({"subscribe": True} if subscribe else {}), **changed}
    if "completions" in served:
        caps["completions"] = {}
    return caps


def _agent_of(item: dict[str, Any], key: str) -> str:
    if key == "prompts":
        return str(item["name"]).split(".", 1)[0]
    split = split_public_uri(str(item["uri" if key == "resources" else "uriTemplate"]))
    return split[0] if split else ""


def _public_uris(result: dict[str, Any], agent: str) -> dict[str, Any]:
    """URIs in an agent's answer put in their /mcp form (resource contents, embedded
    resources and links in prompt messages)."""
    if b'"uri"' not in orjson.dumps(result):
        return result
    return _map_uris(result, agent)  # type: ignore[no-any-return]


def _map_uris(value: Any, agent: str) -> Any:
    if isinstance(value, dict):
        out = {k: _map_uris(v, agent) for k, v in value.items()}
        uri = value.get("uri")
        if isinstance(uri, str):
            out["uri"] = public_uri(agent, uri) or uri
        return out
    if isinstance(value, list):
        return [_map_uris(v, agent) for v in value]
    return value


def _cursor(version: int, offset: int) -> str:
    return base64.urlsafe_b64encode(orjson.dumps({"v": version, "o": offset})).decode().rstrip("=")


def _offset(cursor: Any, version: int) -> int:
    if cursor is None:
        return 0
    try:
        data = orjson.loads(base64.urlsafe_b64decode(str(cursor) + "=" * (-len(str(cursor)) % 4)))
    except (binascii.Error, ValueError):
        raise InvalidParams("Unknown cursor: pass back the nextCursor of a previous list.") from None
    if not isinstance(data, dict) or not isinstance(data.get("o"), int) or data["o"] < 0:
        raise InvalidParams("Unknown cursor: pass back the nextCursor of a previous list.")
    if data.get("v") != version:
        raise InvalidParams("The list changed since that cursor was given: list again from the start.")
    return int(data["o"])
