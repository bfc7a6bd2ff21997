"""Node 22 and the official TypeScript SDKs for the peer tests, installed once into a cache
folder with the conformance harness's helpers (same cache, same npm rules, same "fail with
instructions, never skip"), and the Node processes they run.

- ``install()``: ``node-<os>-<arch>@22`` plus the pinned SDK packages in
  ``<cache>/peers-<digest of the pins>``; the scripts of this folder are copied beside
  them into ``scripts-<digest of the scripts>`` (ES modules resolve packages from the
  folders above the script, not from ``NODE_PATH``; a digest-named copy is immutable, so
  worktrees sharing the cache never overwrite each other's scripts).
- ``upstream()``: one of the two servers as an ``EventProcess`` on 127.0.0.1, ready when it
  prints its ``PEER {"event":"ready"...}`` line; its stdout is the event log the tests read.
"""

from __future__ import annotations

import hashlib
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

from tests.support import conformance
from tests.support.peers.processes import EventProcess

HERE = Path(__file__).resolve().parent
SCRIPTS = ("server_v1.mjs", "server_v2.mjs", "client_v2.mjs")
# The SDK packages, pinned: v1 is the 2025-only server most deployed servers run; v2 is
# the 2026-07-28 line (separate client / server / Node-adapter packages).
PACKAGES = {
    "@modelcontextprotocol/sdk": "1.32.2",
    "@modelcontextprotocol/server": "2.4.0",
    "@modelcontextprotocol/node": "2.1.2",
    "@modelcontextprotocol/client": "2.4.0",
    "zod": "4.6.7",
}


@dataclass(frozen=True)
class NodeInstall:
    folder: Path
    scripts: Path

    @property
    def node(self) -> Path:
        return self.folder / "node_modules" / conformance._node_package() / "bin" / "node"

    def script(self, name: str) -> Path:
        return self.scripts / name


def _digest(parts: list[bytes]) -> str:
    h = hashlib.sha256()
    for part in parts:
        h.update(part + b"\0")
    return h.hexdigest()[:12]


def install() -> NodeInstall:
    node_package = conformance._node_package()
    pins = [f"{node_package}@{conformance.NODE_MAJOR}", *(f"{name}@{version}" for name, version in PACKAGES.items())]
    target = conformance.cache_root() / f"peers-{_digest([p.encode() for p in pins])}"

    def populate(staging: Path) -> None:
        (staging / "package.json").write_text('{"private": true, "type": "module"}\n')
        conformance._run_npm(
            ["install", *pins], staging, f"installing Node {conformance.NODE_MAJOR} and {', '.join(pins[1:])}"
        )

    folder = conformance._install_once(target, "Node 22 + MCP TypeScript SDKs npm install", populate)
    sources = [(HERE / name).read_bytes() for name in SCRIPTS]
    scripts = folder / f"scripts-{_digest(sources)}"
    if not scripts.is_dir():
        staging = Path(tempfile.mkdtemp(prefix="scripts.", dir=folder))
        for name, source in zip(SCRIPTS, sources, strict=True):
            (staging / name).write_bytes(source)
        try:
            staging.rename(scripts)
        except OSError:  # another run put the same scripts there first
            shutil.rmtree(staging, ignore_errors=True)
    return NodeInstall(folder, scripts)


def upstream(install: NodeInstall, script: str, name: str) -> EventProcess:
    """``server_v1.mjs`` or ``server_v2.mjs`` as a child process (not started)."""
    command = [str(install.node), str(install.script(script))]
    return EventProcess(command, install.scripts, name, prefix="PEER")
