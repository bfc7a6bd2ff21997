"""Registry credentials without a server: fleet token, per-agent keys bound to a name, operators."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from edgefleet.dispatcher.cli.main import main
from edgefleet.dispatcher.security.agent_auth import AgentAuthenticator, load_agent_keys
from edgefleet.dispatcher.security.auth import Authenticator, Identity, hash_key, new_key
from edgefleet.shared.errors import ConfigError, Forbidden, NamespaceForbidden, Unauthorized

FLEET = "fleet-secret"


def _auth(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> tuple[AgentAuthenticator, str, str]:
    """Keys for 'text' (any region) and 'data' (us-east only), made with the CLI."""
    path = tmp_path / "agents.yaml"
    assert main(["keys", "create", "text", "--agent", "--file", str(path)]) == 0
    text_key = capsys.readouterr().out.strip()
    assert main(["keys", "create", "data", "--agent", "--file", str(path), "--regions", "us-east"]) == 0
    data_key = capsys.readouterr().out.strip()
    assert (
        text_key.startswith("efa_") and text_key not in path.read_text() and oct(path.stat().st_mode & 0o777) == "0o600"
    )
    return AgentAuthenticator(FLEET, load_agent_keys(path)), text_key, data_key


def _identity(name: str, *, admin: bool = False) -> Identity:
    return Identity(name, frozenset({"admin"}) if admin else frozenset(), method="api-key")


def test_an_agent_key_registers_only_its_own_name_and_regions(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auth, text_key, data_key = _auth(tmp_path, capsys)
    text = auth.authenticate(f"Bearer {text_key}")
    assert (text.kind, text.agent) == ("agent-key", "text") and not text.operator
    auth.check_register(text, "text", "eu-west")
    with pytest.raises(NamespaceForbidden, match="cannot register 'echo'"):
        auth.check_register(text, "echo", "eu-west")
    data = auth.authenticate(f"Bearer {data_key}")
    auth.check_register(data, "data", "us-east")
    with pytest.raises(NamespaceForbidden, match="only in us-east"):
        auth.check_register(data, "data", "eu-west")
    auth.check_replica(text, "text")
    with pytest.raises(NamespaceForbidden):
        auth.check_replica(text, "data")
    with pytest.raises(Forbidden):
        auth.check_operator(text)


def test_the_fleet_token_cannot_take_a_name_that_has_a_key(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    auth, _, _ = _auth(tmp_path, capsys)
    fleet = auth.authenticate(f"Bearer {FLEET}")
    assert fleet.operator
    auth.check_register(fleet, "echo", "eu-west")  # no key of its own: the fleet token may
    with pytest.raises(NamespaceForbidden, match="has its own key"):
        auth.check_register(fleet, "text", "eu-west")
    with pytest.raises(NamespaceForbidden):
        auth.check_replica(fleet, "text")  # no heartbeats for it either
    auth.check_replica(fleet, "text", operator_ok=True)  # but an operator may remove its replicas


def test_unknown_keys_wrong_tokens_and_non_admins_are_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    auth, _, _ = _auth(tmp_path, capsys)
    for header, error in [
        (None, Unauthorized),
        ("Basic x", Unauthorized),
        ("Bearer efa_unknown", Unauthorized),
        ("Bearer wrong-fleet-token", Unauthorized),
        (f"Bearer {FLEET}x", Unauthorized),
    ]:
        with pytest.raises(error):
            auth.authenticate(header)


def test_an_admin_client_credential_is_an_operator(tmp_path: Path) -> None:
    root, bob = new_key(), new_key()
    clients = Authenticator(
        api_keys={hash_key(root): _identity("root", admin=True), hash_key(bob): _identity("bob")}, jwt_verifier=None
    )
    auth = AgentAuthenticator(FLEET, {}, clients)
    admin = auth.authenticate(f"Bearer {root}")
    assert admin.kind == "admin" and admin.name == "root" and admin.operator
    with pytest.raises(Forbidden, match="no admin scope"):
        auth.authenticate(f"Bearer {bob}")


def test_a_bad_agent_keys_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "agents.yaml"
    path.write_text(yaml.safe_dump({"agents": [{"agent": "Not A Name", "sha256": "0" * 64}]}))
    with pytest.raises(ConfigError, match="agents.yaml"):
        load_agent_keys(path)
    assert main(["keys", "create", "Bad Name", "--agent", "--file", str(tmp_path / "other.yaml")]) == 2
