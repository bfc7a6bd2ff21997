"""Who is calling: API keys and JWT bearer tokens on ``/mcp``, as an OAuth 2.1 resource server.

- **API keys** (``EDGEFLEET_API_KEYS_FILE``): a YAML file of entries, each with an identity,
  the SHA-256 of its key (never the key: keys are 256-bit random strings, so a fast hash is
  as safe as a slow one and costs nothing per call), scopes, a tool allowlist of globs over
  catalog names (``text.*``) and optional regions. ``edgefleet keys create`` makes one.
- **JWT** (``EDGEFLEET_JWT_SECRET`` for HS256, or ``EDGEFLEET_JWT_JWKS`` = a JWKS file or URL
  for RS256/ES256): signature, ``exp``/``nbf``, issuer and audience are checked (PyJWT);
  identity from ``sub``, scopes from ``scope`` (space-separated) or ``scp``; a scope
  ``tool:<glob>`` narrows the tools, ``region:<name>`` the regions.
- ``EDGEFLEET_AUTH=none`` turns all of it off: meant for ``edgefleet dev`` and tests, and
  logged as a warning at start-up.

A request without credentials, or with bad ones, gets HTTP 401 with
``WWW-Authenticate: Bearer resource_metadata="<.../.well-known/oauth-protected-resource>"``
(RFC 9728), which is how MCP clients discover the authorization server.
"""

from __future__ import annotations

import fnmatch
import hashlib
import logging
import secrets
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import jwt
import yaml
from cachetools import TTLCache
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from edgefleet.shared.errors import ConfigError, Unauthorized
from edgefleet.shared.settings import DispatcherSettings

log = logging.getLogger("edgefleet.auth")

KEY_PREFIX = "ef_"
ADMIN_SCOPE = "admin"


@dataclass(frozen=True)
class Identity:
    """An authenticated caller. ``tools``/``regions`` empty = no restriction."""

    name: str
    scopes: frozenset[str] = frozenset()
    tools: tuple[str, ...] = ()
    regions: tuple[str, ...] = ()
    method: str = "none"  # api-key | jwt | none
    _allowed: dict[str, bool] = field(default_factory=dict, compare=False, repr=False)

    @property
    def admin(self) -> bool:
        return ADMIN_SCOPE in self.scopes

    def may_call(self, tool: str) -> bool:
        if not self.tools:
            return True
        found = self._allowed.get(tool)
        if found is None:
            found = any(fnmatch.fnmatchcase(tool, pattern) for pattern in self.tools)
            if len(self._allowed) < 4096:
                self._allowed[tool] = found
        return found

    def may_use(self, agent: str) -> bool:
        """May this identity use the agent's prompts, resources and completions? When it may
        call some tool in the agent's namespace (a pattern whose agent part matches)."""
        return not self.tools or any(fnmatch.fnmatchcase(agent, p.split(".", 1)[0]) for p in self.tools)


ANONYMOUS = Identity("anonymous", frozenset({ADMIN_SCOPE}), method="none")
# The dispatcher's own start-up exercise of /mcp, passed in the ASGI scope (in-process only).
WARM_UP_IDENTITY = Identity("edgefleet-warm-up", method="internal")
SCOPE_IDENTITY = "edgefleet.identity"


class ApiKeyEntry(BaseModel):
    model_config = ConfigDict(extra="forbid")

    identity: str = Field(min_length=1, max_length=200)
    sha256: str = Field(pattern=r"^[0-9a-f]{64}$", description="hex SHA-256 of the key")
    scopes: list[str] = Field(default_factory=list)
    tools: list[str] = Field(default_factory=list, description="globs over catalog names; empty = all")
    regions: list[str] = Field(default_factory=list, description="regions the key may be served in; empty = all")


class ApiKeysFile(BaseModel):
    model_config = ConfigDict(extra="forbid")

    keys: list[ApiKeyEntry] = Field(default_factory=list)


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def new_key() -> str:
    return KEY_PREFIX + secrets.token_urlsafe(32)


