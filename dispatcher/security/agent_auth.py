"""Who is registering: the fleet token, a per-agent key, or an operator.

- The **fleet token** (``EDGEFLEET_FLEET_TOKEN``) is the shared secret of the whole fleet:
  it may register any agent name that has no key of its own, and use the operator routes.
- A **per-agent key** (``EDGEFLEET_AGENT_KEYS_FILE``; ``edgefleet keys create --agent NAME``)
  is bound to one agent name, and optionally to regions. It registers, heartbeats and
  deregisters replicas of that agent only; and once a name has a key, the fleet token can
  no longer register under it. That is how an agent cannot put tools into another agent's
  namespace (``text.*`` can only come from the holder of text's key).
- An **operator** is the fleet token, or a client credential of ``/mcp`` (API key / JWT)
  with the ``admin`` scope: it lists agents and removes them.

Keys are stored as SHA-256 digests, like client API keys (dispatcher/auth.py).
"""

from __future__ import annotations

import hmac
import secrets
from dataclasses import dataclass
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.dispatcher.security.auth import Authenticator, bearer, hash_key
from edgefleet.shared.constants import AGENT_NAME_RE
from edgefleet.shared.errors import ConfigError, Forbidden, NamespaceForbidden, Unauthorized

AGENT_KEY_PREFIX = "efa_"


@dataclass(frozen=True)
class AgentCredential:
    """What a registry request was authenticated as. ``agent`` None: not bound to a name."""

    kind: str  # fleet-token | agent-key | admin
    name: str  # shown in the audit stream: the agent, "fleet" or the admin's identity
    agent: str | None = None
    regions: tuple[str, ...] = ()

    @property
    def operator(self) -> bool:
        return self.kind in ("fleet-token", "admin")


class AgentKeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agent: str = Field(pattern=AGENT_NAME_RE.pattern, description="the agent name (tool namespace) the key is bound to")
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    regions: list[str] = Field(default_factory=list, description="regions it may register replicas in; empty = all")


class AgentKeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[AgentKeyEntry] = Field(default_factory=list)


def load_agent_keys(path: Path) -> dict[str, AgentKeyEntry]:
    """Key digest -> entry."""
    try:
        parsed = AgentKeysFile.model_validate(yaml.safe_load(path.read_text()) or {})
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"EDGEFLEET_AGENT_KEYS_FILE {path}: {exc}") from None
    out: dict[str, AgentKeyEntry] = {}
    for entry in parsed.agents:
        if entry.sha256 in out:
            raise ConfigError(f"EDGEFLEET_AGENT_KEYS_FILE {path}: two entries share one key hash ({entry.agent})")
        out[entry.sha256] = entry
    return out


class AgentAuthenticator:
    def __init__(
        self, fleet_token: str, agent_keys: dict[str, AgentKeyEntry], clients: Authenticator | None = None
    ) -> None:
        self.fleet_token = fleet_token.encode()
        self.agent_keys = agent_keys
        self.bound_names = frozenset(entry.agent for entry in agent_keys.values())
        self.clients = clients

    def authenticate(self, authorization: str | None) -> AgentCredential:
        presented = bearer(authorization)
        if presented is None:
            raise Unauthorized("Send Authorization: Bearer <fleet token or agent key>.")
        if self.fleet_token and hmac.compare_digest(presented.encode(), self.fleet_token):
            return AgentCredential("fleet-token", "fleet")
        if presented.startswith(AGENT_KEY_PREFIX):
            entry = self.agent_keys.get(hash_key(presented))
            if entry is None:
                raise Unauthorized("Unknown agent key.", data={"auth_error": "invalid_token"})
            return AgentCredential("agent-key", entry.agent, entry.agent, tuple(entry.regions))
        if self.clients is not None and self.clients.enabled:
            # An operator's own /mcp credential with the admin scope also works here.
            try:
                identity = self.clients.authenticate(authorization)
            except Unauthorized:
                pass
            else:
                if identity.admin:
                    return AgentCredential("admin", identity.name)
                raise Forbidden(
                    f"{identity.name!r} has no admin scope: the registry needs the fleet token, an agent key or an admin."
                )
        raise Unauthorized("Wrong fleet token.", data={"auth_error": "invalid_token"})

    def check_register(self, credential: AgentCredential, name: str, region: str) -> None:
        """May ``credential`` put replicas (and so tools) under ``name`` in ``region``?"""
        if credential.agent is not None:
            if name != credential.agent:
                raise NamespaceForbidden(
                    f"This key belongs to agent {credential.agent!r}; it cannot register {name!r} (tools {name}.*).",
                    data={"agent": name, "bound_to": credential.agent},
                )
            if credential.regions and region not in credential.regions:
                raise NamespaceForbidden(
                    f"Agent {name!r}'s key may register only in {', '.join(credential.regions)}, not {region!r}.",
                    data={"agent": name, "region": region},
                )
        elif name in self.bound_names:
            raise NamespaceForbidden(
                f"Agent name {name!r} has its own key (EDGEFLEET_AGENT_KEYS_FILE): only that key registers it.",
                data={"agent": name},
            )

    def check_replica(self, credential: AgentCredential, agent: str, *, operator_ok: bool = False) -> None:
        """May ``credential`` heartbeat (or, ``operator_ok``, deregister) a replica of ``agent``?"""
        if operator_ok and credential.operator:
            return
        if credential.agent is not None and credential.agent != agent:
            raise NamespaceForbidden(
                f"This key belongs to agent {credential.agent!r}, not {agent!r}.", data={"agent": agent}
            )
        if credential.agent is None and credential.kind == "fleet-token" and agent in self.bound_names:
            raise NamespaceForbidden(
                f"Agent {agent!r} has its own key: only that key manages its replicas.", data={"agent": agent}
            )

    def check_operator(self, credential: AgentCredential) -> None:
        if not credential.operator:
            raise Forbidden(
                "Agent keys only register their own agent; listing and removing agents needs the fleet token or an admin."
            )


def new_agent_key() -> str:
    return AGENT_KEY_PREFIX + secrets.token_urlsafe(32)
