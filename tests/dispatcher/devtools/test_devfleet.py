"""README command 1: `edgefleet dev` brings up a fleet, serves calls, and stops cleanly."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from edgefleet.dispatcher.devtools.embedded_redis import free_port


def _children(pid: int) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=", "--ppid", str(pid)], capture_output=True, text=True).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(")")[-1].split()[0] == "Z")


@pytest.mark.parametrize("bus", ["redis", "kafka"])
def test_dev_fleet_serves_and_stops_without_orphans(tmp_path: Path, bus: str) -> None:
    """trainer.* goes over the bus in dev: its progress must reach the CLI on both buses."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    dev = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "edgefleet.dispatcher",
            "dev",
            "--port",
            str(port),
            "--agents",
            "text@eu-west,trainer@us-east",
            "--bus",
            bus,
        ],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dev.stdout is not None
        seen = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            seen.append(line)
            if "is up" in line or not line:
                break
        assert any("is up" in line for line in seen), "".join(seen)
        children = _children(dev.pid)
        assert len(children) >= (5 if bus == "kafka" else 4)  # redis, [kafka,] dispatcher, two agents
        # The CLI finds the dev fleet through .edgefleet/dev.json in the working directory.
        call = subprocess.run(
            [sys.executable, "-m", "edgefleet.dispatcher", "call", "text.stats", "text=one two three. four"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert call.returncode == 0, call.stderr
        assert '"words": 4' in call.stdout
        progress = subprocess.run(
            [sys.executable, "-m", "edgefleet.dispatcher", "call", "trainer.train", "epochs=3"],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert progress.returncode == 0 and "3/3" in progress.stderr, progress.stderr
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(30)
    time.sleep(0.5)
    assert not [pid for pid in children if _alive(pid)], "edgefleet dev left processes behind"
    assert not (tmp_path / ".edgefleet" / "dev.json").exists()


def test_dev_says_when_its_redis_dies_and_starts_it_again(tmp_path: Path) -> None:
    """Issue 16: the embedded redis-server killed under `edgefleet dev` was left <defunct>
    and nothing was said; the fleet silently lost its registry."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if not k.startswith("EDGEFLEET_")}
    dev = subprocess.Popen(
        [sys.executable, "-m", "edgefleet.dispatcher", "dev", "--port", str(port), "--agents", "text@eu-west"],
        cwd=tmp_path,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert dev.stdout is not None
        seen: list[str] = []
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            line = dev.stdout.readline()
            seen.append(line)
            if "is up" in line or not line:
                break
        assert any("is up" in line for line in seen), "".join(seen)
        redis = [pid for pid in _children(dev.pid) if "redis-server" in Path(f"/proc/{pid}/cmdline").read_text()]
        assert len(redis) == 1
        os.kill(redis[0], signal.SIGKILL)
        said = []
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline and not any("is back" in line for line in said):
            said.append(dev.stdout.readline())
        text = "".join(said)
        assert "the embedded redis-server died (killed by signal 9); starting it again on the same port" in text, text
        assert "the registry" in text and "agents register again" in text
        assert not _alive(redis[0])  # reaped, not left <defunct>
        assert len([p for p in _children(dev.pid) if "redis-server" in Path(f"/proc/{p}/cmdline").read_text()]) == 1

        def served() -> bool:
            call = subprocess.run(
                [sys.executable, "-m", "edgefleet.dispatcher", "call", "text.stats", "text=one two"],
                cwd=tmp_path,
                env=env,
                capture_output=True,
                text=True,
                timeout=60,
            )
            return call.returncode == 0 and '"words": 2' in call.stdout

        deadline = time.monotonic() + 30
        while not served():  # the agent registers again with the new, empty registry
            assert time.monotonic() < deadline, "the fleet did not serve again after its redis came back"
            time.sleep(1)
        assert dev.poll() is None
    finally:
        dev.send_signal(signal.SIGTERM)
        dev.wait(30)
