"""Text chunking: whole clauses packed up to a budget, the first chunk included; never over the
model's limit; a clause cut (at words) only when the model could not take it; each clause
phonemized once."""

from __future__ import annotations

from collections import Counter
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


def test_the_first_chunk_is_its_first_clauses_and_later_chunks_grow_to_the_budget() -> None:
    chunks = chunks_of(STORY)
    # Two clauses fit the first budget of 50; the third would not.
    assert chunks[0].span.of(STORY) == "Once upon a time, in a small village by the sea,"
    assert all(len(chunk.phonemes) <= BUDGETS.later for chunk in chunks)
    # Later chunks are packed, not one clause each.
    assert max(len(chunk.phonemes) for chunk in chunks[2:]) > 150
    assert [chunk.is_last for chunk in chunks] == [False] * (len(chunks) - 1) + [True]


def test_chunks_cover_the_text_in_order_and_end_at_boundaries() -> None:
    chunks = chunks_of(STORY)
    assert chunks[0].span.start == 0 and chunks[-1].span.end == len(STORY)
    for before, after in zip(chunks, chunks[1:], strict=False):
        assert before.span.end <= after.span.start
        assert STORY[before.span.end : after.span.start].strip() == ""
    assert all(STORY[chunk.span.end - 1] in ".,;" for chunk in chunks)


# Sentences of every shape: one clause or many, long and short, quotes, brackets, dashes,
# numbers, abbreviations, questions, lists, a line break, and no punctuation at all.
VARIED = [
    "They painted the kitchen a pale shade of yellow last weekend.",
    "We can't stay long, but we'll come by after dinner.",
    "The train was late again; nobody on the platform seemed surprised.",
    "She packed three things: a map, a torch and a flask of tea.",
    "Dr. Smith arrived at noon and left before anyone had a chance to ask her anything.",
    "It rained all morning — the kind of rain that soaks through everything you own.",
    '"Come in," she said, "and close the door behind you."',
    "Is this the road to the harbour, or did we take a wrong turn at the bridge?",
    "The report (all forty pages of it) was finished at 3 a.m. on Tuesday.",
    "Prices rose by 12.5% in 2023, the highest figure in a decade.",
    "Yes.",
    "Well, well, well.",
    "He opened the letter slowly, read it twice, folded it and put it back in his pocket.",
    "Nobody expected the small museum at the end of the valley to hold such a collection",
    "First, preheat the oven; second, butter the tin; third, weigh the flour.",
    "The committee, after a long and sometimes heated discussion about the budget for the"
    " coming year, decided to postpone the vote.",
    "Wait!\nThe heading on a line of its own",
    "Her brother — a quiet man who rarely spoke at meetings — stood up and asked the question.",
    "Birds sang in the hedges while the farmer walked his dog along the edge of the field.",
    "I asked him, quite politely I thought, whether he might move his car.",
    "The quick brown fox jumps over the lazy dog, then naps in the warm afternoon sun.",
    "On the left you will see the cathedral: on the right, the old market hall.",
    "What time is it? Half past four, and the shops close at five.",
]
# A clause ends at pausing or terminal punctuation, with any closing quotes or brackets.
_CLAUSE_END = tuple(".!?…,;:—–")
_CLOSING = "\"'”’)]"


def ends_a_clause(text: str, end: int) -> bool:
    before = text[:end].rstrip(_CLOSING)
    return end == len(text.rstrip()) or before.endswith(_CLAUSE_END) or text[end] == "\n"


@pytest.mark.parametrize("text", VARIED)
def test_no_chunk_ends_inside_a_clause(text: str) -> None:
    # Budgets smaller than most of these clauses: a phoneme count would cut them anywhere.
    budgets = ChunkBudgets(first=20, later=40, hard_max=510)
    chunks = list(plan_chunks(text, letters, budgets))
    assert [chunk.index for chunk in chunks] == list(range(len(chunks)))
    for chunk in chunks:
        assert ends_a_clause(text, chunk.span.end), (chunk.span.of(text), text)
    spoken = "".join(chunk.span.of(text) for chunk in chunks)
    assert spoken.replace(" ", "") == text.replace(" ", "").replace("\n", "")


def test_the_planner_reads_the_varied_sentences_as_one_text_too() -> None:
    text = " ".join(VARIED)
    chunks = chunks_of(text)
    assert all(ends_a_clause(text, chunk.span.end) for chunk in chunks)
    assert all(len(chunk.phonemes) <= BUDGETS.later for chunk in chunks)


def test_only_a_clause_over_the_models_limit_is_cut_and_at_words() -> None:
    endless = " ".join(f"word{n}" for n in range(150))  # about 1,000 phonemes, one clause
    text = f"It began quietly, {endless} and then it stopped."
    chunks = chunks_of(text)
    assert chunks[0].span.of(text) == "It began quietly,"
    assert chunks[-1].span.of(text).endswith("and then it stopped.")
    cut = chunks[1:]
    assert len(cut) >= 2
    assert all(0 < len(chunk.phonemes) <= BUDGETS.hard_max for chunk in chunks)
    # Cut at words: every part ends before a space, and the parts are of a size.
    assert all(text[chunk.span.end] == " " for chunk in cut[:-1])
    sizes = [len(chunk.phonemes) for chunk in cut]
    assert max(sizes) < 2 * min(sizes)


