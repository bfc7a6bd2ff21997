"""Hatchling build hook: editable installs that IDEs and type checkers can follow.

The repository keeps the design card's top-level folders (``dispatcher/ agents/ bus/
shared/``) and installs them under ONE import name, ``edgefleet`` (``edgefleet.dispatcher``,
``edgefleet.agents``, ...): generic top-level names such as ``agents`` clash with other
SDKs in the same environment. Wheels get that mapping from ``sources`` in pyproject.toml.

An editable install cannot point ``sys.path`` at the repository root (its folders are
not named ``edgefleet``), and an import hook would hide the code from mypy and IDEs. So
the editable wheel puts ``build/editable`` on ``sys.path`` (``dev-mode-dirs``) and this
hook makes ``build/editable/edgefleet/<folder>`` a symlink to each folder: new modules
show up without reinstalling, and every tool sees plain files.
"""

from __future__ import annotations

import os
from typing import Any

from hatchling.builders.hooks.plugin.interface import BuildHookInterface

PACKAGES = ("dispatcher", "agents", "bus", "shared")


class EditableTree(BuildHookInterface):
    def initialize(self, version: str, build_data: dict[str, Any]) -> None:
        if version != "editable":
            return
        namespace = os.path.join(self.root, "build", "editable", "edgefleet")
        os.makedirs(namespace, exist_ok=True)
        for name in PACKAGES:
            link = os.path.join(namespace, name)
            target = os.path.join("..", "..", "..", name)
            if os.path.islink(link) and os.readlink(link) == target:
                continue
            if os.path.lexists(link):
                os.remove(link)
            os.symlink(target, link)
