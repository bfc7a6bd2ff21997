"""Real-process fleet for integration tests: dispatcher and agents as separate processes
talking real HTTP on 127.0.0.1, with the registry in a real Redis."""

from __future__ import annotations

import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.devtools.processes import die_with_parent, stop_all

ROOT = Path(__file__).resolve().parents[2]
READY_RE = re.compile(rb"EDGEFLEET_AGENT_READY name=(\S+) region=(\S+) url=(\S+)")


class Proc:
    def __init__(self, args: list[str], env: dict[str, str], name: str) -> None:
        self.name = name
        self.log_path = Path(tempfile.mkdtemp(prefix="edgefleet-test-")) / f"{name}.log"
        self.log = open(self.log_path, "wb")  # noqa: SIM115
        self.popen = subprocess.Popen(
            args, env=env, cwd=ROOT, stdout=self.log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
        )

    def output(self) -> str:
        self.log.flush()
        return self.log_path.read_text(errors="replace")

    def kill9(self) -> None:
        self.popen.send_signal(signal.SIGKILL)
        self.popen.wait()


class Fleet:
    def __init__(self, redis_url: str, prefix: str, *, region: str = "eu-west", heartbeat_ttl_s: float = 3.0) -> None:
        self.redis_url = redis_url
        self.prefix = prefix
        self.token = "test-fleet-token-" + prefix
        self.region = region
        self.heartbeat_ttl_s = heartbeat_ttl_s
        self.dispatchers: list[tuple[str, Proc]] = []
        self.bus = False
        self.agents: list[Proc] = []
        # The processes see only what the test sets: no EDGEFLEET_* or OTEL_* from the shell.
        self.base_env = {k: v for k, v in os.environ.items() if not k.startswith(("EDGEFLEET_", "OTEL_"))}
        self.base_env.update({"PYTHONUNBUFFERED": "1", "EDGEFLEET_FLEET_TOKEN": self.token})
        # Client auth has its own tests (test_auth.py); the others call /mcp without credentials.
        self.default_auth = "none"

    @property
    def url(self) -> str:
        return self.dispatchers[0][0]

    @property
    def mcp_url(self) -> str:
        return self.url + "/mcp"

    def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {self.token}"}

    def start_dispatcher(self, *, port: int | None = None, **settings: Any) -> str:
        """Start a dispatcher process (``port``: reuse one, e.g. to restart a killed dispatcher
        where its agents and clients expect it)."""
        port = port or free_port()
        env = {
            **self.base_env,
            "EDGEFLEET_PORT": str(port),
            "EDGEFLEET_REDIS_URL": self.redis_url,
            "EDGEFLEET_REDIS_PREFIX": self.prefix,
            "EDGEFLEET_REGION": self.region,
            "EDGEFLEET_HEARTBEAT_TTL_S": str(self.heartbeat_ttl_s),
            "EDGEFLEET_PROBE_INTERVAL_S": "0.5",
            "EDGEFLEET_LOG_FORMAT": "text",
            "EDGEFLEET_AUTH": self.default_auth,
        }
        env.update({f"EDGEFLEET_{k.upper()}": str(v) for k, v in settings.items()})
        self.bus = self.bus or "bus_url" in settings
        proc = Proc([sys.executable, "-m", "edgefleet.dispatcher", "serve"], env, f"dispatcher-{port}")
        url = f"http://127.0.0.1:{port}"
        self.dispatchers.append((url, proc))
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            if proc.popen.poll() is not None:
                raise RuntimeError(f"dispatcher exited:\n{proc.output()}")
            try:
                if httpx.get(url + "/readyz", timeout=1).status_code == 200:
                    return url
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError(f"dispatcher not ready:\n{proc.output()}")

    def start_agent(
        self,
        module: str,
        region: str,
        *,
        dispatcher: str | None = None,
        wait: bool = True,
        env: dict[str, str] | None = None,
        **settings: Any,
    ) -> Proc:
        env = {
            **self.base_env,
            "EDGEFLEET_DISPATCHER_URL": dispatcher or self.url,
            "EDGEFLEET_AGENT_HEARTBEAT_S": "0.5",
            **(env or {}),
        }
        env.update({f"EDGEFLEET_AGENT_{k.upper()}": str(v) for k, v in settings.items()})
        proc = Proc([sys.executable, "-m", module, "--region", region, "--port", "0"], env, f"{module}-{region}")
        self.agents.append(proc)
        if wait:
            self.wait_for(lambda: self._registered(proc), f"{module}@{region} registered", proc=proc)
        return proc

    def _registered(self, proc: Proc) -> bool:
        match = READY_RE.search(proc.output().encode())
        if not match:
            return False
        url = match.group(3).decode()
        # With a bus, also wait until its consumer receives work (first calls are then not
        # stuck behind a consumer-group join).
        return any(
            r["url"] == url and r["routable"] and (not self.bus or r["load"].get("bus_ready"))
            for a in self.agents_view()
            for r in a["replicas"]
        )

    def add_server(self, name: str, url: str, region: str = "eu-west") -> None:
        """Add an unmodified MCP server (as `edgefleet agents add` does) and wait until it is routable."""
        body = {"name": name, "region": region, "url": url, "static": True}
        resp = httpx.post(self.url + "/v1/agents", json=body, headers=self.auth(), timeout=30)
        assert resp.status_code < 300, resp.text
        self.wait_for(
            lambda: any(a["name"] == name and any(r["routable"] for r in a["replicas"]) for a in self.agents_view()),
            f"{name} routable",
        )

    def agents_view(self, dispatcher: str | None = None) -> list[dict[str, Any]]:
        resp = httpx.get((dispatcher or self.url) + "/v1/agents", headers=self.auth(), timeout=5)
        resp.raise_for_status()
        return resp.json()["agents"]

    def wait_for(self, predicate: Any, what: str, *, timeout: float = 30.0, proc: Proc | None = None) -> float:
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if proc is not None and proc.popen.poll() is not None:
                raise AssertionError(f"{proc.name} exited while waiting for {what}:\n{proc.output()}")
            if predicate():
                return time.monotonic() - started
            time.sleep(0.05)
        logs = "\n".join(f"--- {p.name}\n{p.output()[-3000:]}" for _, p in self.dispatchers) + (
            f"\n--- {proc.name}\n{proc.output()[-3000:]}" if proc else ""
        )
        raise AssertionError(f"timed out after {timeout} s waiting for {what}\n{logs}")

    def stop(self) -> None:
        stop_all([p.popen for p in self.agents], timeout=5)
        stop_all([p.popen for _, p in self.dispatchers], timeout=5)
        for proc in [*self.agents, *(p for _, p in self.dispatchers)]:
            proc.log.close()
            shutil.rmtree(proc.log_path.parent, ignore_errors=True)


def plain_server(*flags: str, script: str = "plain_mcp_server.py") -> tuple[subprocess.Popen[bytes], str]:
    """An unmodified MCP server (official SDK only, tests/support/``script``) on a free
    port; ``--legacy-only`` makes it a 2025-era server. The caller kills it."""
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, f"tests/support/{script}", str(port), *flags],
        cwd=ROOT,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return proc, f"http://127.0.0.1:{port}/mcp"
        except OSError:
            time.sleep(0.05)  # polling a port that is not open yet: nothing to wait on
    proc.kill()
    raise AssertionError("plain MCP server did not start")
