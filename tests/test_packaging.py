"""What `pip install edgefleet` puts into an environment: one import name, `edgefleet`.

Generic top-level names (`agents`, `bus`, `shared`, `dispatcher`) would clash with other
packages in the same environment (the OpenAI Agents SDK imports as `agents`)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
FOLDERS = ("dispatcher", "agents", "bus", "shared")


def test_the_wheel_installs_one_top_level_name_holding_every_module(tmp_path: Path) -> None:
    built = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(ROOT),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert built.returncode == 0, built.stderr
    (wheel,) = tmp_path.glob("edgefleet-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert {n.split("/", 1)[0] for n in names} == {"edgefleet", wheel.name.split("-py")[0] + ".dist-info"}
    # Installed: exactly one importable top-level name, and every module of the four folders in it.
    target = tmp_path / "site"
    installed = subprocess.run(
        [sys.executable, "-m", "pip", "install", "--no-deps", "-q", "--target", str(target), str(wheel)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert installed.returncode == 0, installed.stderr
    assert sorted(p.name for p in target.iterdir() if not p.name.endswith(".dist-info") and p.name != "bin") == [
        "edgefleet"
    ]
    for folder in FOLDERS:
        for module in (ROOT / folder).rglob("*.py"):
            assert (target / "edgefleet" / module.relative_to(ROOT)).is_file(), module
    assert (target / "edgefleet" / "dispatcher" / "py.typed").is_file()


def test_the_editable_install_adds_no_generic_names(tmp_path: Path) -> None:
    # In a fresh interpreter outside the checkout (pytest itself puts the repository root on sys.path).
    probe = "import importlib.util as u, sys; print([n for n in sys.argv[1:] if u.find_spec(n)])"
    found = subprocess.run(
        [sys.executable, "-c", probe, "edgefleet.agents", *FOLDERS],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert found.stdout.strip() == "['edgefleet.agents']", found.stderr


def test_an_async_httpx_request_imports_nothing(tmp_path: Path) -> None:
    # httpcore 1.0 runs `import sniffio` on every lock, event and request of an async client:
    # absent, the failed import searched sys.path each time (~60 µs; encode/httpcore#1103).
    # Our dependencies include sniffio, so after the first request the imports are cached.
    probe = """
import asyncio, sys, httpx

class Searches:
    names = []
    def find_spec(self, name, path=None, target=None):
        self.names.append(name)

async def main():
    async def answer(reader, writer):
        while await reader.readuntil(b"\\r\\n\\r\\n"):
            writer.write(b"HTTP/1.1 200 OK\\r\\ncontent-length: 2\\r\\n\\r\\nok")
    server = await asyncio.start_server(answer, "127.0.0.1", 0)
    url = f"http://127.0.0.1:{server.sockets[0].getsockname()[1]}/"
    async with httpx.AsyncClient() as client:
        await client.get(url)
        sys.meta_path.insert(0, Searches())
        for _ in range(3):
            await client.get(url)
    print(sorted(set(Searches.names)))

asyncio.run(main())
"""
    searched = subprocess.run([sys.executable, "-c", probe], cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert searched.stdout.strip() == "[]", searched.stdout + searched.stderr