def load_api_keys(path: Path) -> dict[str, Identity]:
    try:
        raw = yaml.safe_load(path.read_text()) or {}
        parsed = ApiKeysFile.model_validate(raw)
    except (OSError, yaml.YAMLError, ValidationError) as exc:
        raise ConfigError(f"EDGEFLEET_API_KEYS_FILE {path}: {exc}") from None
    out: dict[str, Identity] = {}
    for entry in parsed.keys:
        if entry.sha256 in out:
            raise ConfigError(f"EDGEFLEET_API_KEYS_FILE {path}: two entries share one key hash ({entry.identity})")
        out[entry.sha256] = Identity(
            entry.identity, frozenset(entry.scopes), tuple(entry.tools), tuple(entry.regions), "api-key"
        )
    return out


class JwtVerifier:
    def __init__(
        self, *, secret: str | None, jwks: str | None, issuer: str | None, audience: str | None, leeway_s: float
    ) -> None:
        if not secret and not jwks:
            raise ConfigError(
                "JWT verification needs EDGEFLEET_JWT_SECRET (HS256) or EDGEFLEET_JWT_JWKS (file or URL)."
            )
        self.secret = secret
        self.issuer = issuer
        self.audience = audience
        self.leeway_s = leeway_s
        self.jwks_client: jwt.PyJWKClient | None = None
        self.jwks_keys: jwt.PyJWKSet | None = None
        if jwks and jwks.startswith(("https://", "http://")):
            # Fetched on first use and cached; unknown kids trigger one refetch (key rotation).
            self.jwks_client = jwt.PyJWKClient(jwks, cache_keys=True, lifespan=300, timeout=5)
        elif jwks:
            try:
                self.jwks_keys = jwt.PyJWKSet.from_json(Path(jwks).read_text())
            except (OSError, jwt.PyJWKSetError, ValueError) as exc:
                raise ConfigError(f"EDGEFLEET_JWT_JWKS {jwks}: {exc}") from None

    def _key(self, token: str) -> tuple[Any, list[str]]:
        if self.secret is not None and jwt.get_unverified_header(token).get("alg", "").startswith("HS"):
            return self.secret, ["HS256", "HS384", "HS512"]
        asymmetric = ["RS256", "RS384", "RS512", "ES256", "ES384", "ES512", "PS256", "EdDSA"]
        if self.jwks_client is not None:
            return self.jwks_client.get_signing_key_from_jwt(token).key, asymmetric
        if self.jwks_keys is not None:
            kid = jwt.get_unverified_header(token).get("kid")
            for key in self.jwks_keys.keys:
                if kid is None or key.key_id == kid:
                    return key.key, asymmetric
            raise jwt.InvalidTokenError(f"no key with kid {kid!r} in the JWKS")
        raise jwt.InvalidTokenError("token algorithm not accepted")

    def verify(self, token: str) -> tuple[Identity, float]:
        """The token's identity and expiry (epoch seconds), or a jwt exception."""
        key, algorithms = self._key(token)
        options: jwt.types.Options = {
            "require": ["exp", "sub"],
            "verify_aud": self.audience is not None,
            "verify_iss": self.issuer is not None,
        }
        claims = jwt.decode(
            token,
            key,
            algorithms=algorithms,
            audience=self.audience,
            issuer=self.issuer,
            leeway=self.leeway_s,
            options=options,
        )
        raw = claims.get("scope", claims.get("scp", ""))
        scopes = frozenset(raw.split() if isinstance(raw, str) else [str(s) for s in raw or ()])
        tools = tuple(s[5:] for s in scopes if s.startswith("tool:"))
        regions = tuple(s[7:] for s in scopes if s.startswith("region:"))
        return Identity(str(claims["sub"]), scopes, tools, regions, "jwt"), float(claims["exp"])


