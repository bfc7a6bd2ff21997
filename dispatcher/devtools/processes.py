"""Child-process helpers: children that die with their parent, clean group shutdown."""

from __future__ import annotations

import contextlib
import ctypes
import signal
import subprocess
import sys
from typing import Self

_PR_SET_PDEATHSIG = 1


def die_with_parent() -> None:
    """``preexec_fn``: the kernel sends SIGTERM to the child when its parent dies (Linux),
    so even a `kill -9` of `edgefleet dev` leaves no orphan agents behind."""
    if sys.platform.startswith("linux"):
        with contextlib.suppress(OSError):
            ctypes.CDLL("libc.so.6", use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def stop_all(processes: list[subprocess.Popen[bytes]], timeout: float = 10.0) -> None:
    """SIGTERM everyone (graceful drain), then SIGKILL whoever is still there."""
    for proc in processes:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
    for proc in processes:
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


class ChildServer:
    """A server binary run as our child (embedded Redis, the bundled Kafka broker):
    ``stop`` terminates it (then kills it), and it works as a context manager."""

    process: subprocess.Popen[bytes] | None = None

    def start(self) -> Self:  # pragma: no cover - subclasses start their binary
        raise NotImplementedError

    def stop(self) -> None:
        if self.process and self.process.poll() is None:
            stop_all([self.process], timeout=5)
        self.cleanup()

    def cleanup(self) -> None:
        """Remove what the server left on disk (nothing by default)."""

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()
