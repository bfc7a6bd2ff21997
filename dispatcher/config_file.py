"""The dispatcher's config file: the fleet's topology that is not discovered at run time.

- ``agents``: MCP servers that join unchanged (no SDK, no heartbeats);
- ``regions``: where regions are (overrides/extends the built-in table of well-known
  region names) and, optionally, measured round-trip times between them;
- ``pipelines``: multi-step tools (see ``dispatcher/pipelines.py`` for the format).

TOML::

    [[agents]]
    name = "weather"
    region = "eu-west"
    url = "http://10.0.0.5:8000/mcp"

    [regions.on-prem-paris]
    lat = 48.86
    lon = 2.35
    latency_ms = { eu-west = 18, us-east = 80 }

or the same shape in YAML.
"""

from __future__ import annotations

import tomllib
from pathlib import Path

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator

from edgefleet.dispatcher.builtins.pipelines import PipelineSpec, tool_name
from edgefleet.dispatcher.routing.regions import RegionSpec
from edgefleet.shared.constants import REGION_NAME_RE
from edgefleet.shared.errors import ConfigError
from edgefleet.shared.models import RegisterRequest


class RegionConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)
    latency_ms: dict[str, float] = {}


class StaticConfig(BaseModel):
    model_config = ConfigDict(extra="forbid")

    agents: list[RegisterRequest] = []
    regions: dict[str, RegionConfig] = {}
    pipelines: dict[str, PipelineSpec] = {}

    @field_validator("pipelines")
    @classmethod
    def _pipeline_names(cls, value: dict[str, PipelineSpec]) -> dict[str, PipelineSpec]:
        for name in value:
            tool_name(name)  # raises ValueError with the reason
            if name == "fanout":
                raise ValueError("'fanout' is the dispatcher's own tool; pick another pipeline name")
        return value

    @field_validator("regions")
    @classmethod
    def _region_names(cls, value: dict[str, RegionConfig]) -> dict[str, RegionConfig]:
        for name, spec in value.items():
            for region in (name, *spec.latency_ms):
                if not REGION_NAME_RE.match(region):
                    raise ValueError(f"{region!r} is not a region name (lowercase letters, digits, '-')")
        return value

    def static_agents(self) -> list[RegisterRequest]:
        return [agent.model_copy(update={"static": True}) for agent in self.agents]

    def region_specs(self) -> list[RegionSpec]:
        return [RegionSpec(name, r.lat, r.lon, r.latency_ms) for name, r in self.regions.items()]


def load(path: Path) -> StaticConfig:
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
    return config
