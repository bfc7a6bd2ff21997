"""The fleet's prompts, resources and resource templates as ``/mcp`` serves them: every
agent's, namespaced so they never collide (docs/design-mcp-surface.md, D2).

- prompts: ``agent.prompt`` (the same sanitising as tools; two prompts of one agent that
  would share a public name leave that agent's prompts out, loudly, never one silently);
- resources and templates: ``agent+<uri>`` (``naming.public_uri``); a URI without a scheme
  cannot be namespaced and is left out with a warning;
- capabilities: what at least one agent serves.

Built with the catalog (from memory: every replica's surface was read when it warmed), so
listing costs no upstream request.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.dispatcher.fleet.naming import namespace_tools, public_uri
from edgefleet.shared.errors import ToolConflict

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.surface import Surface

log = logging.getLogger("edgefleet.catalog")


@dataclass
class Federation:
    prompts: list[dict[str, Any]] = field(default_factory=list)
    prompt_names: dict[str, tuple[str, str]] = field(default_factory=dict)  # public -> (agent, its name)
    resources: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)
    # A URI as an agent gave it -> the agents that list it (to resolve un-prefixed URIs).
    raw_uris: dict[str, list[str]] = field(default_factory=dict)
    capabilities: set[str] = field(default_factory=set)  # prompts | resources | completions | logging

    @classmethod
    def build(cls, surfaces: dict[str, Surface]) -> Federation:
        federation = cls()
        for agent in sorted(surfaces):
            surface = surfaces[agent]
            federation.capabilities |= {
                c for c in ("prompts", "resources", "completions", "logging") if surface.serves(c)
            }
            federation._add_prompts(agent, surface.prompts)
            for resource in surface.resources:
                public = public_uri(agent, resource["uri"])
                if public is None:
                    log.warning(
                        "agent %s: resource %r has no URI scheme and cannot be namespaced: left out",
                        agent,
                        resource["uri"],
                    )
                    continue
                federation.resources.append({**resource, "uri": public})
                federation.raw_uris.setdefault(resource["uri"], []).append(agent)
            for template in surface.templates:
                public = public_uri(agent, template["uriTemplate"])
                if public is not None:
                    federation.templates.append({**template, "uriTemplate": public})
        return federation

    def _add_prompts(self, agent: str, prompts: list[dict[str, Any]]) -> None:
        try:
            mapping = namespace_tools(agent, [p["name"] for p in prompts])
        except ToolConflict as exc:
            log.error("agent %s: its prompts are left out of /mcp: %s", agent, exc.message)
            return
        by_name = {p["name"]: p for p in prompts}
        for public, own in mapping.items():
            self.prompts.append({**by_name[own], "name": public})
            self.prompt_names[public] = (agent, own)
