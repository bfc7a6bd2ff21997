"""Client runs: one process per (client, upstream, target) performing every feature of the
scenario, several runs at once, each outcome cached for the parametrized tests to read.

A run is a subprocess (``python -m tests.support.peers.python_client`` or Node with
``client_v2.mjs``) bounded twice: every feature by ``FEATURE_TIMEOUT_S`` inside the run
(reported as a hang, naming the feature), and the whole process by ``RUN_TIMEOUT_S``.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tests.support import conformance
from tests.support.fleet import ROOT
from tests.support.peers import surface
from tests.support.peers.node import NodeInstall
from tests.support.peers.processes import EventProcess
from tests.support.peers.surface import ClientKind, UpstreamKind

# The dispatcher under test runs with this call deadline (EDGEFLEET_CALL_TIMEOUT_S): "every
# server->client request is answered or ends with a clear error within the call's deadline".
CALL_DEADLINE_S = 8.0
# A feature with no answer by then hung. Directly every feature takes well under 1 s (3 s
# with the machine's 2 cores loaded by parallel runs, connect included); the margin over
# the deadline is for that and for the dispatcher's error to travel back.
FEATURE_TIMEOUT_S = CALL_DEADLINE_S + 10.0
RUN_TIMEOUT_S = FEATURE_TIMEOUT_S + 45.0  # process start, connects, and closing hung clients
PARALLEL_RUNS = 4  # 2 cores: more only queues the runs behind each other's CPU


@dataclass
class Outcome:
    """One run's result: ``features[name] = {ok, seconds, era, value | error}``."""

    client: ClientKind
    upstream: UpstreamKind
    target: str
    url: str
    features: dict[str, dict[str, Any]]
    seconds: float
    output: str = ""

    def label(self) -> str:
        return f"{self.client.key} x {self.upstream.label} x {self.target} ({self.url})"


@dataclass
class Runs:
    """Outcomes by (client, upstream, target), computed a target at a time on first use."""

    install: NodeInstall
    upstreams: dict[str, EventProcess]
    url_for: Callable[[str, UpstreamKind], str]  # (target, upstream) -> MCP URL
    features: tuple[str, ...] = surface.FEATURES
    outcomes: dict[tuple[str, str, str], Outcome] = field(default_factory=dict)
    timings: list[tuple[str, float]] = field(default_factory=list)
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def get(self, client: str, upstream: str, target: str, keys: list[tuple[str, str]]) -> Outcome:
        """The outcome of one run; the first call for ``target`` runs every (client,
        upstream) pair of ``keys`` against it, ``PARALLEL_RUNS`` at a time."""
        with self._lock:
            if (client, upstream, target) not in self.outcomes:
                started = time.monotonic()
                with ThreadPoolExecutor(PARALLEL_RUNS) as pool:
                    done = pool.map(lambda k: self.run(surface.CLIENTS[k[0]], surface.UPSTREAMS[k[1]], target), keys)
                    for (c, u), outcome in zip(keys, done, strict=True):
                        self.outcomes[(c, u, target)] = outcome
                seconds = time.monotonic() - started
                self.timings.append((f"{len(keys)} client runs against {target}", seconds))
                conformance.TIMINGS.add(f"peers: {len(keys)} client runs against {target}", seconds)
            return self.outcomes[(client, upstream, target)]

    def run(self, client: ClientKind, upstream: UpstreamKind, target: str) -> Outcome:
        names = surface.naming(target, upstream)
        url = self.url_for(target, upstream)
        tag = f"{client.key}-{upstream.key}-{target}-{uuid.uuid4().hex[:8]}"
        the_plan = surface.plan(
            url,
            client,
            names,
            tag=tag,
            upstream_log=str(self.upstreams[upstream.key].log_path),
            timeout_s=FEATURE_TIMEOUT_S,
            features=self.features,
        )
        with tempfile.NamedTemporaryFile("w", suffix=".json", prefix="edgefleet-peer-plan-", delete=False) as f:
            json.dump(the_plan, f)
        plan_path = Path(f.name)
        if client.runtime == "python":
            command = [sys.executable, "-m", "tests.support.peers.python_client", str(plan_path)]
            cwd = ROOT
        else:
            command = [str(self.install.node), str(self.install.script("client_v2.mjs")), str(plan_path)]
            cwd = self.install.scripts
        started = time.monotonic()
        try:
            proc = subprocess.run(command, cwd=cwd, capture_output=True, text=True, timeout=RUN_TIMEOUT_S, check=False)
            output = proc.stdout + proc.stderr
            parsed = _last_json(proc.stdout)
            features = parsed["features"] if parsed else {}
            if not features:
                failure = {"type": "run", "message": f"the client run printed no result (exit {proc.returncode})"}
                features = {f: {"ok": False, "error": failure, "era": None, "seconds": 0.0} for f in self.features}
        except subprocess.TimeoutExpired as exc:
            output = _text(exc.stdout) + _text(exc.stderr)
            failure = {"type": "hang", "message": f"the whole client run took over {RUN_TIMEOUT_S:g} s"}
            features = {
                f: {"ok": False, "error": failure, "era": None, "seconds": RUN_TIMEOUT_S} for f in self.features
            }
        finally:
            plan_path.unlink(missing_ok=True)
        return Outcome(client, upstream, target, url, features, time.monotonic() - started, str(output)[-4000:])


def _text(captured: bytes | str | None) -> str:
    return captured.decode(errors="replace") if isinstance(captured, bytes) else captured or ""


def _last_json(stdout: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith("{"):
            try:
                parsed = json.loads(line)
            except ValueError:
                return None
            return parsed if isinstance(parsed, dict) else None
    return None
