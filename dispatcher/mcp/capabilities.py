"""What the dispatcher says about itself to MCP clients: server info, instructions and
capabilities per protocol era."""

from __future__ import annotations

from typing import Any

from edgefleet.dispatcher import __version__
from edgefleet.shared.constants import META_CLIENT_CAPABILITIES, TASKS_EXTENSION

SERVER_INFO = {"name": "edgefleet", "title": "edgefleet MCP edge dispatcher", "version": __version__}
INSTRUCTIONS = "Tools of every agent in the fleet, named 'agent.tool'. Calls are routed to the nearest healthy replica."
CAPABILITIES: dict[str, Any] = {"tools": {"listChanged": False}, "logging": {}}
# SEP-1686 tasks exist from 2025-11-25 on; older sessions get no tasks capability.
TASKS_LEGACY_VERSION = "2025-11-25"
TASK_CAPABILITIES: dict[str, Any] = {"tasks": {"list": {}, "cancel": {}, "requests": {"tools": {"call": {}}}}}
LEGACY_TASK_CAPABILITIES = {**CAPABILITIES, **TASK_CAPABILITIES}
# SEP-2663: the tasks extension, declared in server/discover.
MODERN_CAPABILITIES = {**CAPABILITIES, "extensions": {TASKS_EXTENSION: {}}}
MISSING_TASKS_EXTENSION: dict[str, Any] = {"requiredCapabilities": {"extensions": {TASKS_EXTENSION: {}}}}


def declares_tasks(meta: Any) -> bool:
    """Did this 2026-era request declare the tasks extension in its client capabilities?"""
    if not isinstance(meta, dict):
        return False
    capabilities = meta.get(META_CLIENT_CAPABILITIES)
    extensions = capabilities.get("extensions") if isinstance(capabilities, dict) else None
    return isinstance(extensions, dict) and isinstance(extensions.get(TASKS_EXTENSION), dict)
