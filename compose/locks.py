#!/usr/bin/env python3
"""The container images' dependency locks, made by uv from ``pyproject.toml`` and checked
against it.

    python compose/locks.py            # re-resolve every lock (keeps pins that still fit)
    python compose/locks.py --upgrade  # newest versions allowed by pyproject.toml
    python compose/locks.py --check    # exit 1 if a lock no longer matches pyproject.toml

One lock per image, because the images need different things:

- ``dispatcher.txt``: the runtime dependencies only (no example-agent or dev-only packages);
- ``dispatcher-temporal.txt``: the same + ``[temporal]`` (the build argument DISPATCHER_LOCK picks it);
- ``agent.txt``: the runtime dependencies + the ``[examples]`` extra (the example agents);
- ``build.txt``: the ``[build-system]`` requirements (the wheel of edgefleet itself is built
  in the image from them, offline when the wheels are in ``compose/wheelhouse``).

Each lock pins every package with its hashes (``pip install --require-hashes`` then refuses
anything unpinned or altered), for CPython 3.11 on x86_64 Linux with glibc 2.36 (Debian
bookworm, the images' default base), wheels only (the images have no compiler). The
resolution is reproducible: ``--exclude-newer`` (written in the lock's header) hides every
file uploaded after the lock was made, so ``--check`` re-resolves exactly as the lock was
made, and any difference means the lock no longer satisfies ``pyproject.toml``: a new or
removed dependency, a bound the pin falls outside of, or a pin that conflicts with another
package's requirement.
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import re
import shutil
import subprocess
import sys
import tempfile
import tomllib
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK_DIR = ROOT / "compose" / "locks"
PYTHON_VERSION = "3.11"
PYTHON_PLATFORM = "x86_64-manylinux_2_36"
# The environment the locks are resolved for, to evaluate markers of pyproject.toml.
MARKER_ENV = {
    "python_version": "3.11",
    "python_full_version": "3.11.2",
    "implementation_name": "cpython",
    "platform_python_implementation": "CPython",
    "sys_platform": "linux",
    "platform_system": "Linux",
    "platform_machine": "x86_64",
    "os_name": "posix",
}
HEADER_MARK = "# resolved with: "
_UV_KEPT = {
    "UV_CACHE_DIR",
    "UV_DEFAULT_INDEX",
    "UV_INDEX_URL",
    "UV_NATIVE_TLS",
    "UV_HTTP_TIMEOUT",
    "UV_CONCURRENT_DOWNLOADS",
}


@dataclass(frozen=True)
class Lock:
    name: str
    extras: tuple[str, ...] = ()
    build_system: bool = False  # resolve [build-system].requires instead of [project]

    def path(self, lock_dir: Path = LOCK_DIR) -> Path:
        return lock_dir / f"{self.name}.txt"

    def purpose(self) -> str:
        if self.build_system:
            return "the [build-system] requirements (to build edgefleet's wheel in the image)"
        if self.extras:
            return "edgefleet's runtime dependencies + [" + ",".join(self.extras) + "]"
        return "edgefleet's runtime dependencies only"


LOCKS = (
    Lock("dispatcher"),
    # For pipelines on Temporal (its SDK is ~60 MB: only the images that run them carry it).
    Lock("dispatcher-temporal", extras=("temporal",)),
    Lock("agent", extras=("examples",)),
    Lock("build", build_system=True),
)


def uv() -> str:
    found = shutil.which("uv", path=os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")]))
    if not found:
        raise SystemExit("uv is needed to make or check the locks: pip install uv (it is in the [test] extra)")
    return found


def _sources(lock: Lock, pyproject: Path, work: Path) -> list[str]:
    """uv's input for this lock: the pyproject itself, or a requirements file of the
    build-system requirements."""
    if not lock.build_system:
        args = [str(pyproject)]
        for extra in lock.extras:
            args += ["--extra", extra]
        return args
    requires = tomllib.loads(pyproject.read_text())["build-system"]["requires"]
    source = work / "build-system.in"
    source.write_text("".join(f"{r}\n" for r in requires))
    return [str(source)]


def resolve(lock: Lock, pyproject: Path, output: Path, exclude_newer: str, *, upgrade: bool = False) -> None:
    """Run uv pip compile; ``output`` may already hold a lock, whose pins uv keeps when
    they still fit."""
    with tempfile.TemporaryDirectory() as tmp:
        args = [
            uv(),
            "pip",
            "compile",
            *_sources(lock, pyproject, Path(tmp)),
            "--python-version",
            PYTHON_VERSION,
            "--python-platform",
            PYTHON_PLATFORM,
            "--only-binary",
            ":all:",
            "--generate-hashes",
            "--no-header",
            "--exclude-newer",
            exclude_newer,
            "--quiet",
            "-o",
            str(output),
        ]
        if upgrade:
            args.append("--upgrade")
        # The lock depends on this file only: no uv.toml and no UV_* setting that changes the
        # resolution; where the index is reached from (a PyPI mirror, TLS, cache) may vary.
        env = {k: v for k, v in os.environ.items() if not k.startswith("UV_") or k in _UV_KEPT}
        env["UV_NO_CONFIG"] = "1"
        done = subprocess.run(
            args, capture_output=True, text=True, env=env, cwd=pyproject.parent, timeout=300, check=False
        )
    if done.returncode != 0:
        raise LockError(f"uv could not resolve {lock.name} ({lock.purpose()}):\n{done.stderr.strip()}")
    body = output.read_text()
    header = (
        f"# Lock of the {lock.name} image: {lock.purpose()}.\n"
        f"# CPython {PYTHON_VERSION}, {PYTHON_PLATFORM}, wheels only, every file hashed.\n"
        f"# Made by `python compose/locks.py` (uv, from pyproject.toml); do not edit by hand.\n"
        f"{HEADER_MARK}--exclude-newer {exclude_newer}\n"
    )
    output.write_text(header + body)


class LockError(Exception):
    pass


def exclude_newer_of(text: str) -> str:
    found = re.search(rf"^{re.escape(HEADER_MARK)}--exclude-newer (\S+)$", text, re.MULTILINE)
    if not found:
        raise LockError(f"no '{HEADER_MARK}--exclude-newer ...' line: the lock was not made by compose/locks.py")
    return found.group(1)


def pins(text: str) -> dict[str, str]:
    """name -> version of every ``name==version`` line (names normalised)."""
    out: dict[str, str] = {}
    for line in text.splitlines():
        found = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?==([^\s;\\]+)", line)
        if found:
            out[re.sub(r"[-_.]+", "-", found.group(1)).lower()] = found.group(2)
    return out


def hashes(text: str) -> dict[str, set[str]]:
    out: dict[str, set[str]] = {}
    current = None
    for line in text.splitlines():
        found = re.match(r"^([A-Za-z0-9][A-Za-z0-9._-]*)==", line)
        if found:
            current = re.sub(r"[-_.]+", "-", found.group(1)).lower()
            out[current] = set()
        if current:
            out[current] |= set(re.findall(r"--hash=(sha256:[0-9a-f]+)", line))
    return out


def direct_problems(lock: Lock, pyproject: Path, text: str) -> list[str]:
    """Offline: every requirement pyproject.toml states for this image is pinned, at a
    version inside its bounds."""
    from packaging.requirements import Requirement

    data = tomllib.loads(pyproject.read_text())
    wanted: list[tuple[str, str | None]]
    if lock.build_system:
        wanted = [(r, None) for r in data["build-system"]["requires"]]
    else:
        project = data["project"]
        wanted = [(r, None) for r in project.get("dependencies", [])]
        optional = project.get("optional-dependencies", {})
        for extra in lock.extras:
            if extra not in optional:
                return [f"pyproject.toml has no [{extra}] extra, which the {lock.name} lock is made with"]
            wanted += [(r, extra) for r in optional[extra]]
    locked = pins(text)
    problems = []
    for raw, wanted_in in wanted:
        req = Requirement(raw)
        if req.marker and not req.marker.evaluate({**MARKER_ENV, "extra": wanted_in or ""}):
            continue
        name = re.sub(r"[-_.]+", "-", req.name).lower()
        if name == "edgefleet":  # an extra that pulls in another extra of the project itself
            continue
        if name not in locked:
            problems.append(f"{req.name} (pyproject.toml: {raw!r}) is not in the lock")
        elif req.specifier and not req.specifier.contains(locked[name], prereleases=True):
            problems.append(f"{req.name}=={locked[name]} in the lock is outside pyproject.toml's {raw!r}")
    return problems


def check(lock: Lock, pyproject: Path = ROOT / "pyproject.toml", lock_dir: Path = LOCK_DIR) -> list[str]:
    """Everything wrong with one lock (empty when it matches pyproject.toml exactly)."""
    path = lock.path(lock_dir)
    if not path.exists():
        return [f"{path} is missing: run python compose/locks.py"]
    text = path.read_text()
    try:
        exclude_newer = exclude_newer_of(text)
    except LockError as exc:
        return [str(exc)]
    problems = direct_problems(lock, pyproject, text)
    # Re-resolve as the lock was made (same cut-off date, its pins as preferences): a lock
    # that still satisfies pyproject.toml comes back identical. The preferences carry no
    # hashes, so uv reads them from the index again instead of reusing the lock's.
    with tempfile.TemporaryDirectory() as tmp:
        again = Path(tmp) / path.name
        again.write_text("".join(f"{name}=={version}\n" for name, version in pins(text).items()))
        try:
            resolve(lock, pyproject, again, exclude_newer)
        except LockError as exc:
            return [*problems, str(exc)]
        fresh = again.read_text()
    old, new = pins(text), pins(fresh)
    for name in sorted(old.keys() | new.keys()):
        if name not in new:
            problems.append(f"{name}=={old[name]} is locked but nothing requires it any more")
        elif name not in old:
            problems.append(f"{name}=={new[name]} is required but not locked")
        elif old[name] != new[name]:
            problems.append(f"{name}=={old[name]} no longer fits: the requirements now resolve to {name}=={new[name]}")
    old_hashes, new_hashes = hashes(text), hashes(fresh)
    for name in sorted(old.keys() & new.keys()):
        if old[name] == new[name] and old_hashes.get(name) != new_hashes.get(name):
            problems.append(f"{name}=={old[name]}: the hashes differ from the files on the index")
    return problems


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--check", action="store_true", help="exit 1 if a lock no longer matches pyproject.toml")
    parser.add_argument("--upgrade", action="store_true", help="take the newest allowed versions, not the locked ones")
    parser.add_argument("names", nargs="*", help="only these locks (dispatcher, agent, build)")
    args = parser.parse_args(argv)
    chosen = [lock for lock in LOCKS if not args.names or lock.name in args.names]
    if args.check:
        failed = False
        for lock in chosen:
            problems = check(lock)
            for problem in problems:
                print(f"{lock.path().relative_to(ROOT)}: {problem}")
            failed |= bool(problems)
        if failed:
            print("the locks do not match pyproject.toml: run python compose/locks.py", file=sys.stderr)
        return 1 if failed else 0
    LOCK_DIR.mkdir(parents=True, exist_ok=True)
    now = dt.datetime.now(dt.UTC).replace(microsecond=0).isoformat().replace("+00:00", "Z")
    for lock in chosen:
        resolve(lock, ROOT / "pyproject.toml", lock.path(), now, upgrade=args.upgrade)
        print(f"{lock.path().relative_to(ROOT)}: {len(pins(lock.path().read_text()))} pins")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
