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


def test_resource_uris_are_namespaced_with_the_agent_in_front_of_the_scheme() -> None:
    from edgefleet.dispatcher.fleet.naming import public_uri, split_public_uri

    assert public_uri("everything", "test://static-text") == "everything+test://static-text"
    assert public_uri("files", "file:///tmp/a.txt") == "files+file:///tmp/a.txt"
    assert public_uri("app", "ui://dashboard/index.html") == "ui://app+dashboard/index.html"
    assert public_uri("x", "no-scheme/path") is None
    for agent, uri in [("everything", "test://template/{id}/data"), ("files", "file:///a"), ("app", "ui://d/i")]:
        public = public_uri(agent, uri)
        assert public is not None and split_public_uri(public) == (agent, uri)
    # URIs whose scheme merely contains '+' stay whole when no agent prefix fits.
    assert split_public_uri("svn+ssh://host/repo") == ("svn", "ssh://host/repo")  # resolved only if agent 'svn' exists
    assert split_public_uri("Svn+ssh://host") is None and split_public_uri("test://x") is None


def test_federation_namespaces_prompts_and_resources_and_never_drops_silently() -> None:
    from edgefleet.dispatcher.fleet.federation import Federation
    from edgefleet.dispatcher.fleet.surface import Surface

    docs = Surface(
        capabilities={"prompts": {}, "resources": {}},
        prompts=[{"name": "summarise", "arguments": [{"name": "text"}]}],
        resources=[{"uri": "file:///readme", "name": "readme"}, {"uri": "no-scheme", "name": "bad"}],
        templates=[{"uriTemplate": "file:///docs/{name}", "name": "doc"}],
    )
    clash = Surface(capabilities={"prompts": {}}, prompts=[{"name": "a b"}, {"name": "a_b"}])
    federation = Federation.build({"docs": docs, "clash": clash})
    assert [p["name"] for p in federation.prompts] == [
        "docs.summarise"
    ]  # clash's colliding prompts are left out, logged
    assert federation.prompt_names["docs.summarise"] == ("docs", "summarise")
    assert [r["uri"] for r in federation.resources] == ["docs+file:///readme"]
    assert federation.templates[0]["uriTemplate"] == "docs+file:///docs/{name}"
    assert federation.raw_uris == {"file:///readme": ["docs"]}
    assert federation.capabilities == {"prompts", "resources"}
