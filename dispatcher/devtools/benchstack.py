"""The processes ``edgefleet bench`` measures: an embedded Redis, an OTLP span sink, one or
more dispatchers with the realistic feature set on, and one echo agent.

The feature set is what a production dispatcher runs with: API-key auth (a key file made
here), a per-identity rate limit counted in Redis (high enough never to refuse), the audit
stream, /metrics, result checks (the SDK gives ``echo.echo`` an outputSchema), the info log
line per call (JSON, to a file), tracing exported over OTLP/HTTP with the recommended head
sampling (``parentbased_traceidratio``, 10 %), and the Redis bus for ``echo.where``.

Several dispatchers ("variants") may share the one Redis and so the one agent: each can have
its own settings or even its own source tree (``src``: a directory holding ``edgefleet/``,
e.g. another worktree's ``build/editable``), so a before/after comparison runs in ONE run,
alternating, on the same agent.
"""

from __future__ import annotations

import functools
import os
import re
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import httpx

from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis, free_port
from edgefleet.dispatcher.devtools.processes import die_with_parent, stop_all
from edgefleet.dispatcher.security.auth import hash_key, new_key

BUS_TOOL = "echo.where"  # on the bus in the bench; echo.echo stays on the direct path


def realistic_env(redis_url: str, keys_file: Path, sink: str, trace_ratio: float) -> dict[str, str]:
    """Settings of a dispatcher with every per-call feature on (see the module docstring)."""
    env = {
        "EDGEFLEET_REDIS_URL": redis_url,
        "EDGEFLEET_AUTH": "required",
        "EDGEFLEET_API_KEYS_FILE": str(keys_file),
        "EDGEFLEET_RATE_LIMIT": "100000000/minute",
        "EDGEFLEET_AUDIT": "true",
        "EDGEFLEET_VALIDATE_RESULTS": "true",
        "EDGEFLEET_LOG_LEVEL": "info",
        "EDGEFLEET_LOG_FORMAT": "json",
        "EDGEFLEET_BUS_URL": redis_url,
        "EDGEFLEET_BUS_TOOLS": BUS_TOOL,
        "OTEL_EXPORTER_OTLP_ENDPOINT": sink,
    }
    if trace_ratio < 1.0:
        env.update({"OTEL_TRACES_SAMPLER": "parentbased_traceidratio", "OTEL_TRACES_SAMPLER_ARG": str(trace_ratio)})
    return env


@dataclass
class Variant:
    """One dispatcher of the run: a label, settings on top of the realistic ones, a source tree."""

    label: str
    env: dict[str, str] = field(default_factory=dict)
    src: str | None = None
    python: str | None = None  # another interpreter (a venv with edgefleet installed), e.g. a newer Python


@dataclass
class Running:
    label: str
    url: str
    proc: subprocess.Popen[bytes]
    log: Path


def wait_until(
    predicate: Callable[[], bool], timeout: float, what: str, proc: subprocess.Popen[bytes] | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"bench: {what}: the process exited with {proc.returncode}")
        try:
            if predicate():
                return
        except (httpx.HTTPError, OSError, KeyError, ValueError):
            pass
        time.sleep(0.05)
    raise RuntimeError(f"bench: {what} did not come up in {timeout} s")


