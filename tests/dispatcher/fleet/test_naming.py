import pytest

from edgefleet.dispatcher.fleet.naming import namespace_tools, public_name, split_public_name
from edgefleet.shared.constants import TOOL_NAME_RE
from edgefleet.shared.errors import ToolConflict


@pytest.mark.parametrize(
    ("agent", "upstream", "expected"),
    [
        ("text", "keywords", "text.keywords"),
        ("text", "a.b", "text.a.b"),
        ("w", "get weather", "w.get_weather"),
        ("w", "café/x", "w.caf__x"),
    ],
)
def test_public_names_are_valid_mcp_names(agent: str, upstream: str, expected: str) -> None:
    assert public_name(agent, upstream) == expected
    assert TOOL_NAME_RE.match(expected)


def test_long_names_are_shortened_deterministically_and_stay_distinct() -> None:
    a, b = "x" * 200, "x" * 199 + "y"
    pa, pb = public_name("agent", a), public_name("agent", b)
    assert len(pa) == len(pb) == 128 and pa != pb and pa == public_name("agent", a)
    assert TOOL_NAME_RE.match(pa)


def test_split_takes_the_first_dot() -> None:
    assert split_public_name("text.a.b") == ("text", "a.b")
    assert split_public_name("plain") is None


def test_collisions_are_reported_not_dropped() -> None:
    with pytest.raises(ToolConflict) as info:
        namespace_tools("w", ["get weather", "get_weather"])
    assert "get weather" in info.value.message and "get_weather" in info.value.message
    assert info.value.http_status == 409
