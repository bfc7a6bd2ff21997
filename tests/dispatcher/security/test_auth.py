"""API key files, JWT verification rules and identities, without a server."""

from __future__ import annotations

import time
from pathlib import Path

import jwt
import pytest
import yaml

from edgefleet.dispatcher.cli.main import main
from edgefleet.dispatcher.security.auth import ANONYMOUS, Authenticator, JwtVerifier, hash_key, load_api_keys
from edgefleet.shared.errors import ConfigError, Unauthorized

SECRET = "s" * 40


def test_keys_create_stores_only_the_hash(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "keys.yaml"
    assert main(["keys", "create", "alice", "--file", str(path), "--tools", "text.*", "--regions", "eu-west"]) == 0
    key = capsys.readouterr().out.strip()
    assert key.startswith("ef_") and key not in path.read_text()
    identities = load_api_keys(path)
    alice = identities[hash_key(key)]
    assert alice.name == "alice" and alice.may_call("text.keywords") and not alice.may_call("data.query")
    assert alice.regions == ("eu-west",) and not alice.admin
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_a_bad_keys_file_is_a_config_error(tmp_path: Path) -> None:
    path = tmp_path / "keys.yaml"
    path.write_text(yaml.safe_dump({"keys": [{"identity": "a", "sha256": "not-hex"}]}))
    with pytest.raises(ConfigError, match="keys.yaml"):
        load_api_keys(path)


def test_jwt_scopes_become_tool_and_region_limits() -> None:
    auth = Authenticator(
        api_keys=None, jwt_verifier=JwtVerifier(secret=SECRET, jwks=None, issuer=None, audience=None, leeway_s=0)
    )
    token = jwt.encode(
        {"sub": "bob", "exp": int(time.time()) + 600, "scope": "tool:data.* region:us-east admin"}, SECRET
    )
    bob = auth.authenticate(f"Bearer {token}")
    assert bob.name == "bob" and bob.method == "jwt" and bob.admin
    assert bob.may_call("data.query") and not bob.may_call("text.keywords") and bob.regions == ("us-east",)
    assert auth.authenticate(f"Bearer {token}") is bob  # verified once, then cached


def test_a_token_without_expiry_is_refused() -> None:
    auth = Authenticator(
        api_keys=None, jwt_verifier=JwtVerifier(secret=SECRET, jwks=None, issuer=None, audience=None, leeway_s=0)
    )
    with pytest.raises(Unauthorized, match="'exp'"):
        auth.authenticate("Bearer " + jwt.encode({"sub": "bob"}, SECRET))


def test_auth_off_is_anonymous_and_jwt_needs_a_key_source() -> None:
    assert Authenticator(api_keys=None, jwt_verifier=None).authenticate(None) is ANONYMOUS
    with pytest.raises(ConfigError):
        JwtVerifier(secret=None, jwks=None, issuer=None, audience=None, leeway_s=0)
