"""What an agent offers for change notifications, per protocol era: whether (and how) the
dispatcher can get ``notifications/resources/updated`` from it (docs/design-mcp-surface.md,
D11). Read from what each replica declared (``server/discover``, ``initialize``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from edgefleet.dispatcher.fleet.upstream import CapabilityKey, capability_key

if TYPE_CHECKING:
    from edgefleet.dispatcher.fleet.catalog import AgentView
    from edgefleet.dispatcher.fleet.replica import Replica

# subscriptions/listen with resourceSubscriptions (2026-07-28) | resources/subscribe on a
# 2025-era session, updates on its GET stream.
LISTEN, SESSION = "listen", "session"


def offers(replica: Replica, mode: str) -> bool:
    """Can ``replica`` send resource updates this way (as it declared, in that era)?"""
    client = replica.client
    if mode == LISTEN:
        capabilities = replica.surface.capabilities if client.era == "modern" else {}
    else:
        capabilities = client.legacy_capabilities if client.era == "legacy" or client.speaks_legacy else {}
    resources = capabilities.get("resources")
    return isinstance(resources, dict) and resources.get("subscribe") is True


def watch_mode(agent: AgentView, *, modern_client: bool, capabilities: Any) -> tuple[str, CapabilityKey] | None:
    """How the dispatcher gets ``agent``'s resource updates for a client of one era: in the
    client's own era when the agent offers them there (era affinity, D3), else in the
    other; None when it offers none. A 2025 client's capability set picks the upstream
    session (D4); 2026 clients' go through a session that lets the agent ask nothing."""
    listen = any(offers(r, LISTEN) for r in agent.replicas)
    session = any(offers(r, SESSION) for r in agent.replicas)
    if modern_client and listen:
        return LISTEN, ()
    if session:
        return SESSION, () if modern_client else capability_key(capabilities)
    return (LISTEN, ()) if listen else None


def forwards_listen(agent: AgentView) -> bool:
    """Does a 2026 client's ``subscriptions/listen`` on the agent's mount go to the agent
    itself (it speaks 2026-07-28), rather than being served by the dispatcher?"""
    return any(r.client.era == "modern" for r in agent.replicas)