class BenchStack:
    """Start with ``start()`` (or ``with``); every child process dies with this one."""

    def __init__(self, variants: list[Variant], *, trace_ratio: float = 0.1, agent_log: str = "warning") -> None:
        self.variants = variants
        self.trace_ratio = trace_ratio
        self.agent_log = agent_log
        self.dir = Path(tempfile.mkdtemp(prefix="edgefleet-bench-"))
        self.fleet_token = "bench-" + os.urandom(6).hex()
        self.api_key = new_key()
        self.redis = EmbeddedRedis()
        self.procs: list[subprocess.Popen[bytes]] = []
        self.dispatchers: list[Running] = []
        self.agent: subprocess.Popen[bytes] | None = None
        self.agent_url = ""
        self.sink = ""
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "OTEL_"))}
        self.base_env.update({"EDGEFLEET_FLEET_TOKEN": self.fleet_token, "PYTHONUNBUFFERED": "1"})

    def __enter__(self) -> BenchStack:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def redis_pid(self) -> int:
        assert self.redis.process is not None
        return self.redis.process.pid

    def start(self) -> None:
        self.redis.start()
        keys = self.dir / "api-keys.yaml"
        keys.write_text(f"keys:\n  - identity: bench\n    sha256: {hash_key(self.api_key)}\n")
        self.sink = self._start_sink()
        for variant in self.variants:
            self.dispatchers.append(self._start_dispatcher(variant, keys))
        # The agent registers (and heartbeats) through the dispatcher of another source tree if
        # there is one: newer dispatchers read the registry records older ones write (tools
        # inline), not the reverse (tools stored beside the record since the tool limits).
        older = [running for running, variant in zip(self.dispatchers, self.variants, strict=True) if variant.src]
        self._start_agent((older[-1] if older else self.dispatchers[0]).url)
        for running in self.dispatchers:
            url = running.url
            wait_until(functools.partial(self._routable, url), 60, f"the echo agent in {running.label}", running.proc)

    def stop(self) -> None:
        stop_all(self.procs)
        self.redis.stop()

    def _start_sink(self) -> str:
        sink = subprocess.Popen(
            [
                sys.executable,
                "-m",
                "edgefleet.dispatcher.devtools.otlp_sink",
                "--count-only",
                "--port",
                str(free_port()),
            ],
            env=self.base_env,
            preexec_fn=die_with_parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(sink)
        assert sink.stdout is not None
        match = re.search(r"endpoint=(\S+)", sink.stdout.readline().decode())
        if not match:
            raise RuntimeError("bench: the OTLP span sink did not start")
        return match.group(1)

    def spans_received(self) -> int:
        return int(httpx.get(self.sink + "/count").text)

    def _start_dispatcher(self, variant: Variant, keys: Path) -> Running:
        port = free_port()
        env = {**self.base_env, **realistic_env(self.redis.url, keys, self.sink, self.trace_ratio)}
        env.update(variant.env)
        for key in [k for k, v in variant.env.items() if v == ""]:
            del env[key]  # "K=" in a variant: the setting's default (unset)
        env["EDGEFLEET_PORT"] = str(port)
        if variant.src:
            # Put the other tree first: `edgefleet` resolves there (its own code, this venv's libraries).
            env["PYTHONPATH"] = os.pathsep.join(filter(None, [variant.src, env.get("PYTHONPATH")]))
        log = self.dir / f"dispatcher-{variant.label}.log"
        with open(log, "wb") as out:
            proc = subprocess.Popen(
                [variant.python or sys.executable, "-m", "edgefleet.dispatcher", "serve"],
                env=env,
                preexec_fn=die_with_parent,
                stdout=out,
                stderr=subprocess.STDOUT,
            )
        self.procs.append(proc)
        url = f"http://127.0.0.1:{port}"
        wait_until(lambda: httpx.get(url + "/readyz").status_code == 200, 60, f"dispatcher {variant.label}", proc)
        return Running(variant.label, url, proc, log)

    def _start_agent(self, dispatcher: str) -> None:
        env = {**self.base_env, "EDGEFLEET_DISPATCHER_URL": dispatcher, "EDGEFLEET_AGENT_LOG_LEVEL": self.agent_log}
        agent = subprocess.Popen(
            [sys.executable, "-m", "edgefleet.agents.examples.echo", "--port", "0"],
            env=env,
            preexec_fn=die_with_parent,
            stdout=subprocess.PIPE,
            stderr=subprocess.DEVNULL,
        )
        self.procs.append(agent)
        self.agent = agent
        assert agent.stdout is not None
        line = agent.stdout.readline().decode()
        match = re.search(r"url=(\S+)", line)
        if not match:
            raise RuntimeError(f"bench: echo agent did not start: {line!r}")
        self.agent_url = match.group(1)

    def _routable(self, base: str) -> bool:
        agents = httpx.get(base + "/v1/agents", headers={"authorization": f"Bearer {self.fleet_token}"}).json()
        return any(r["routable"] for a in agents["agents"] for r in a["replicas"])


__all__ = ["BUS_TOOL", "BenchStack", "Running", "Variant", "realistic_env", "wait_until"]
