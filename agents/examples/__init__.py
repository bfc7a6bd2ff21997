"""Example agents built with the SDK: ``text``, ``data``, ``trainer`` (needs the
``examples`` extra: numpy) and ``echo`` (benchmarks and tests). Run one with
``edgefleet agent NAME`` or ``python -m edgefleet.agents.examples.NAME``."""
