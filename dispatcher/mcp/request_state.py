"""The dispatcher's own ``requestState``: sealed, bound to who asked and for what, short-lived.

Every ``input_required`` round a 2026-era client receives through the dispatcher carries a
state of ours (docs/design-mcp-surface.md, D6 and D9), whichever era the agent speaks:

- ``held``: a 2025-era agent asked the client something in the middle of a call; the call
  is held open on one dispatcher instance (``inst``) under ``held``, and the retry resumes it;
- ``wrap``: a 2026-era agent answered ``input_required``; its own state (``s``, byte-exact)
  and the replica that minted it (``rep``: servers on the Python SDK reject state another
  process minted) travel inside ours.

The spec makes ``requestState`` attacker-controlled input: it is encrypted and authenticated
with the MCP SDK's AES-256-GCM codec under the fleet's key ring (``keys[0]`` seals, every
key opens: rotation as the SDK documents), and it names the identity, the method, the
target and a digest of the arguments it was minted for, and an expiry. A state that fails
any check gets the SDK's own frozen answer, ``-32602 Invalid or expired requestState``; the
reason goes to the log only.
"""

from __future__ import annotations

import base64
import hashlib
import logging
import os
import time
from dataclasses import dataclass
from typing import Any, NoReturn

import orjson
from mcp.server.request_state import AESGCMRequestStateCodec
from mcp.server.request_state import InvalidRequestState as _Unsealable

from edgefleet.shared.errors import InvalidRequestState

log = logging.getLogger("edgefleet.rounds")
_VERSION = 1


def arguments_digest(target: str, arguments: Any) -> str:
    """What a state is bound to: the request's target and a digest of its arguments."""
    canonical = orjson.dumps(arguments if arguments is not None else {}, option=orjson.OPT_SORT_KEYS)
    digest = hashlib.sha256(target.encode() + b"\x00" + canonical).digest()[:16]
    return base64.urlsafe_b64encode(digest).decode().rstrip("=")


class RequestStates:
    def __init__(self, keys: list[str], *, ttl_s: float) -> None:
        # Without configured keys the ring is this process's own: rounds then resume only
        # on this dispatcher (app warns at start-up when it is one of several).
        self.shared = bool(keys)
        self.codec = AESGCMRequestStateCodec(keys if keys else [os.urandom(32)])
        self.ttl_s = ttl_s

    def seal(
        self,
        kind: str,
        *,
        identity: str,
        method: str,
        target: str,
        arguments: Any,
        ttl_s: float | None = None,
        **claims: Any,
    ) -> str:
        envelope = {
            "v": _VERSION,
            "k": kind,
            "sub": identity,
            "m": method,
            "d": arguments_digest(target, arguments),
            "exp": time.time() + (self.ttl_s if ttl_s is None else ttl_s),
            **claims,
        }
        return self.codec.seal(orjson.dumps(envelope))

    def open(self, token: Any, *, identity: str, method: str, target: str, arguments: Any) -> dict[str, Any]:
        """The claims of a state this fleet minted for exactly this request, or InvalidRequestState."""
        if not isinstance(token, str):
            self._reject(method, "not a string")
        try:
            claims = orjson.loads(self.codec.unseal(token))
        except (_Unsealable, orjson.JSONDecodeError) as exc:
            self._reject(method, f"unsealable: {exc}")
        if not isinstance(claims, dict) or claims.get("v") != _VERSION:
            self._reject(method, "unknown envelope")
        if not isinstance(claims.get("exp"), int | float) or claims["exp"] < time.time():
            self._reject(method, "expired")
        if claims.get("sub") != identity:
            self._reject(method, "minted for another identity")
        if claims.get("m") != method or claims.get("d") != arguments_digest(target, arguments):
            self._reject(method, "minted for another request")
        return claims

    @staticmethod
    def _reject(method: str, reason: str) -> NoReturn:
        log.warning("requestState rejected on %s: %s", method, reason)
        raise InvalidRequestState()


@dataclass(slots=True, frozen=True)
class RoundBinding:
    """One client request a round's state is minted for: who asked, and what."""

    states: RequestStates
    identity: str
    method: str
    target: str  # the tool or prompt as the client named it, or the resource URI
    arguments: Any

    def seal(self, kind: str, **claims: Any) -> str:
        return self.states.seal(
            kind, identity=self.identity, method=self.method, target=self.target, arguments=self.arguments, **claims
        )

    def open(self, token: Any) -> dict[str, Any]:
        return self.states.open(
            token, identity=self.identity, method=self.method, target=self.target, arguments=self.arguments
        )
