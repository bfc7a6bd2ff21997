"""The example agents: their pure functions, and their tools through the official MCP client in-process."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Callable, Iterator

import pytest
from mcp import Client
from mcp.types import LoggingMessageNotificationParams

from edgefleet.agents.examples.data import agent as data_agent
from edgefleet.agents.examples.data import correlate, describe, histogram
from edgefleet.agents.examples.text import agent as text_agent
from edgefleet.agents.examples.text import (
    detect_language,
    keywords,
    score_sentences,
    split_sentences,
    summarize,
    text_stats,
)
from edgefleet.agents.examples.trainer import MoonsTrainer, TrainConfig, fit, make_moons
from edgefleet.agents.examples.trainer import agent as trainer_agent

# A tiny network and dataset: a few milliseconds an epoch, for the tests that only need the mechanics.
SMALL = {"samples": 400, "hidden": 8, "batch_size": 32}

SOLAR = (
    "Solar power is cheap. My neighbour owns a red bicycle. Solar panels turn sunlight into power. "
    "Lunch was late today. Power from solar farms keeps growing."
)

# --- text: pure functions ---------------------------------------------------------------------------


def test_keywords_counts_content_words_most_frequent_first() -> None:
    result = keywords("The cat sat on the mat. The cat ate the fish. A dog saw the cat and the fish.", top=3)
    assert result == {
        "language": "en",
        # sat, mat, ate, dog and saw all occur once: the first to appear wins the tie.
        "keywords": [{"word": "cat", "count": 3}, {"word": "fish", "count": 2}, {"word": "sat", "count": 1}],
    }


def test_keywords_uses_the_stopwords_of_the_detected_language() -> None:
    result = keywords("Der Hund und die Katze. Der Hund schläft im Garten.", top=5)
    assert result["language"] == "de"
    assert result["keywords"] == [
        {"word": "hund", "count": 2},
        {"word": "katze", "count": 1},
        {"word": "schläft", "count": 1},
        {"word": "garten", "count": 1},
    ]


def test_sentences_are_scored_by_the_frequency_of_their_content_words() -> None:
    # solar and power occur 3 times (the peak), every other content word once.
    scores = score_sentences(split_sentences(SOLAR), "en")
    assert scores == pytest.approx([7 / 3, 4 / 3, 9 / 3, 3 / 3, 9 / 3])


def test_summary_keeps_the_best_sentences_in_their_original_order() -> None:
    two = summarize(SOLAR, sentences=2)
    assert [s["index"] for s in two["sentences"]] == [2, 4]
    assert two["summary"] == "Solar panels turn sunlight into power. Power from solar farms keeps growing."
    assert two["total_sentences"] == 5
    three = summarize(SOLAR, sentences=3)
    assert [s["index"] for s in three["sentences"]] == [0, 2, 4]
    assert summarize(SOLAR, sentences=10)["summary"] == SOLAR


LANGUAGE_SAMPLES = [
    ("en", "I would like a cup of tea with some milk, please."),
    ("en", "Where is the nearest station?"),
    ("de", "Ich möchte bitte eine Tasse Tee mit Milch."),
    ("de", "Sie wohnt seit zehn Jahren hier."),
    ("fr", "Je voudrais une tasse de thé avec du lait, s'il vous plaît."),
    ("fr", "Où est la gare la plus proche?"),
    ("es", "Quisiera una taza de té con leche, por favor."),
    ("es", "¿Dónde está la estación más cercana?"),
    ("it", "Vorrei una tazza di tè con un po' di latte, per favore."),
    ("it", "Dov'è la stazione più vicina?"),
    ("pt", "Eu queria uma xícara de chá com leite, por favor."),
    ("pt", "Ela mora aqui há dez anos."),
    ("nl", "Ik wil graag een kopje thee met melk."),
    ("nl", "Waar is het dichtstbijzijnde station?"),
]


@pytest.mark.parametrize(("language", "sample"), LANGUAGE_SAMPLES)
def test_detect_language_on_short_samples(language: str, sample: str) -> None:
    result = detect_language(sample)
    assert result["language"] == language
    assert 0.5 < result["confidence"] <= 1.0
    assert max(result["scores"], key=result["scores"].__getitem__) == language


def test_detect_language_needs_words() -> None:
    with pytest.raises(ValueError, match="no words"):
        detect_language("1234 !!! 56")


def test_stats_counts_and_reading_time() -> None:
    text = "Hello world. This is a test!\n\nSecond paragraph here."
    assert text_stats(text, words_per_minute=180) == {
        "characters": 52,
        "characters_no_spaces": 43,
        "words": 9,
        "sentences": 3,
        "paragraphs": 2,
        "average_word_length": round(40 / 9, 2),
        "average_sentence_length": 3.0,
        "reading_time_seconds": 3.0,  # 9 words at 180 a minute
    }


# --- data: pure functions ---------------------------------------------------------------------------

PEOPLE_CSV = "name,age,score\nann,30,1.5\nbob,40,2.5\ncid,,3.5\nann,50,NA\n"


def test_describe_csv() -> None:
    result = describe(PEOPLE_CSV)
    assert result["rows"] == 4
    assert result["numeric"]["age"] == {
        "count": 3,
        "missing": 1,
        "mean": 40.0,
        "std": 10.0,  # sample std: sqrt((100 + 0 + 100) / 2)
        "min": 30.0,
        "q25": 35.0,
        "median": 40.0,
        "q75": 45.0,
        "max": 50.0,
    }
    assert result["numeric"]["score"]["mean"] == pytest.approx(2.5)
    assert result["numeric"]["score"]["std"] == pytest.approx(1.0)
    assert result["text"] == {"name": {"count": 4, "missing": 0, "unique": 3, "top": "ann", "top_count": 2}}


def test_describe_json_records_and_numbers() -> None:
    records = describe('[{"x": 1, "ok": true}, {"x": 3, "ok": false}, {"x": null, "ok": true, "note": "hi"}]')
    assert records["rows"] == 3
    assert records["numeric"]["x"]["mean"] == 2.0
    assert records["numeric"]["x"]["std"] == pytest.approx(math.sqrt(2))
    assert records["numeric"]["x"]["missing"] == 1
    assert records["text"]["ok"] == {"count": 3, "missing": 0, "unique": 2, "top": "true", "top_count": 2}
    assert records["text"]["note"] == {"count": 1, "missing": 2, "unique": 1, "top": "hi", "top_count": 1}

    numbers = describe("[4, 1, 3, 2]")["numeric"]["value"]
    assert numbers["mean"] == 2.5
    assert numbers["std"] == pytest.approx(math.sqrt(5 / 3))
    quantiles = (numbers["min"], numbers["q25"], numbers["median"], numbers["q75"], numbers["max"])
    assert quantiles == (1, 1.75, 2.5, 3.25, 4)


def test_describe_single_value_has_no_std() -> None:
    assert describe("x\n7\n")["numeric"]["x"]["std"] is None


def test_correlate_semicolon_csv_skips_incomplete_rows() -> None:
    # a and b rise together, c falls, d is uncorrelated with a, k is constant; the last row lacks b.
    data = "a;b;c;d;k\n1;2;4;1;5\n2;4;3;0;5\n3;6;2;0;5\n4;8;1;1;5\n5;;0;1;5\n"
    result = correlate(data, ["a", "b", "c", "d", "k"])
    assert result["columns"] == ["a", "b", "c", "d", "k"]
    assert result["rows_used"] == 4
    matrix = result["matrix"]
    assert matrix[0][:4] == pytest.approx([1.0, 1.0, -1.0, 0.0])
    assert matrix[1][2] == pytest.approx(-1.0)
    assert [row[4] for row in matrix] == [None] * 5
    assert all(matrix[i][j] == matrix[j][i] for i in range(5) for j in range(5))


def test_correlate_defaults_to_every_numeric_column() -> None:
    assert correlate(PEOPLE_CSV)["columns"] == ["age", "score"]


def test_histogram_bins() -> None:
    result = histogram("[1, 2, 2, 3, null, 10]", "value", bins=3)
    assert (result["count"], result["missing"], result["min"], result["max"]) == (5, 1, 1.0, 10.0)
    assert result["bins"] == [
        {"start": 1.0, "end": 4.0, "count": 4},
        {"start": 4.0, "end": 7.0, "count": 0},
        {"start": 7.0, "end": 10.0, "count": 1},  # the last bin includes its end
    ]


@pytest.mark.parametrize(
    ("call", "message"),
    [
        (lambda: describe("a,b\n1,2,3\n"), "row 2 has 3 fields, the header has 2"),
        (lambda: describe('a,"b\n1,2\n'), "unparsable CSV at line 2"),
        (lambda: describe("a,a\n1,2\n"), "duplicate column names"),
        (lambda: describe("a,b\n"), "no data rows"),
        (lambda: describe("   "), "input is empty"),
        (lambda: describe("{not json"), "unparsable JSON"),
        (lambda: describe('[1, {"a": 1}]'), "only records"),
        (lambda: describe("[]"), "non-empty JSON array"),
        (lambda: histogram(PEOPLE_CSV, "height"), "unknown column 'height'; the columns are"),
        (lambda: histogram(PEOPLE_CSV, "name"), "column 'name' is not numeric"),
        (lambda: correlate("a,b\nx,1\ny,2\n"), "need at least two numeric columns"),
        (lambda: correlate(PEOPLE_CSV, ["age", "name"]), "column 'name' is not numeric"),
        (lambda: correlate("a,b\n1,2\n,3\n"), "at least two rows with a value in every column"),
    ],
)
def test_bad_input_raises_a_clear_value_error(call: Callable[[], object], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        call()


# --- trainer: pure functions ------------------------------------------------------------------------


def test_moons_are_seeded_and_balanced() -> None:
    points, labels = make_moons(101, 0.2, seed=5)
    again, _ = make_moons(101, 0.2, seed=5)
    assert points.shape == (101, 2)
    assert (points == again).all()
    assert labels.sum() == 51


def test_training_learns_the_moons() -> None:
    result = fit(TrainConfig(seed=7))
    assert result["test_accuracy"] > 0.85
    assert result["epochs"] == TrainConfig.epochs
    losses = [point["loss"] for point in result["loss_history"]]
    assert len(losses) == TrainConfig.epochs
    assert losses[-1] < losses[0] / 1.5
    # Not monotonic step by step (mini-batches are noisy), but every third of training improves on the last.
    thirds = [sum(losses[i : i + 10]) for i in range(0, 30, 10)]
    assert thirds[0] > thirds[1] > thirds[2]


def test_same_seed_same_run() -> None:
    config = TrainConfig(epochs=3, seed=3, **SMALL)
    first, second = fit(config), fit(config)
    first.pop("duration_seconds")
    second.pop("duration_seconds")
    assert first == second
    assert fit(TrainConfig(epochs=3, seed=4, **SMALL))["loss_history"] != first["loss_history"]


def test_long_loss_history_is_subsampled_and_keeps_the_last_epoch() -> None:
    result = fit(TrainConfig(epochs=120, **SMALL))
    epochs = [point["epoch"] for point in result["loss_history"]]
    assert len(epochs) <= 51
    assert epochs[0] == 1
    assert epochs[-1] == 120


# --- through MCP, in-process ------------------------------------------------------------------------


async def test_text_tools_over_mcp() -> None:
    async with Client(text_agent.mcp) as client:
        tools = {tool.name: tool for tool in (await client.list_tools()).tools}
        assert set(tools) == {"keywords", "summarize", "detect_language", "stats"}
        for tool in tools.values():
            assert tool.annotations is not None
            assert tool.annotations.read_only_hint and tool.annotations.idempotent_hint
            assert tool.description and tool.output_schema
        assert tools["keywords"].input_schema["properties"]["top"]["maximum"] == 100

        result = await client.call_tool("keywords", {"text": SOLAR, "top": 2})
        assert not result.is_error
        assert result.structured_content == keywords(SOLAR, top=2)
        assert result.structured_content["keywords"] == [{"word": "solar", "count": 3}, {"word": "power", "count": 3}]

        result = await client.call_tool("detect_language", {"text": "Où est la gare la plus proche?"})
        assert result.structured_content is not None
        assert result.structured_content["language"] == "fr"

        result = await client.call_tool("detect_language", {"text": "42"})
        assert result.is_error
        assert "no words" in result.content[0].text  # type: ignore[union-attr]


async def test_data_tools_over_mcp_report_bad_input_clearly() -> None:
    async with Client(data_agent.mcp) as client:
        result = await client.call_tool("describe", {"data": PEOPLE_CSV})
        assert not result.is_error
        assert result.structured_content == describe(PEOPLE_CSV)

        result = await client.call_tool("histogram", {"data": PEOPLE_CSV, "column": "height"})
        assert result.is_error
        # The message, not the SDK's bare "Error executing tool histogram" for an unexpected exception.
        assert "unknown column 'height'" in result.content[0].text  # type: ignore[union-attr]

        result = await client.call_tool("histogram", {"data": PEOPLE_CSV, "column": "age", "bins": 0})
        assert result.is_error  # rejected by the input schema before the tool runs


async def test_train_reports_progress_every_epoch_and_logs() -> None:
    progress: list[tuple[float, float | None, str | None]] = []
    logs: list[LoggingMessageNotificationParams] = []

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        progress.append((value, total, message))

    async def on_log(params: LoggingMessageNotificationParams) -> None:
        logs.append(params)

    async with Client(trainer_agent.mcp, logging_callback=on_log, log_level="info") as client:
        tool = (await client.list_tools()).tools[0]
        assert tool.name == "train"
        assert tool.meta == {"dev.edgefleet/longRunning": True}
        assert tool.annotations is not None and tool.annotations.read_only_hint and tool.annotations.idempotent_hint

        result = await client.call_tool("train", {"epochs": 12, "seed": 1, **SMALL}, progress_callback=on_progress)
    assert not result.is_error
    metrics = result.structured_content
    assert metrics is not None
    assert metrics["epochs"] == 12
    assert metrics["train_samples"] + metrics["test_samples"] == SMALL["samples"]
    assert [(value, total) for value, total, _ in progress] == [(epoch, 12) for epoch in range(1, 13)]
    assert progress[-1][2] == f"epoch 12/12 loss={metrics['final_loss']:.4f}"
    # One line at the start, then every 10 epochs and at the end.
    assert [log.data for log in logs][1:] == [
        f"epoch 10/12: loss {metrics['loss_history'][9]['loss']:.4f}",
        f"epoch 12/12: loss {metrics['final_loss']:.4f}",
    ]


async def test_cancelled_train_stops_within_an_epoch(monkeypatch: pytest.MonkeyPatch) -> None:
    epochs_started = 0
    original = MoonsTrainer.epoch

    def counting_epoch(self: MoonsTrainer) -> Iterator[None]:
        nonlocal epochs_started
        epochs_started += 1
        return original(self)

    monkeypatch.setattr(MoonsTrainer, "epoch", counting_epoch)
    first_epoch_done = asyncio.Event()

    async def on_progress(value: float, total: float | None, message: str | None) -> None:
        first_epoch_done.set()

    async with Client(trainer_agent.mcp) as client:
        # 2000 epochs of ~2 ms each: only a cancellation ends this call within the test's timeouts.
        arguments = {"epochs": 2000, "samples": 4000, "hidden": 64}
        call = asyncio.create_task(client.call_tool("train", arguments, progress_callback=on_progress))
        await asyncio.wait_for(first_epoch_done.wait(), timeout=30)
        call.cancel()
        # The client's cancel returns once the server's handler has stopped: one that ignored it would hang here.
        await asyncio.wait({call}, timeout=10)
        assert call.cancelled()
        at_cancel = epochs_started
        # Time for a couple of hundred epochs of this size: a handler still running would start more of them.
        await asyncio.sleep(0.5)
        assert epochs_started == at_cancel
        assert epochs_started <= 3

        # The agent still serves after a cancelled call.
        result = await client.call_tool("train", {"epochs": 1, **SMALL})
        assert not result.is_error
