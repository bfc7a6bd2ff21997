"""The ``text`` agent: keywords, extractive summaries, language detection and text statistics.

Everything is plain Python (no models, no downloads): word frequencies, stopword lists and
character-trigram profiles built at import from the reference texts in ``_text_profiles``.
The pure functions below do the work; the MCP tools at the bottom are thin wrappers.
"""

from __future__ import annotations

import math
import re
from collections import Counter
from typing import Annotated, Literal, get_args

from pydantic import Field
from typing_extensions import TypedDict

from edgefleet.agents import Agent, ToolAnnotations, input_errors
from edgefleet.agents.examples._text_profiles import REFERENCE_TEXTS, STOPWORDS

Language = Literal["en", "de", "fr", "es", "it", "pt", "nl"]
LanguageOption = Literal["auto", "en", "de", "fr", "es", "it", "pt", "nl"]
LANGUAGES: tuple[Language, ...] = get_args(Language)

# Letters only: digits and underscores are not words, and apostrophes split ("l'avenir" -> "l", "avenir").
_WORD_RE = re.compile(r"[^\W\d_]+")
# A sentence ends at . ! ? or … followed by whitespace, or at a blank line (a heading or paragraph
# without final punctuation). Abbreviations such as "e.g. " split too: good enough for scoring.
_SENTENCE_END_RE = re.compile(r"(?<=[.!?…])\s+|\n\s*\n")
_PARAGRAPH_RE = re.compile(r"\n\s*\n")
# Weight of the stopword share against the trigram similarity when detecting a language: stopwords
# decide most real sentences, trigrams break ties and carry samples that have no stopwords at all.
_STOPWORD_WEIGHT = 0.6
# Softmax temperature turning detection scores into a confidence; scores lie in [0, 1], and a lead
# of 0.15 over the runner-up already means ~95% confidence.
_CONFIDENCE_TEMPERATURE = 0.05


class Keyword(TypedDict):
    word: str
    count: int


class KeywordsResult(TypedDict):
    """The most frequent content words, most frequent first (ties in order of first appearance)."""

    language: Language
    keywords: list[Keyword]


class ScoredSentence(TypedDict):
    index: int
    text: str
    score: float


class SummaryResult(TypedDict):
    """The selected sentences, in their original order, and how many sentences the text had."""

    summary: str
    sentences: list[ScoredSentence]
    total_sentences: int
    language: Language


class LanguageResult(TypedDict):
    """The detected language, a confidence in [0, 1] and every language's raw score in [0, 1]."""

    language: Language
    confidence: float
    scores: dict[str, float]


class TextStats(TypedDict):
    """Counts and reading time; averages are 0 for a text without words or sentences."""

    characters: int
    characters_no_spaces: int
    words: int
    sentences: int
    paragraphs: int
    average_word_length: float
    average_sentence_length: float
    reading_time_seconds: float


def words(text: str) -> list[str]:
    """The lower-cased words of ``text``."""
    return [w.lower() for w in _WORD_RE.findall(text)]


def split_sentences(text: str) -> list[str]:
    """Sentences of ``text`` with whitespace normalised; fragments without words are dropped."""
    parts = (" ".join(part.split()) for part in _SENTENCE_END_RE.split(text))
    return [part for part in parts if _WORD_RE.search(part)]


def _trigrams(tokens: list[str]) -> Counter[str]:
    # Pad each word with spaces so word starts and ends (" th", "he ") become features of their own.
    grams: Counter[str] = Counter()
    for token in tokens:
        padded = f" {token} "
        grams.update(padded[i : i + 3] for i in range(len(padded) - 2))
    return grams


def _unit(vector: Counter[str]) -> dict[str, float]:
    norm = math.sqrt(sum(v * v for v in vector.values()))
    return {key: value / norm for key, value in vector.items()}


_PROFILES: dict[str, dict[str, float]] = {lang: _unit(_trigrams(words(REFERENCE_TEXTS[lang]))) for lang in LANGUAGES}


def detect_language(text: str) -> LanguageResult:
    """Detect the language of ``text`` from its stopword share and its character-trigram profile.

    Raises ValueError when the text has no words.
    """
    tokens = words(text)
    if not tokens:
        raise ValueError("the text contains no words to detect a language from")
    grams = _unit(_trigrams(tokens))
    scores: dict[str, float] = {}
    for lang in LANGUAGES:
        stop_share = sum(token in STOPWORDS[lang] for token in tokens) / len(tokens)
        profile = _PROFILES[lang]
        similarity = sum(weight * profile.get(gram, 0.0) for gram, weight in grams.items())
        scores[lang] = round(_STOPWORD_WEIGHT * stop_share + (1 - _STOPWORD_WEIGHT) * similarity, 4)
    best = max(LANGUAGES, key=lambda lang: scores[lang])
    # Softmax over the scores, shifted by the best one so exp() cannot overflow.
    weights = {lang: math.exp((score - scores[best]) / _CONFIDENCE_TEMPERATURE) for lang, score in scores.items()}
    confidence = round(1 / sum(weights.values()), 4)
    return {"language": best, "confidence": confidence, "scores": scores}


def _resolve_language(text: str, language: LanguageOption) -> Language:
    return detect_language(text)["language"] if language == "auto" else language


def _content_words(tokens: list[str], language: Language) -> list[str]:
    stop = STOPWORDS[language]
    return [token for token in tokens if len(token) > 1 and token not in stop]


