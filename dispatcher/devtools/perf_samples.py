"""Reading Linux ``perf`` samples of the dispatcher: where its CPU really runs.

py-spy reads the interpreter's frame stack from outside, and on Python 3.11 under uvloop it
charged a third of the samples to whichever Python frame was outermost while C code ran
(``Runner.run``) and a fifth to one ``writev`` call; ``perf`` samples the CPU itself, kernel
included, so its shares add up to the CPU time ``/proc/<pid>/stat`` reports (issue 19).

Two views of the same samples (``perf script -F ip,sym,dso``, one block of frames per
sample, innermost first):

- **by object**: the shared object the CPU was in (the kernel, the CPython interpreter,
  libc, uvloop, httptools, orjson...);
- **by component**: the innermost Python function on the stack, with the components of
  ``bench_profile``. Python frames appear in ``perf`` only on CPython 3.12 and later, with
  ``PYTHONPERFSUPPORT=1`` (its ``py::<qualname>:<file>`` trampolines), and only when the
  stack was unwound with DWARF (CPython is built without frame pointers).
"""

from __future__ import annotations

import collections
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

# "    7f7213e6e4a7 py::HeadWithBody.write:/path/shared/http_server.py (/tmp/perf-28107.map)"
_FRAME = re.compile(r"^\s*[0-9a-f]+ (?P<sym>.*?) \((?P<dso>[^()]*)\)$")
_PY = "py::"

# Shared object (a substring of its path) -> what it is, first match wins.
OBJECTS: list[tuple[str, str]] = [
    ("[kernel", "kernel (system calls, TCP loopback, scheduling)"),
    ("libpython", "CPython interpreter (bytecode, objects, dicts, calls)"),
    ("/bin/python", "CPython interpreter (bytecode, objects, dicts, calls)"),
    ("perf-", "CPython interpreter (bytecode, objects, dicts, calls)"),  # the py:: trampolines
    ("libc.so", "libc (malloc, memcpy, syscall stubs)"),
    ("uvloop", "uvloop (event loop, C)"),
    ("httptools", "httptools (HTTP parser, C)"),
    ("orjson", "orjson (JSON, Rust)"),
    ("_asyncio", "asyncio C accelerator (tasks, futures)"),
    ("hiredis", "hiredis (Redis protocol, C)"),
    ("jsonschema_rs", "jsonschema-rs (validation, Rust)"),
    ("libcrypto", "OpenSSL libcrypto (hashes)"),
]


@dataclass
class Sample:
    """One sample's frames, innermost first: (symbol, shared object)."""

    frames: list[tuple[str, str]] = field(default_factory=list)

    @property
    def leaf_object(self) -> str:
        return self.frames[0][1] if self.frames else "?"

    def python_stack(self) -> str:
        """The Python frames, outermost first, as py-spy writes a stack ("fn (file);...")."""
        frames = [sym[len(_PY) :] for sym, _ in self.frames if sym.startswith(_PY)]
        return ";".join(f"{name} ({path})" for name, _, path in (f.partition(":") for f in reversed(frames)))


def parse(lines: Iterable[str]) -> Iterator[Sample]:
    """Samples from ``perf script -F ip,sym,dso`` (a header line per sample is tolerated)."""
    sample = Sample()
    for line in lines:
        if not line.strip():
            if sample.frames:
                yield sample
            sample = Sample()
            continue
        match = _FRAME.match(line.rstrip("\n"))
        # An inlined function repeats its caller's address, whose line names the object.
        if match and match["dso"] != "inlined":
            sample.frames.append((match["sym"], match["dso"]))
    if sample.frames:
        yield sample


def object_of(dso: str) -> str:
    for needle, name in OBJECTS:
        if needle in dso:
            return name
    return dso.rsplit("/", 1)[-1] or "?"


def by_object(samples: list[Sample]) -> list[tuple[str, int, float]]:
    """(what the CPU was in, samples, share), largest first."""
    return _shares(object_of(sample.leaf_object) for sample in samples)


def by_component(samples: list[Sample], classify: Callable[[str], str]) -> list[tuple[str, int, float]]:
    """(component of the innermost Python frame, samples, share) over the samples that have
    Python frames; empty when none has (Python < 3.12, or no PYTHONPERFSUPPORT)."""
    return _shares(classify(stack) for stack in (sample.python_stack() for sample in samples) if stack)


def _shares(names: Iterable[str]) -> list[tuple[str, int, float]]:
    counts = collections.Counter(names)
    total = sum(counts.values()) or 1
    return [(name, n, n / total) for name, n in counts.most_common()]


__all__ = ["OBJECTS", "Sample", "by_component", "by_object", "object_of", "parse"]
