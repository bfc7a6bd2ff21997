"""The field's habits, run by the same command as the tests (and so by CI): ruff (lint
and format), mypy --strict over the packages, and the layer contracts (import-linter)."""

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
