"""The ``edgefleet`` command: thin layers over the same code the services run."""

from edgefleet.dispatcher.cli.main import main

__all__ = ["main"]
