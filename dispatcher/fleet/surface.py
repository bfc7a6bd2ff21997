"""What an agent serves besides tools: prompts, resources and resource templates, and what it
says about itself (capabilities, instructions, server info).

Fetched by each dispatcher from each replica when it warms (and refreshed after), never on
a client's request: the federated lists on ``/mcp`` come from memory. Reads, prompt gets
and completions are forwarded to the agent when a client asks (docs/design-mcp-surface.md).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from edgefleet.shared.errors import EdgefleetError

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.upstream import ReplicaClient

log = logging.getLogger("edgefleet.fleet")

# Bounds on what one agent may put into this dispatcher's memory (principle 9).
MAX_ITEMS = 10_000

LISTS = (
    ("prompts", "prompts/list", "prompts"),
    ("resources", "resources/list", "resources"),
    ("resources", "resources/templates/list", "resourceTemplates"),
)


@dataclass
class Surface:
    capabilities: dict[str, Any] = field(default_factory=dict)
    instructions: str | None = None
    server_info: dict[str, Any] | None = None
    prompts: list[dict[str, Any]] = field(default_factory=list)
    resources: list[dict[str, Any]] = field(default_factory=list)
    templates: list[dict[str, Any]] = field(default_factory=list)

    def serves(self, capability: str) -> bool:
        return isinstance(self.capabilities.get(capability), dict)


async def fetch_surface(client: ReplicaClient, *, timeout: float) -> Surface:
    """The replica's prompts, resources and templates, for the capabilities it declares
    (a list it fails to give is left empty, with a warning: tools keep working)."""
    advertised = client.advertised
    surface = Surface(
        capabilities=dict(advertised.get("capabilities") or {}),
        instructions=advertised.get("instructions"),
        server_info=advertised.get("serverInfo"),
    )
    found: dict[str, list[dict[str, Any]]] = {}
    for capability, method, key in LISTS:
        if not surface.serves(capability):
            continue
        try:
            found[key] = await client.list_all(method, key, timeout=timeout, limit=MAX_ITEMS)
        except EdgefleetError as exc:
            log.warning("%s of %s failed (%s): left empty", method, client.url, exc.message)
    surface.prompts = [p for p in found.get("prompts", []) if isinstance(p.get("name"), str)]
    surface.resources = [r for r in found.get("resources", []) if isinstance(r.get("uri"), str)]
    surface.templates = [t for t in found.get("resourceTemplates", []) if isinstance(t.get("uriTemplate"), str)]
    return surface
