"""numpy for the example agents, or an error naming the extra that brings it."""

try:
    import numpy
except ModuleNotFoundError as exc:
    raise ModuleNotFoundError(
        "The example agents need numpy: pip install 'edgefleet[examples]' (from a checkout: pip install -e '.[examples]').",
        name="numpy",
    ) from exc

__all__ = ["numpy"]
