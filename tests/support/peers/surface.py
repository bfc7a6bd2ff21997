"""The peer scenario: what the two upstreams serve, which clients drive it, through which
URL, and what each feature must observe.

Both upstreams (``server_v1.mjs``: TypeScript SDK v1, 2025-11-25 only; ``server_v2.mjs``:
TypeScript SDK v2, 2026-07-28 only) serve the same surface under the same names. A client
run (``python_client.py`` / ``client_v2.mjs``) gets a *plan*: the URL, the negotiation mode,
the concrete names and URIs for the target (the agent's own on the upstream itself and on
``/mcp/agents/<agent>``, namespaced on ``/mcp`` as docs/design-mcp-surface.md D2 says), the
features to run; it reports one observation per feature, which ``problems()`` judges.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

LEGACY_ERA = "2025-11-25"
MODERN_ERA = "2026-07-28"


@dataclass(frozen=True)
class UpstreamKind:
    key: str
    script: str
    agent: str  # its name in the fleet
    era: str  # the only era it serves
    sdk: str

    @property
    def label(self) -> str:
        return f"{self.key}({self.era}-only)"


UPSTREAMS = {
    "v1": UpstreamKind("v1", "server_v1.mjs", "peer-v1", LEGACY_ERA, "@modelcontextprotocol/sdk 1.32.2"),
    "v2": UpstreamKind("v2", "server_v2.mjs", "peer-v2", MODERN_ERA, "@modelcontextprotocol/server 2.4.0"),
}


@dataclass(frozen=True)
class ClientKind:
    key: str
    runtime: str  # "python" | "ts"
    mode: str  # "legacy" | "auto" | a pinned version

    def era_with(self, upstream_era: str | None) -> str | None:
        """The era this client ends up in against a server serving only ``upstream_era``
        (``None``: a server serving both, like the dispatcher). ``None`` = refused."""
        if self.mode == "legacy":
            return LEGACY_ERA if upstream_era in (None, LEGACY_ERA) else None
        if self.mode == "auto":  # discover first, fall back to initialize
            return upstream_era or MODERN_ERA
        return self.mode if upstream_era in (None, self.mode) else None


# Python mcp 2.3 ``Client``: mode="legacy" and the default ("auto"); TypeScript SDK v2
# ``Client``: versionNegotiation legacy (its default), auto, and pinned to 2026-07-28.
CLIENTS = {
    "py-legacy": ClientKind("py-legacy", "python", "legacy"),
    "py-auto": ClientKind("py-auto", "python", "auto"),
    "ts-legacy": ClientKind("ts-legacy", "ts", "legacy"),
    "ts-auto": ClientKind("ts-auto", "ts", "auto"),
    "ts-pin": ClientKind("ts-pin", "ts", MODERN_ERA),
}

TARGETS = ("direct", "mcp", "mount")  # the upstream itself, dispatcher /mcp, /mcp/agents/<agent>

TOOLS = ("echo", "count", "chatter", "ask_sampling", "ask_elicitation", "ask_roots", "gated", "slow", "touch")
PROMPTS = ("greet",)
URIS = {
    "text": "peer://static/text",
    "binary": "peer://static/binary",
    "watched": "peer://watched",
    "item": "peer://items/42",
    "missing": "peer://missing",
}
TEMPLATE = "peer://items/{id}"
ANSWERS = {
    "sampling": "forty-two",
    "model": "peer-test-model",
    "name": "Ada",
    "question": "What is six times seven?",
    "root": "file:///srv/peer-test",
}
BINARY_B64 = "AAEC/f7/"  # bytes 0 1 2 253 254 255

FEATURES = (
    "tools",
    "call",
    "progress",
    "logging",
    "sampling",
    "elicitation",
    "roots",
    "gated",
    "cancel",
    "resources",
    "read_text",
    "read_binary",
    "templates",
    "read_template",
    "prompts",
    "prompt_get",
    "complete_prompt",
    "complete_template",
    "unknown_resource",
    "subscribe",
)


@dataclass(frozen=True)
class Naming:
    """Public names on a target: the agent's own, or namespaced (``agent.name``, ``agent+uri``)."""

    agent: str
    namespaced: bool

    def name(self, original: str) -> str:
        return f"{self.agent}.{original}" if self.namespaced else original

    def uri(self, original: str) -> str:
        return f"{self.agent}+{original}" if self.namespaced else original


def naming(target: str, upstream: UpstreamKind) -> Naming:
    return Naming(upstream.agent, namespaced=target == "mcp")


def plan(
    url: str,
    client: ClientKind,
    names: Naming,
    *,
    tag: str,
    upstream_log: str,
    timeout_s: float,
    features: tuple[str, ...] = FEATURES,
) -> dict[str, Any]:
    return {
        "url": url,
        "mode": client.mode,
        "timeout_s": timeout_s,
        "upstream_log": upstream_log,
        "tag": tag,
        "names": {n: names.name(n) for n in (*TOOLS, *PROMPTS)},
        "uris": {**{k: names.uri(v) for k, v in URIS.items()}, "template": names.uri(TEMPLATE)},
        "answers": ANSWERS,
        "features": list(features),
    }