def test_each_clause_is_phonemized_once_and_never_its_sentence() -> None:
    calls: Counter[str] = Counter()

    def counting(text: str) -> str:
        calls[text] += 1
        return text

    text = " ".join(VARIED) + " " + STORY
    chunks = list(plan_chunks(text, counting, BUDGETS))
    assert chunks[-1].is_last
    clause_texts = [
        normalize(clause.of(text))
        for sentence in sentences(text)
        for clause in clauses(text, sentence)
    ]
    assert calls == Counter(clause_texts)
    multi_clause = [s.of(text) for s in sentences(text) if len(clauses(text, s)) > 1]
    assert not set(calls) & {normalize(sentence) for sentence in multi_clause}


def test_a_clause_over_the_limit_costs_one_more_g2p_of_its_parts_only() -> None:
    calls: list[str] = []

    def recording(text: str) -> str:
        calls.append(text)
        return text

    endless = " ".join(f"word{n}" for n in range(150))
    text = f"Short one. {endless}. Short two."
    chunks = list(plan_chunks(text, recording, BUDGETS))
    parts = [chunk.span.of(text) for chunk in chunks[1:-1]]
    assert calls == ["Short one.", f"{endless}.", *parts, "Short two."]


def test_chunks_say_whether_they_end_a_sentence_or_a_clause() -> None:
    text = "At the top of the stairs, he stopped. Then he climbed on, slowly and carefully."
    chunks = list(plan_chunks(text, letters, ChunkBudgets(first=20, later=20, hard_max=510)))
    assert [(chunk.span.of(text), chunk.ends_sentence) for chunk in chunks] == [
        ("At the top of the stairs,", False),
        ("he stopped.", True),
        ("Then he climbed on,", False),
        ("slowly and carefully.", True),
    ]


def test_a_long_clause_after_the_first_chunk_is_kept_whole_below_the_limit() -> None:
    long_clause = "The " + " ".join(["very"] * 60) + " long sentence."
    chunks = chunks_of("Hi. " + long_clause)
    assert [chunk.span.of("Hi. " + long_clause) for chunk in chunks] == ["Hi.", long_clause]


def test_a_first_clause_over_the_first_budget_is_the_first_chunk_whole() -> None:
    text = "They painted the kitchen a pale shade of yellow last weekend. We can't stay."
    chunks = chunks_of(text)
    assert (
        chunks[0].span.of(text) == "They painted the kitchen a pale shade of yellow last weekend."
    )
    assert len(chunks[0].phonemes) > BUDGETS.first


def test_a_token_longer_than_the_limit_is_cut_until_it_fits() -> None:
    blob = "x" * 1500
    text = f"Hash {blob} end."
    chunks = chunks_of(text)
    assert all(len(chunk.phonemes) <= BUDGETS.hard_max for chunk in chunks)
    assert "".join(chunk.span.of(text) for chunk in chunks).count("x") == 1500


def test_the_first_chunk_phonemizes_its_own_clauses_and_the_next_one_only() -> None:
    seen: list[str] = []

    def recording(text: str) -> str:
        seen.append(text)
        return text

    first: Iterator[TextChunk] = plan_chunks(STORY, recording, BUDGETS)
    next(first)
    # Two clauses in the chunk, the third read to know it does not fit.
    assert seen == [
        "Once upon a time,",
        "in a small village by the sea,",
        "there lived an old fisherman.",
    ]

    seen.clear()
    long_first = "The lighthouse keeper climbed the spiral stairs each evening, counting the steps."
    next(plan_chunks(long_first, recording, BUDGETS))
    # Already over the budget: nothing read ahead.
    assert seen == ["The lighthouse keeper climbed the spiral stairs each evening,"]


def test_budgets_must_be_ordered() -> None:
    with pytest.raises(ValueError):
        ChunkBudgets(first=300, later=200, hard_max=510)
    assert [BUDGETS.for_chunk(i) for i in range(4)] == [50, 100, 200, 200]


@pytest.fixture(scope="module")
def english() -> Phonemize:
    from services.synth.text.g2p import build_phonemizers

    return build_phonemizers("a")["a"]


def test_real_english_g2p_chunks_end_at_clauses(english: Phonemize) -> None:
    chunks = chunks_of(STORY * 3, english)
    assert chunks[0].span.of(STORY) == "Once upon a time, in a small village by the sea,"
    assert all(0 < len(chunk.phonemes) <= BUDGETS.later for chunk in chunks)
    assert all(ends_a_clause(STORY * 3, chunk.span.end) for chunk in chunks)
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


def test_a_chunk_of_bare_punctuation_is_silence_not_a_model_call() -> None:
    """A lone dash between a clause that fills its chunk and one too long to join it is a chunk
    of its own: it says nothing (the model would voice it as a breath), yet still covers it."""
    text = "Alpha beta gamma delta, — epsilon zeta eta theta iota."
    chunks = list(plan_chunks(text, letters, ChunkBudgets(first=10, later=10, hard_max=510)))
    dash = [chunk for chunk in chunks if chunk.span.of(text).strip() == "—"]
    assert len(dash) == 1 and dash[0].phonemes == ""
    assert all(chunk.phonemes for chunk in chunks if chunk is not dash[0])
