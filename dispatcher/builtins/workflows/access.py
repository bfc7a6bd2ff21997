"""Who may see, decide and cancel a pipeline run (the auth rules of runs).

- **see** (list, get, watch): the identity that started the run, an admin, or anyone who
  may decide one of its approval steps (they must see what they approve);
- **decide** an approval step: an admin, an identity with the scope ``approve:<pipeline>``
  (or ``approve:*``), or one whose name matches a glob of the step's ``approvers``;
- **cancel**: the identity that started the run, or an admin (as for tasks).

To anyone else a run does not exist (``run_not_found``, as for tasks: ids are not probeable).
"""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from edgefleet.dispatcher.security.auth import Identity

APPROVE_SCOPE = "approve:"


def may_decide(identity: Identity, pipeline: str, approvers: Sequence[str]) -> bool:
    if identity.admin or f"{APPROVE_SCOPE}{pipeline}" in identity.scopes or f"{APPROVE_SCOPE}*" in identity.scopes:
        return True
    return any(fnmatch.fnmatchcase(identity.name, pattern) for pattern in approvers)


def may_see(identity: Identity, memo: Mapping[str, Any]) -> bool:
    if identity.admin or memo.get("owner") == identity.name:
        return True
    approvers = memo.get("approvers")
    pipeline = str(memo.get("pipeline", ""))
    return isinstance(approvers, dict) and any(
        may_decide(identity, pipeline, globs) for globs in approvers.values() if isinstance(globs, list)
    )


def may_cancel(identity: Identity, memo: Mapping[str, Any]) -> bool:
    return identity.admin or memo.get("owner") == identity.name
