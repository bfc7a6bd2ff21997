"""The field's habits, run by the same command as the tests (and so by CI): ruff (lint
and format), mypy --strict over the packages, the layer contracts (import-linter), and
small modules."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def run(*args: str, cwd: Path = ROOT) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=600)


def test_ruff_lint_and_format() -> None:
    lint = run(str(BIN / "ruff"), "check", ".")
    assert lint.returncode == 0, lint.stdout + lint.stderr
    formatted = run(str(BIN / "ruff"), "format", "--check", ".")
    assert formatted.returncode == 0, formatted.stdout + formatted.stderr


def test_mypy_strict_over_the_packages(tmp_path: Path) -> None:
    # Run outside the checkout, on the installed names: the folders are edgefleet.* only there.
    packages = [arg for name in ("shared", "bus", "agents", "dispatcher") for arg in ("-p", f"edgefleet.{name}")]
    checked = run(str(BIN / "mypy"), *packages, "--config-file", str(ROOT / "pyproject.toml"), cwd=tmp_path)
    assert checked.returncode == 0, checked.stdout + checked.stderr


def test_layers_only_point_down() -> None:
    contracts = run(str(BIN / "lint-imports"), "--no-cache")
    assert contracts.returncode == 0, contracts.stdout + contracts.stderr


# Data, not code: the example text agent's word lists.
NOT_CODE = {"agents/examples/_text_profiles.py"}
MAX_MODULE_LINES = 600


def test_no_module_is_over_600_lines() -> None:
    """One concept per module: past ~600 lines a module holds several (split it)."""
    long = {
        str(path.relative_to(ROOT)): n
        for folder in ("dispatcher", "agents", "bus", "shared")
        for path in (ROOT / folder).rglob("*.py")
        if str(path.relative_to(ROOT)) not in NOT_CODE
        and (n := len(path.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES
    }
    assert not long, f"modules over {MAX_MODULE_LINES} lines: {long}"