# -- judging one observation ----------------------------------------------------------------
def _listing(got: Any, expected: set[Any], exact: bool, optional: frozenset[Any] = frozenset()) -> list[str]:
    if not isinstance(got, list):
        return [f"expected a list, got {got!r}"]
    missing = sorted(expected - set(got), key=str)
    extra = sorted(set(got) - expected - optional, key=str) if exact else []
    return [f"missing {missing}"] * bool(missing) + [f"not this agent's: {extra}"] * bool(extra)


def problems(feature: str, value: Any, names: Naming, upstream: UpstreamKind, exact: bool) -> list[str]:
    """What is wrong with a successful observation (empty: it is right). ``exact``: the
    listing is this agent's alone (the upstream itself, or its per-agent mount)."""
    expect: Any
    if feature == "tools":
        # The capability-gated tool has its own feature ("gated"): here it may be absent.
        listed = {names.name(t) for t in TOOLS if t != "gated"}
        return _listing(value, listed, exact, optional=frozenset({names.name("gated")}))
    if feature == "resources":
        return _listing(value, {names.uri(URIS[k]) for k in ("text", "binary", "watched")}, exact)
    if feature == "templates":
        return _listing(value, {names.uri(TEMPLATE)}, exact)
    if feature == "prompts":
        wanted = {"name": names.name("greet"), "arguments": ["name", "style"]}
        got = value if isinstance(value, list) else []
        found = wanted in got
        extra = [p for p in got if p != wanted] if exact else []
        return [f"no {wanted} in {value!r}"] * (not found) + [f"not this agent's: {extra}"] * bool(extra)
    if feature == "call":
        expect = ["echo: hello"]
    elif feature == "progress":
        seen = value.get("progress", []) if isinstance(value, dict) else []
        out = [] if value.get("text") == ["counted 3"] else [f"result {value.get('text')!r}, expected ['counted 3']"]
        if not seen:
            out.append("no notifications/progress received")
        elif seen != sorted(set(seen)) or not set(seen) <= {1, 2, 3}:
            out.append(f"progress values {seen!r} are not an increasing subset of [1, 2, 3]")
        return out
    elif feature == "logging":
        expect = {"text": ["chattered"], "levels": ["warning", "error"]}
    elif feature == "sampling":
        expect = {"text": [f"sampled: {ANSWERS['sampling']} (model {ANSWERS['model']})"], "asked": ANSWERS["question"]}
    elif feature == "elicitation":
        expect = {"text": [f"elicited: accept {ANSWERS['name']}"], "asked": "What is your name?"}
    elif feature == "roots":
        expect = {"text": [f"roots: {ANSWERS['root']}"], "asked": True}
    elif feature == "gated":
        expect = {"listed": True, "text": ["gated: for clients with sampling"]}
    elif feature == "cancel":
        if not value.get("started"):
            return [f"the upstream never started the call: {value!r}"]
        return [] if value.get("upstream_cancelled") else [f"the upstream never saw the cancellation: {value!r}"]
    elif feature in ("read_text", "read_template"):
        uri = names.uri(URIS["text" if feature == "read_text" else "item"])
        text = f"static text from peer-{upstream.key}" if feature == "read_text" else "item 42"
        expect = [{"uri": uri, "mimeType": "text/plain", "text": text}]
    elif feature == "read_binary":
        expect = [{"uri": names.uri(URIS["binary"]), "mimeType": "application/octet-stream", "blob": BINARY_B64}]
    elif feature == "prompt_get":
        expect = ["Greet bob in a formal style."]
    elif feature == "complete_prompt":
        expect = ["alice", "albert"]
    elif feature == "complete_template":
        expect = ["42"]
    elif feature == "unknown_resource":
        sent = names.uri(URIS["missing"])
        error = value.get("error") if isinstance(value, dict) else None
        if not error:
            return [f"expected an error for {sent}, got {value!r}"]
        out = [] if error.get("code") == -32602 else [f"code {error.get('code')!r}, expected -32602: {error}"]
        data = error.get("data")
        if not isinstance(data, dict) or data.get("uri") != sent:
            out.append(f"data.uri should be {sent!r} (SEP-2164), got data={data!r}")
        return out
    elif feature == "subscribe":
        # Other runs touch the same resource concurrently: one update or several, all for it.
        watched = names.uri(URIS["watched"])
        ok = isinstance(value, list) and value and set(value) == {watched}
        return [] if ok else [f"got updates for {value!r}, expected notifications/resources/updated for {watched!r}"]
    else:
        raise ValueError(f"unknown feature {feature}")
    return [] if value == expect else [f"got {value!r}, expected {expect!r}"]
