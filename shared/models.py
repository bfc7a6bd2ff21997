"""Wire models shared by the dispatcher, the CLI and agents (registry records, requests)."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from edgefleet.shared.constants import AGENT_NAME_RE, REGION_NAME_RE, RESERVED_AGENT_NAMES

REPLICA_ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}$"


class RegisterRequest(BaseModel):
    """Body of ``POST /v1/agents``: an SDK replica joining, or a static MCP server added by hand."""

    model_config = ConfigDict(extra="forbid")

    name: str = Field(description="Agent name; the namespace of its tools.")
    region: str
    url: str = Field(description="The replica's MCP endpoint, e.g. http://10.0.0.5:9000/mcp")
    version: str = Field("", max_length=64)
    replica_id: str | None = Field(None, pattern=REPLICA_ID_PATTERN)
    static: bool = Field(False, description="True for servers that know nothing of edgefleet (no heartbeats).")
    bus: bool = Field(False, description="True when the replica also consumes its calls from the bus.")

    @field_validator("name")
    @classmethod
    def _name(cls, value: str) -> str:
        if not AGENT_NAME_RE.match(value):
            raise ValueError(f"agent names must match {AGENT_NAME_RE.pattern} (they prefix tool names as 'name.tool')")
        if value in RESERVED_AGENT_NAMES:
            raise ValueError(f"agent name {value!r} is reserved for the dispatcher's own tools")
        return value

    @field_validator("region")
    @classmethod
    def _region(cls, value: str) -> str:
        if not REGION_NAME_RE.match(value):
            raise ValueError(f"region names must match {REGION_NAME_RE.pattern}")
        return value

    @field_validator("url")
    @classmethod
    def _url(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or len(value) > 2048:
            raise ValueError("url must be an http:// or https:// MCP endpoint")
        # The URL is echoed in /v1/agents, the audit stream and log lines: a CR/LF in it
        # would forge lines there. A URL has no whitespace either (RFC 3986: percent-encode).
        if not _printable_without_spaces(value):
            raise ValueError("url must not contain whitespace or control characters (percent-encode them)")
        return value

    @field_validator("version")
    @classmethod
    def _version(cls, value: str) -> str:
        if not value.isprintable():  # shown where the URL is (spaces are fine: "1.0 beta")
            raise ValueError("version must not contain control characters")
        return value


def _printable_without_spaces(text: str) -> bool:
    """No control, format or unassigned character (str.isprintable) and no whitespace."""
    return text.isprintable() and not any(char.isspace() for char in text)


class Heartbeat(BaseModel):
    model_config = ConfigDict(extra="allow")

    inflight: int = Field(0, ge=0)


class ReplicaRecord(BaseModel):
    """What the registry stores in Redis for one replica (shared by every dispatcher)."""

    model_config = ConfigDict(extra="ignore")

    replica_id: str
    agent: str
    region: str
    url: str
    version: str = ""
    static: bool = False
    era: Literal["modern", "legacy"] = "modern"
    bus: bool = False
    tools: list[dict[str, Any]] = Field(default_factory=list)
    tools_hash: str = ""
    registered_at: float = 0.0
    heartbeat_at: float = 0.0
    load: dict[str, Any] = Field(default_factory=dict)
