import pytest
from pydantic import ValidationError

from edgefleet.dispatcher.builtins.pipelines import PipelineSpec, lookup, render
from edgefleet.dispatcher.config_file import StaticConfig

CONTEXT = {
    "input": {"n": 3, "name": "x"},
    "steps": {"a": {"content": [{"type": "text", "text": "hello"}], "structuredContent": {"ids": [7, 8]}}},
}


def test_whole_placeholders_keep_their_type_and_inline_ones_interpolate() -> None:
    assert render({"n": "${input.n}", "s": "n=${input.n}", "id": "${steps.a.structuredContent.ids.1}"}, CONTEXT) == {
        "n": 3,
        "s": "n=3",
        "id": 8,
    }
    assert render(["${steps.a.text}", 5], CONTEXT) == ["hello", 5]
    assert lookup(CONTEXT, "steps.a.content.0.text") == "hello"


def test_missing_paths_say_which() -> None:
    with pytest.raises(KeyError) as missing:
        render({"x": "${steps.b.text}"}, CONTEXT)
    assert missing.value.args[0] == "steps.b.text"


def test_step_names_must_be_unique_and_pipelines_named_like_tools() -> None:
    with pytest.raises(ValidationError):
        PipelineSpec.model_validate(
            {"steps": [{"name": "a", "tool": "x.y"}, {"parallel": [{"name": "a", "tool": "x.z"}]}]}
        )
    with pytest.raises(ValidationError):
        StaticConfig.model_validate({"pipelines": {"bad name": {"steps": [{"name": "a", "tool": "x.y"}]}}})
    with pytest.raises(ValidationError):
        StaticConfig.model_validate({"pipelines": {"fanout": {"steps": [{"name": "a", "tool": "x.y"}]}}})
