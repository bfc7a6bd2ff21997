"""Namespacing of federated tool names: ``{agent}.{tool}``, always a valid MCP tool name.

Agent names contain no dot, so the public name splits at its first dot. Upstream names
that are not valid MCP names, or that would make the public name longer than 128
characters, are rewritten deterministically (invalid characters -> ``_``, long names
truncated with a hash suffix) and the original is kept in ``_meta``. Two upstream tools
that would end up with the same public name are a *collision*, reported at registration
(never resolved silently by dropping one).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable

from edgefleet.shared.constants import AGENT_NAME_RE, MAX_TOOL_NAME, NAMESPACE_SEPARATOR, TOOL_NAME_RE
from edgefleet.shared.errors import RegistrationError, ToolConflict

_INVALID_CHARS = re.compile(r"[^A-Za-z0-9_.\-]")
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")
# MCP Apps' ui:// resources keep their scheme (hosts look for it); the agent goes in the authority.
_UI = "ui://"


def public_name(agent: str, upstream: str) -> str:
    """The catalog name of ``upstream`` as served by ``agent``."""
    if not upstream:
        raise RegistrationError(f"agent {agent!r} advertises a tool with an empty name")
    name = _INVALID_CHARS.sub("_", upstream)
    full = f"{agent}{NAMESPACE_SEPARATOR}{name}"
    if len(full) > MAX_TOOL_NAME:
        digest = hashlib.sha256(upstream.encode()).hexdigest()[:8]
        full = full[: MAX_TOOL_NAME - 9] + "-" + digest
    assert TOOL_NAME_RE.match(full), full
    return full


def split_public_name(name: str) -> tuple[str, str] | None:
    """``"text.keywords"`` -> ``("text", "keywords")``; None when there is no namespace."""
    agent, sep, rest = name.partition(NAMESPACE_SEPARATOR)
    if not sep or not agent or not rest:
        return None
    return agent, rest


def namespace_tools(agent: str, upstream_names: Iterable[str]) -> dict[str, str]:
    """Map public name -> upstream name, raising ``ToolConflict`` on any collision."""
    mapping: dict[str, str] = {}
    for upstream in upstream_names:
        public = public_name(agent, upstream)
        if public in mapping:
            raise ToolConflict(
                f"agent {agent!r}: tools {mapping[public]!r} and {upstream!r} both map to {public!r}; "
                "rename one of them upstream (tool names should match [A-Za-z0-9_.-]{1,128})",
                data={"agent": agent, "tools": [mapping[public], upstream], "public_name": public},
            )
        mapping[public] = upstream
    return mapping


def public_uri(agent: str, uri: str) -> str | None:
    """The /mcp form of an agent's resource URI (or URI template): ``agent+<uri>``, e.g.
    ``everything+test://static-text``; ``ui://x/y`` becomes ``ui://agent+x/y``. ``+`` is a
    scheme character and agent names have none, so the mapping cannot collide. None for a
    URI without a scheme (it cannot be namespaced)."""
    if uri.startswith(_UI):
        return f"{_UI}{agent}+{uri[len(_UI) :]}"
    if not _SCHEME.match(uri):
        return None
    return f"{agent}+{uri}"


def split_public_uri(uri: str) -> tuple[str, str] | None:
    """``everything+test://x`` -> ``("everything", "test://x")``; None when the URI has no
    agent in front (the caller decides whether some agent serves it as it is)."""
    if uri.startswith(_UI):
        agent, sep, rest = uri[len(_UI) :].partition("+")
        return (agent, _UI + rest) if sep and AGENT_NAME_RE.match(agent) else None
    agent, sep, rest = uri.partition("+")
    if sep and AGENT_NAME_RE.match(agent) and _SCHEME.match(rest):
        return agent, rest
    return None
