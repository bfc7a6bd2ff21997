"""A child process that reports what it does as ``PREFIX {json}`` lines on stdout (the peer
servers, the split proxy): started, ready once it prints ``{"event":"ready","port":N}``,
its events read back from its log, stopped with SIGTERM."""

from __future__ import annotations

import json
import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

from edgefleet.dispatcher.devtools.processes import die_with_parent

from tests.support import conformance
from tests.support.conformance import ConformanceSetupError


class EventProcess:
    def __init__(self, command: list[str], cwd: Path, name: str, *, prefix: str) -> None:
        self.command = command
        self.cwd = cwd
        self.name = name
        self.prefix = prefix + " "
        self.port = 0
        self.process: subprocess.Popen[bytes] | None = None
        self.log_path = Path(tempfile.mkdtemp(prefix=f"edgefleet-{name}-")) / "events.log"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/mcp"

    def output(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def events(self) -> list[dict[str, Any]]:
        found = []
        for line in self.output().splitlines():
            if line.startswith(self.prefix + "{"):
                try:
                    found.append(json.loads(line[len(self.prefix) :]))
                except ValueError:  # a line still being written
                    continue
        return found

    def saw(self, event: str, **fields: object) -> bool:
        return any(e.get("event") == event and all(e.get(k) == v for k, v in fields.items()) for e in self.events())

    def start(self, timeout: float = 60.0) -> EventProcess:
        with open(self.log_path, "wb") as log:
            self.process = subprocess.Popen(
                self.command, cwd=self.cwd, stdout=log, stderr=subprocess.STDOUT, preexec_fn=die_with_parent
            )
        started = time.monotonic()
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise ConformanceSetupError(
                    f"{self.name} exited with {self.process.returncode}:\n{self.output()[-3000:]}"
                )
            ready = [e for e in self.events() if e.get("event") == "ready"]
            if ready:
                self.port = int(ready[0]["port"])
                conformance.TIMINGS.add(f"{self.name} start", time.monotonic() - started)
                return self
            time.sleep(0.05)
        self.stop()
        raise ConformanceSetupError(
            f"{self.name} printed no ready line within {timeout:.0f} s:\n{self.output()[-3000:]}"
        )

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(5)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        shutil.rmtree(self.log_path.parent, ignore_errors=True)
