"""GeoIP fixtures: custom .mmdb files built with mmdb-writer, as an operator would."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from mmdb_writer import MMDBWriter
from netaddr import IPSet


def write_private_db(path: Path, records: dict[str, dict[str, Any]]) -> Path:
    """``{"127.0.0.2/32": {"region": "eu-west"}, ...}`` -> a .mmdb at ``path``."""
    writer = MMDBWriter(
        ip_version=6, ipv4_compatible=True, database_type="edgefleet-regions", description="test regions"
    )
    for cidr, record in records.items():
        writer.insert_network(IPSet([cidr]), record)
    writer.to_db_file(str(path))
    return path