def keywords(text: str, top: int = 10, language: LanguageOption = "auto") -> KeywordsResult:
    """The ``top`` most frequent words of ``text`` that are not stopwords of its language.

    Raises ValueError when ``language`` is ``auto`` and the text has no words to detect it from.
    """
    lang = _resolve_language(text, language)
    counts = Counter(_content_words(words(text), lang))
    # most_common sorts stably, so equal counts keep the order of first appearance.
    return {"language": lang, "keywords": [{"word": w, "count": c} for w, c in counts.most_common(top)]}


def score_sentences(sentences: list[str], language: Language) -> list[float]:
    """Score each sentence by the summed frequency of its content words, relative to the most frequent word.

    A sentence scores high when it repeats what the whole text talks about most.
    """
    per_sentence = [_content_words(words(sentence), language) for sentence in sentences]
    counts = Counter(token for tokens in per_sentence for token in tokens)
    if not counts:
        return [0.0] * len(sentences)
    peak = max(counts.values())
    return [sum(counts[token] for token in tokens) / peak for tokens in per_sentence]


def summarize(text: str, sentences: int = 3, language: LanguageOption = "auto") -> SummaryResult:
    """An extractive summary: the ``sentences`` best-scoring sentences of ``text``, in original order.

    Raises ValueError when ``language`` is ``auto`` and the text has no words to detect it from.
    """
    lang = _resolve_language(text, language)
    found = split_sentences(text)
    scores = score_sentences(found, lang)
    # Best score first; on a tie the earlier sentence wins.
    ranked = sorted(range(len(found)), key=lambda i: (-scores[i], i))[:sentences]
    chosen: list[ScoredSentence] = [
        {"index": i, "text": found[i], "score": round(scores[i], 4)} for i in sorted(ranked)
    ]
    return {
        "summary": " ".join(s["text"] for s in chosen),
        "sentences": chosen,
        "total_sentences": len(found),
        "language": lang,
    }


def text_stats(text: str, words_per_minute: int = 238) -> TextStats:
    """Character, word, sentence and paragraph counts plus the reading time at ``words_per_minute``."""
    tokens = words(text)
    sentence_count = len(split_sentences(text))
    return {
        "characters": len(text),
        "characters_no_spaces": sum(not ch.isspace() for ch in text),
        "words": len(tokens),
        "sentences": sentence_count,
        "paragraphs": sum(1 for part in _PARAGRAPH_RE.split(text) if part.strip()),
        "average_word_length": round(sum(map(len, tokens)) / len(tokens), 2) if tokens else 0.0,
        "average_sentence_length": round(len(tokens) / sentence_count, 2) if sentence_count else 0.0,
        "reading_time_seconds": round(len(tokens) / words_per_minute * 60, 1),
    }


agent = Agent(
    "text",
    description="Text analysis: keywords, extractive summaries, language detection and statistics.",
    version="1.0.0",
)

_READ_ONLY = ToolAnnotations(readOnlyHint=True, idempotentHint=True, destructiveHint=False, openWorldHint=False)
Text = Annotated[str, Field(min_length=1, max_length=1_000_000, description="The text to analyse (plain text).")]
LanguageParam = Annotated[
    LanguageOption,
    Field(description="Language of the text, used for its stopword list; 'auto' detects it first."),
]


@agent.tool("keywords", annotations=_READ_ONLY)
async def keywords_tool(
    text: Text,
    top: Annotated[int, Field(ge=1, le=100, description="How many keywords to return.")] = 10,
    language: LanguageParam = "auto",
) -> KeywordsResult:
    """Find the most frequent meaningful words of a text.

    Words are lower-cased and stopwords of the text's language (en, de, fr, es, it, pt, nl) are
    removed. Returns the words with their counts, most frequent first, and the language used.
    """
    with input_errors():
        return keywords(text, top, language)


@agent.tool("summarize", annotations=_READ_ONLY)
async def summarize_tool(
    text: Text,
    sentences: Annotated[int, Field(ge=1, le=50, description="How many sentences the summary keeps.")] = 3,
    language: LanguageParam = "auto",
) -> SummaryResult:
    """Summarise a text by extracting its most representative sentences.

    Each sentence is scored by how often its content words occur in the whole text; the best
    ones are returned in their original order, with their index and score. Nothing is rephrased.
    """
    with input_errors():
        return summarize(text, sentences, language)


@agent.tool("detect_language", annotations=_READ_ONLY, cache_ttl_s=300)  # deterministic: cache it
async def detect_language_tool(text: Text) -> LanguageResult:
    """Detect the language of a text: English, German, French, Spanish, Italian, Portuguese or Dutch.

    Returns an ISO 639-1 code, a confidence between 0 and 1, and each language's score.
    Short or mixed texts give lower confidence; other languages get the closest of the seven.
    """
    with input_errors():
        return detect_language(text)


@agent.tool("stats", annotations=_READ_ONLY)
async def stats_tool(
    text: Text,
    words_per_minute: Annotated[
        int, Field(ge=50, le=1000, description="Reading speed; 238 is the adult average for silent reading.")
    ] = 238,
) -> TextStats:
    """Count characters, words, sentences and paragraphs of a text and estimate its reading time."""
    return text_stats(text, words_per_minute)


if __name__ == "__main__":
    agent.main()
