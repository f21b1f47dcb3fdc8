"""Text chunking: a short first chunk, later chunks near the model's best length, never over
its limit, cut at sentence, then clause, then word boundaries."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from services.synth.text.chunking import ChunkBudgets, Phonemize, TextChunk, plan_chunks
from services.synth.text.normalize import normalize
from services.synth.text.split import clauses, sentences, words

BUDGETS = ChunkBudgets(first=50, later=200, hard_max=510)

STORY = (
    "Once upon a time, in a small village by the sea, there lived an old fisherman. "
    "Every morning he rowed out before dawn. He came back at noon with his nets full, "
    "and the children of the village ran down to the shore to meet him. "
    "One day, however, the sea was strangely calm and no fish came to his nets at all. "
    "He waited. He waited some more. Then, as the sun was setting behind the hills, "
    "something heavy pulled at the line."
)


def letters(text: str) -> str:
    """A stand-in G2P: one phoneme per character, so budgets are easy to reason about."""
    return text


def chunks_of(text: str, phonemize: Phonemize = letters) -> list[TextChunk]:
    return list(plan_chunks(text, phonemize, BUDGETS))


def test_sentences_end_at_terminal_punctuation_and_line_breaks() -> None:
    text = "Dr. Smith arrived. Was he late?  No!\nA heading\n\nThe end…"
    assert [span.of(text) for span in sentences(text)] == [
        "Dr. Smith arrived.",
        "Was he late?",
        "No!",
        "A heading",
        "The end…",
    ]


def test_clauses_and_words() -> None:
    text = "First, second; third: fourth — fifth"
    whole = sentences(text)[0]
    assert [span.of(text) for span in clauses(text, whole)] == [
        "First,",
        "second;",
        "third:",
        "fourth —",
        "fifth",
    ]
    assert [span.of(text) for span in words(text, whole)][:3] == ["First,", "second;", "third:"]


def test_cjk_sentences_and_clauses_need_no_spaces() -> None:
    text = "你好，世界。今天天气很好！"
    assert [span.of(text) for span in sentences(text)] == ["你好，世界。", "今天天气很好！"]
    first = sentences(text)[0]
    assert [span.of(text) for span in clauses(text, first)] == ["你好，", "世界。"]
    assert [span.of(text) for span in words(text, sentences(text)[1])][:2] == ["今", "天"]


def test_normalize_collapses_whitespace_and_straightens_quotes() -> None:
    assert normalize("  It’s\tnew\n\n here ") == "It's new here"


def test_first_chunk_is_short_and_later_chunks_grow_to_the_budget() -> None:
    chunks = chunks_of(STORY)
    assert len(chunks[0].phonemes) <= BUDGETS.first
    assert all(len(chunk.phonemes) <= BUDGETS.later for chunk in chunks)
    # Later chunks are packed, not one sentence each.
    assert max(len(chunk.phonemes) for chunk in chunks[2:]) > 150
    assert [chunk.is_last for chunk in chunks] == [False] * (len(chunks) - 1) + [True]


def test_chunks_cover_the_text_in_order_and_end_at_boundaries() -> None:
    chunks = chunks_of(STORY)
    assert chunks[0].span.start == 0 and chunks[-1].span.end == len(STORY)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.span.end <= after.span.start
        assert STORY[before.span.end : after.span.start].strip() == ""
    # The first chunk stops at a clause; every later one at a clause or a sentence end.
    assert STORY[: chunks[0].span.end].endswith("by the sea,")
    assert all(STORY[chunk.span.end - 1] in ".,;" for chunk in chunks)


def test_a_sentence_longer_than_the_model_allows_is_cut_at_words() -> None:
    endless = " ".join(["word"] * 400) + "."
    chunks = chunks_of(endless)
    assert len(chunks) > 2
    assert all(0 < len(chunk.phonemes) <= BUDGETS.hard_max for chunk in chunks)
    assert "".join(chunk.span.of(endless).replace(" ", "") for chunk in chunks) == (
        endless.replace(" ", "")
    )


def test_a_long_clause_after_the_first_chunk_is_kept_whole_below_the_limit() -> None:
    long_clause = "The " + " ".join(["very"] * 60) + " long sentence."
    chunks = chunks_of("Hi. " + long_clause)
    assert [chunk.span.of("Hi. " + long_clause) for chunk in chunks] == ["Hi.", long_clause]


def test_a_token_longer_than_the_limit_is_halved_until_it_fits() -> None:
    blob = "x" * 1500
    chunks = chunks_of(f"Hash {blob} end.")
    assert all(len(chunk.phonemes) <= BUDGETS.hard_max for chunk in chunks)


def test_planning_is_lazy() -> None:
    """Only the sentences the current chunk needs are phonemized before it is handed out."""
    seen: list[str] = []

    def recording(text: str) -> str:
        seen.append(text)
        return text

    iterator: Iterator[TextChunk] = plan_chunks(STORY, recording, BUDGETS)
    next(iterator)
    first_sentence = STORY[: STORY.index(".") + 1]
    assert seen and all(text in first_sentence for text in seen)


def test_budgets_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        ChunkBudgets(first=300, later=200, hard_max=510)
    assert [BUDGETS.for_chunk(i) for i in range(4)] == [50, 100, 200, 200]


@pytest.fixture(scope="module")
def english() -> Phonemize:
    from services.synth.text.g2p import build_phonemizers

    return build_phonemizers("a")["a"]


def test_real_english_g2p_respects_the_budgets(english: Phonemize) -> None:
    chunks = chunks_of(STORY * 3, english)
    assert len(chunks[0].phonemes) <= BUDGETS.first
    assert all(0 < len(chunk.phonemes) <= BUDGETS.later for chunk in chunks)
    assert "wˈʌns" in chunks[0].phonemes  # "Once", phonemized


def test_real_english_g2p_says_which_phonemes_speak_each_word(english: Phonemize) -> None:
    text = 'It costs $5.20, said Dr. Smith — in 2026. "Don\'t," she said…'
    chunks = list(plan_chunks(text, english, ChunkBudgets(200, 200, 510)))
    assert len(chunks) == 1 and chunks[0].words is not None
    words = {
        word.span.of(text): chunks[0].phonemes[word.phonemes.start : word.phonemes.end]
        for word in chunks[0].words
    }
    assert list(words) == [
        "It", "costs", "$5.20,", "said", "Dr.", "Smith —", "in", "2026.", '"Don\'t,"', "she",
        "said…",
    ]  # fmt: skip
    assert words["$5.20,"] == "fˈIv dˈɑləɹz ænd twˈɛnti sˈɛnts"
    assert words["Dr."] == "dˈɑktəɹ"
    assert words["2026."] == "twˈɛnti twˈɛnti sˈɪks"


def test_espeak_languages_give_no_word_boundaries() -> None:
    from services.synth.text.g2p import build_phonemizers

    spanish = build_phonemizers("e")["e"]
    assert list(plan_chunks("Hola, mundo.", spanish, BUDGETS))[0].words is None
