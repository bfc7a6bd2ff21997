"""The dispatcher's config file: MCP servers that join unchanged (no SDK, no heartbeats).

TOML::

    [[agents]]
    name = "weather"
    region = "eu-west"
    url = "http://10.0.0.5:8000/mcp"

or the same shape in YAML (``agents: [{name: ..., region: ..., url: ...}]``).
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, ValidationError

from shared.errors import ConfigError
from shared.models import RegisterRequest


class StaticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[RegisterRequest] = []


def load(path: Path) -> list[RegisterRequest]:
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc}") from None
    try:
        data = tomllib.loads(text) if path.suffix == ".toml" else yaml.safe_load(text)
    except (tomllib.TOMLDecodeError, yaml.YAMLError) as exc:
        raise ConfigError(f"config file {path} does not parse: {exc}") from None
    try:
        config = StaticConfig.model_validate(data or {})
    except ValidationError as exc:
        raise ConfigError(f"config file {path} is invalid:\n{exc}") from None
    return [agent.model_copy(update={"static": True}) for agent in config.agents]
