"""Where one call went: a value every path fills in and every consumer reads as fields.

The client sees it in the ``Edgefleet-Route`` response header (formatted once, here); the
dispatcher's own callers (fan-out, pipelines, tasks) read the object itself.
"""

from __future__ import annotations

from dataclasses import dataclass

from edgefleet.shared.constants import HEADER_ROUTE

HEADER = HEADER_ROUTE.encode()


@dataclass(slots=True)
class Route:
    path: str  # direct | bus | cache | builtin
    region: str | None = None  # where it was served
    replica: str | None = None
    caller_region: str | None = None
    reason: str | None = None  # why that region (network | private-db | geoip | hint | default, +failover)
    attempt: int = 0  # direct path: which try answered (1 = the first)
    task: str | None = None  # bus path: the envelope's task id
    session: str | None = None  # direct path: the replica's 2025-era session the call went through (not in the header)

    def header(self) -> tuple[bytes, bytes]:
        """The ``Edgefleet-Route`` header, e.g. ``region=us-east; replica=...; reason=geoip+failover; attempt=2``."""
        if self.path == "cache":
            return HEADER, b"cache=hit"
        parts = [f"region={self.region or '-'}", f"replica={self.replica or '-'}"]
        if self.path == "bus":
            parts.append("path=bus")
        if self.caller_region is not None or self.reason is not None:
            parts.append(f"caller-region={self.caller_region or '-'}")
            parts.append(f"reason={self.reason or '-'}")
        if self.attempt:
            parts.append(f"attempt={self.attempt}")
        if self.task:
            parts.append(f"task={self.task}")
        return HEADER, "; ".join(parts).encode()

    def fields(self) -> dict[str, str]:
        """The parts a task record or a fan-out result keeps (region, replica)."""
        return {k: v for k, v in (("region", self.region), ("replica", self.replica)) if v}
