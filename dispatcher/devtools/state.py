"""Where a running `edgefleet dev` says how to reach it, so the CLI in another terminal
of the same directory finds its URL and fleet token without flags."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

DEV_STATE = Path(".edgefleet") / "dev.json"


def read_dev_state() -> dict[str, Any]:
    """The running dev fleet's URL and token, or {} when none runs here."""
    try:
        state = json.loads(DEV_STATE.read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}