def bearer(authorization: str | None) -> str | None:
    """The credential of an ``Authorization: Bearer <credential>`` header (the one parser of
    it: clients on /mcp and /v1, agents and operators on the registry), or None."""
    scheme, _, credential = (authorization or "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return credential.strip() or None


def challenge(metadata_url: str, error: str | None = None) -> str:
    """The WWW-Authenticate value of a 401 (RFC 6750 + RFC 9728 resource_metadata)."""
    return f'Bearer resource_metadata="{metadata_url}"' + (f', error="{error}"' if error else "")


def resource_urls(settings: DispatcherSettings, scope: Mapping[str, Any], headers: dict[str, str]) -> tuple[str, str]:
    """(the /mcp resource URL, its metadata URL): from EDGEFLEET_PUBLIC_URL when set (behind
    proxies), else from this request's scheme and Host."""
    base = (settings.public_url or f"{scope.get('scheme', 'http')}://{headers.get('host', 'localhost')}").rstrip("/")
    if base.endswith("/mcp"):
        base = base[:-4]
    return base + "/mcp", base + "/.well-known/oauth-protected-resource/mcp"


def protected_resource_metadata(resource: str, authorization_servers: list[str]) -> dict[str, Any]:
    """RFC 9728 metadata for ``resource`` (the /mcp URL)."""
    return {
        "resource": resource,
        "authorization_servers": authorization_servers,
        "bearer_methods_supported": ["header"],
        "scopes_supported": [ADMIN_SCOPE, "tool:<glob>", "region:<name>"],
        "resource_name": "edgefleet MCP dispatcher",
    }


class Authenticator:
    """Turns an ``Authorization`` header into an Identity, or raises Unauthorized."""

    def __init__(self, *, api_keys: dict[str, Identity] | None, jwt_verifier: JwtVerifier | None) -> None:
        self.api_keys = api_keys or {}
        self.jwt = jwt_verifier
        self.enabled = bool(self.api_keys) or self.jwt is not None
        # Verified tokens, until they expire (at most a minute): a JWT is checked once, not per call.
        self._verified: TTLCache[str, Identity] = TTLCache(maxsize=10_000, ttl=60)

    @classmethod
    def from_settings(cls, settings: DispatcherSettings) -> Authenticator:
        if settings.auth == "none":
            return cls(api_keys=None, jwt_verifier=None)
        keys = load_api_keys(settings.api_keys_file) if settings.api_keys_file else None
        verifier = None
        if settings.jwt_secret is not None or settings.jwt_jwks:
            verifier = JwtVerifier(
                secret=settings.jwt_secret.get_secret_value() if settings.jwt_secret is not None else None,
                jwks=settings.jwt_jwks,
                issuer=settings.jwt_issuer,
                audience=settings.jwt_audience,
                leeway_s=settings.jwt_leeway_s,
            )
        if not keys and verifier is None:
            raise ConfigError(
                "No client credentials are configured: set EDGEFLEET_API_KEYS_FILE and/or EDGEFLEET_JWT_SECRET / "
                "EDGEFLEET_JWT_JWKS, or EDGEFLEET_AUTH=none for local development (anyone can then call every tool)."
            )
        return cls(api_keys=keys, jwt_verifier=verifier)

    def authenticate(self, authorization: str | None) -> Identity:
        if not self.enabled:
            return ANONYMOUS
        credential = bearer(authorization)
        if credential is None:
            raise Unauthorized("Authentication required: send Authorization: Bearer <API key or token>.")
        if credential.startswith(KEY_PREFIX):
            found = self._api_key(credential)
            if found is not None:
                return found
            raise Unauthorized("Unknown API key.", data={"auth_error": "invalid_token"})
        if self.jwt is None:
            raise Unauthorized(
                "Bearer tokens are not accepted here; use an API key.", data={"auth_error": "invalid_token"}
            )
        cached = self._verified.get(credential)
        if cached is not None:
            return cached
        try:
            identity, expires = self.jwt.verify(credential)
        except jwt.ExpiredSignatureError:
            reason = "The token has expired."
        except jwt.InvalidAudienceError:
            reason = "The token is not meant for this server (audience)."
        except jwt.InvalidIssuerError:
            reason = "The token was issued by an issuer this server does not trust."
        except jwt.MissingRequiredClaimError as exc:
            reason = f"The token lacks the {exc.claim!r} claim."
        except jwt.PyJWKClientError as exc:
            log.warning("JWKS unavailable: %s", exc)
            reason = "The token's signing key could not be fetched."
        except jwt.InvalidTokenError:
            reason = "The token is invalid (signature or format)."
        else:
            if expires - time.time() > 60:  # cache only what stays valid for the cache's lifetime
                self._verified[credential] = identity
            return identity
        raise Unauthorized(reason, data={"auth_error": "invalid_token"})

    def _api_key(self, key: str) -> Identity | None:
        # Looked up by digest: timing reveals nothing an attacker could steer without a
        # SHA-256 preimage, so no constant-time comparison is needed here.
        return self.api_keys.get(hash_key(key))
