"""Word timestamps with made-up durations: the input's words as written, mapped to their
phonemes, timed in their chunk, placed in the stream (trimmed audio accounted for), and sent on
the gRPC stream; refused for languages whose G2P gives no word boundaries."""

from __future__ import annotations

import re
from collections.abc import AsyncGenerator, Callable, Collection, Mapping
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from kokoropay.synth.v1 import synth_pb2

from services.synth.engine.backend import Speech
from services.synth.engine.manager import EngineManager, GeneratedChunk, SynthesisCancelled
from services.synth.engine.timestamps import ChunkWords, TimedWord, place_words, time_words
from services.synth.errors import WordTimestampsUnsupported
from services.synth.servicer import SynthServicer
from services.synth.text.chunking import ChunkBudgets, Phonemize, TextChunk, plan_chunks
from services.synth.text.split import Span
from services.synth.text.words import PhonemeToken, Pronunciation, WordPhonemes, words_of
from services.synth.voices import V1_VOICES, VoiceCatalog, VoiceMix

RATE = 24_000
FRAME = 600  # samples per duration frame, as Kokoro's decoder makes them
BUDGETS = ChunkBudgets(first=30, later=60, hard_max=510)
_TOKEN = re.compile(r"[\w'$%.-]*\w|[^\w\s]")


def spelled(text: str) -> Pronunciation:
    """A stand-in G2P that reads letters as phonemes and tokenizes as misaki does: words,
    punctuation apart ("Dr" and "." become two tokens, "$5.20" stays one)."""
    tokens = []
    for match in _TOKEN.finditer(text):
        tokens.append(PhonemeToken(match.group(), Span(match.start(), match.end())))
    return Pronunciation(text, tuple(tokens))


def chunks_of(text: str, phonemize: Phonemize = spelled) -> list[TextChunk]:
    return list(plan_chunks(text, phonemize, BUDGETS))


def written(text: str, chunk: TextChunk) -> list[tuple[str, str]]:
    """Each word as written, with the phonemes that voice it."""
    assert chunk.words is not None
    return [
        (word.span.of(text), chunk.phonemes[word.phonemes.start : word.phonemes.end])
        for word in chunk.words
    ]


# --- the map from phonemes to the words as written --------------------------------------------


def test_words_keep_their_spelling_and_their_punctuation() -> None:
    text = "It costs $5.20, said Dr. Smith in 2026."
    (chunk,) = list(plan_chunks(text, spelled, ChunkBudgets(100, 200, 510)))
    assert written(text, chunk) == [
        ("It", "It"),
        ("costs", "costs"),
        ("$5.20,", "$5.20"),  # the comma's pause is not the word's
        ("said", "said"),
        ("Dr.", "Dr"),
        ("Smith", "Smith"),
        ("in", "in"),
        ("2026.", "2026"),
    ]


def test_a_number_read_as_several_words_is_one_word_as_written() -> None:
    # What misaki does with "$5.20": no phonemes for "$", four spoken words for "5.20".
    phonemes = "ɪt kˈɔsts fˈIv dˈɑləɹz ænd twˈɛnti sˈɛnts."
    tokens = (
        PhonemeToken("It", Span(0, 2)),
        PhonemeToken("costs", Span(3, 9)),
        PhonemeToken("$", Span(10, 10)),
        PhonemeToken("5.20", Span(10, 41)),
        PhonemeToken(".", Span(41, 42)),
    )
    text = "It costs $5.20."
    words = words_of(text, Span(0, len(text)), text, Pronunciation(phonemes, tokens))
    assert words is not None
    assert [(w.span.of(text), phonemes[w.phonemes.start : w.phonemes.end]) for w in words] == [
        ("It", "ɪt"),
        ("costs", "kˈɔsts"),
        ("$5.20.", "fˈIv dˈɑləɹz ænd twˈɛnti sˈɛnts"),
    ]


def test_punctuation_standing_alone_joins_the_word_before_it_or_after_it_when_first() -> None:
    text = "— Wait … what ?"
    (chunk,) = list(plan_chunks(text, spelled, ChunkBudgets(100, 200, 510)))
    assert written(text, chunk) == [("— Wait …", "Wait"), ("what ?", "what")]


def test_a_dash_that_is_a_clause_of_its_own_joins_the_word_before_it() -> None:
    text = "Wait — what now?"
    (chunk,) = list(plan_chunks(text, spelled, ChunkBudgets(100, 200, 510)))
    assert written(text, chunk) == [("Wait —", "Wait"), ("what", "what"), ("now?", "now")]


def test_every_character_but_whitespace_is_in_exactly_one_word() -> None:
    text = 'He said, "Call me at 3:30pm" — then   left…\n\tThe  end (really)!'
    chunks = chunks_of(text)
    spans = [word.span for chunk in chunks for word in chunk.words or ()]
    assert " ".join(span.of(text) for span in spans).split() == text.split()
    assert all(a.end <= b.start for a, b in zip(spans, spans[1:], strict=False))


def test_words_are_found_in_the_original_input_whatever_normalization_did() -> None:
    # Curly quotes straightened, a decomposed é composed, runs of spaces and controls squeezed:
    # the words are still reported as the input wrote them.
    text = "‘Cafe\u0301’  is\x00open.\n\nYes."
    chunks = chunks_of(text)
    words = [word.span.of(text) for chunk in chunks for word in chunk.words or ()]
    assert words == ["‘Cafe\u0301’", "is", "open.", "Yes."]


def test_text_the_g2p_rewrote_stays_with_the_word_it_is_in() -> None:
    # misaki reads a markdown link's text and drops the rest; a token not found in the text
    # belongs to the word it follows.
    phonemes = "sˈi lˈɪŋk hˈɪɹ"
    tokens = (
        PhonemeToken("See", Span(0, 3)),
        PhonemeToken("link", Span(4, 9)),
        PhonemeToken("⟨gone⟩", Span(9, 9)),
        PhonemeToken("here", Span(10, 14)),
    )
    text = "See [link](x) here"
    words = words_of(text, Span(0, len(text)), text, Pronunciation(phonemes, tokens))
    assert words is not None
    assert [w.span.of(text) for w in words] == ["See", "[link](x)", "here"]
    assert [phonemes[w.phonemes.start : w.phonemes.end] for w in words][1] == "lˈɪŋk"


def test_no_tokens_no_words() -> None:
    assert chunks_of("Hola, mundo.", lambda text: text)[0].words is None
    text = "Hola."
    assert words_of(text, Span(0, 5), text, Pronunciation("ˈola.")) is None


def test_a_piece_with_nothing_voiced_is_one_word_where_it_stands() -> None:
    text = '"" ()'
    (chunk,) = chunks_of(text)
    assert chunk.words == (WordPhonemes(Span(0, 5), Span(0, 0)),)


def test_the_phonemes_of_later_pieces_are_counted_from_the_chunk_start() -> None:
    text = "One two. Three four. Five six. Seven eight. Nine ten."
    chunks = chunks_of(text)
    for chunk in chunks:
        for word, phonemes in written(text, chunk):
            assert word.rstrip(".") == phonemes
    assert len(chunks) >= 2


# --- timing in the chunk, then in the stream ----------------------------------------------------


def speech_of(frames: list[int], lead: int = 5) -> Speech:
    """Model output with these durations (frames) per phoneme, after `lead` boundary frames."""
    bounds = (np.concatenate(([0], np.cumsum(frames))) + lead) * FRAME
    samples = (sum(frames) + lead + 3) * FRAME
    return Speech(np.zeros(samples, dtype=np.float32), bounds.astype(np.int64))


def test_a_word_runs_from_its_first_voiced_phoneme_to_its_last() -> None:
    # "ab, cd": a=2 b=3 ,=10 (a pause) space=1 c=2 d=2 frames, after 5 lead frames.
    speech = speech_of([2, 3, 10, 1, 2, 2])
    words = [WordPhonemes(Span(0, 3), Span(0, 2)), WordPhonemes(Span(4, 6), Span(4, 6))]
    timed = time_words(words, speech, RATE)
    assert timed.words == (
        TimedWord(Span(0, 3), 5 * FRAME, 10 * FRAME),
        TimedWord(Span(4, 6), 21 * FRAME, 25 * FRAME),
    )
    assert timed.model_samples == len(speech.audio)


def test_a_word_is_fitted_to_the_sound_in_its_frames() -> None:
    # "ab cd.": the model gives "b" the pause after it (40 frames); the sound of "cd" starts
    # in the space before its first phoneme; the "." is a long pause.
    speech = speech_of([4, 40, 1, 4, 4, 20], lead=5)
    heard = [(5, 12), (49, 58)]  # frames with sound: "ab" stops early, "cd" starts early
    for first, last in heard:
        speech.audio[first * FRAME : last * FRAME] = 0.1
    words = [WordPhonemes(Span(0, 2), Span(0, 2)), WordPhonemes(Span(3, 6), Span(3, 5))]
    (ab, cd) = time_words(words, speech, RATE).words
    assert (ab.start, ab.end) == (5 * FRAME, 12 * FRAME)  # not 49 frames: the pause is out
    assert (cd.start, cd.end) == (49 * FRAME, 58 * FRAME)  # it starts before its 50th frame


def test_a_word_never_starts_before_the_one_before_it_ends() -> None:
    speech = speech_of([4, 1, 4], lead=5)
    speech.audio[5 * FRAME :] = 0.1  # sound from the first phoneme on, the pause after too
    words = [WordPhonemes(Span(0, 1), Span(0, 1)), WordPhonemes(Span(2, 3), Span(2, 3))]
    (a, b) = time_words(words, speech, RATE).words
    assert (a.start, a.end) == (5 * FRAME, 9 * FRAME)
    assert b.start == a.end  # the space between them is the second word's lead-in
    assert b.end == 14 * FRAME


def test_placed_words_count_from_the_start_of_the_stream() -> None:
    chunk = ChunkWords((TimedWord(Span(0, 2), 6_000, 12_000),), model_samples=24_000)
    (placed,) = place_words(chunk, stream_offset_samples=48_000, sample_rate=RATE)
    assert (placed.start_seconds, placed.end_seconds) == (2.25, 2.5)


def test_trimmed_samples_shift_the_times_and_clamp_them_to_the_audio_kept() -> None:
    chunk = ChunkWords(
        (
            TimedWord(Span(0, 1), 1_000, 5_000),  # starts in the trimmed head
            TimedWord(Span(2, 3), 6_000, 12_000),
            TimedWord(Span(4, 5), 20_000, 23_900),  # ends in the trimmed tail
        ),
        model_samples=24_000,
    )
    placed = place_words(
        chunk,
        stream_offset_samples=0,
        sample_rate=RATE,
        trimmed_head_samples=2_400,
        trimmed_tail_samples=2_400,
    )
    kept = (24_000 - 4_800) / RATE
    assert [(w.start_seconds, w.end_seconds) for w in placed] == [
        (0.0, 2_600 / RATE),
        (3_600 / RATE, 9_600 / RATE),
        (17_600 / RATE, kept),
    ]


def speaks(frames_per_phoneme: int = 4) -> Callable[[str, VoiceMix, float], Speech]:
    """A model that gives every phoneme the same frames, divided by the speed, as Kokoro does."""

    def generate(phonemes: str, voice: VoiceMix, speed: float) -> Speech:
        frames = max(round(frames_per_phoneme / speed), 1)
        return speech_of([frames] * len(phonemes))

    return generate


class FixedDurations:
    sample_rate = RATE
    device = "cpu"
    voice_names = ["af_sky", "ef_dora"]

    def __init__(self) -> None:
        self.generate = speaks()

    def load(self) -> None:
        pass


def spelled_in_english(codes: Collection[str]) -> Mapping[str, Phonemize]:
    # English with tokens, Spanish without: as misaki and espeak-ng answer.
    return {"a": spelled, "e": lambda text: text}


async def manager() -> EngineManager:
    engine = EngineManager(
        FixedDurations(),
        spelled_in_english,
        BUDGETS,
        max_concurrent=1,
        warm_up=False,
    )
    await engine.start()
    return engine


STORY = (
    "Dr. Smith paid $5.20 for two apples, one pear and a fig. It was 2026. Nobody minded; "
    "the market — busy as ever — went on."
)


async def test_times_rise_through_chunks_at_the_speed_asked_for() -> None:
    engine = await manager()
    voice = engine.catalog.resolve("af_sky")
    last_word_ends: dict[float, float] = {}
    for speed in (1.0, 2.0):
        chunks = [
            chunk
            async for chunk in engine.stream(
                STORY, voice, speed, SynthesisCancelled(), word_timestamps=True
            )
        ]
        assert len(chunks) > 2
        placed = []
        offset = 0
        for chunk in chunks:
            assert chunk.words is not None and chunk.words.model_samples == len(chunk.audio)
            placed += place_words(chunk.words, stream_offset_samples=offset, sample_rate=RATE)
            offset += len(chunk.audio)
        assert " ".join(w.span.of(STORY) for w in placed) == STORY
        times = [t for w in placed for t in (w.start_seconds, w.end_seconds)]
        assert times == sorted(times)
        assert all(w.end_seconds > w.start_seconds for w in placed)
        assert placed[-1].end_seconds < offset / RATE
        last_word_ends[speed] = placed[-1].end_seconds
    assert last_word_ends[2.0] == pytest.approx(last_word_ends[1.0] / 2, rel=0.1)
    await engine.close()


async def test_without_asking_there_are_no_words() -> None:
    engine = await manager()
    voice = engine.catalog.resolve("af_sky")
    chunks = [c async for c in engine.stream("Hi there.", voice, 1.0, SynthesisCancelled())]
    assert [chunk.words for chunk in chunks] == [None]
    await engine.close()


def test_the_catalog_says_which_voices_have_word_timestamps() -> None:
    catalog = VoiceCatalog(V1_VOICES, "abe", timed_languages="ab")
    assert catalog.has_word_timestamps(catalog.resolve("af_bella(1)+ef_dora(1)"))
    assert not catalog.has_word_timestamps(catalog.resolve("ef_dora(1)+af_bella(1)"))
    flags = {entry.id: entry.word_timestamps for entry in catalog.entries()}
    assert flags["bf_emma"] and flags["alloy"] and flags["af"]
    assert not flags["ef_dora"]
    assert [language.tag for language in catalog.timed_languages] == ["en-us", "en-gb"]


# --- on the gRPC stream -------------------------------------------------------------------------


class FakeEngine:
    sample_rate = RATE

    def __init__(self, chunks: list[GeneratedChunk], timed: bool = True) -> None:
        catalog = VoiceCatalog(V1_VOICES, "ae", timed_languages="a" if timed else "")
        self.catalog = catalog
        self._chunks = chunks
        self.asked: list[bool] = []

    async def stream(self, *_: Any, word_timestamps: bool = False) -> AsyncGenerator[Any, None]:
        self.asked.append(word_timestamps)
        for chunk in self._chunks:
            yield chunk


def chunk(
    index: int, samples: int, words: list[TimedWord], text_end: int, last: bool = False
) -> GeneratedChunk:
    audio = np.full(samples, 0.1, dtype=np.float32)
    return GeneratedChunk(index, text_end, audio, last, words=ChunkWords(tuple(words), samples))


async def synthesize(
    engine: FakeEngine, text: str, voice: str = "af_sky"
) -> list[synth_pb2.AudioChunk]:
    servicer = SynthServicer(engine, max_input_chars=10_000, precision="")  # type: ignore[arg-type]
    request = synth_pb2.SynthesizeRequest(
        text=text, voice=voice, format=synth_pb2.AUDIO_FORMAT_PCM, word_timestamps=True
    )
    context = SimpleNamespace(add_done_callback=lambda _: None)
    return [message async for message in servicer.Synthesize(request, context)]


async def test_each_message_carries_its_words_timed_from_the_start_of_the_stream() -> None:
    text = "Hello there. Big world."
    engine = FakeEngine(
        [
            chunk(
                0,
                24_000,
                [TimedWord(Span(0, 5), 2_400, 9_600), TimedWord(Span(6, 12), 10_000, 20_000)],
                12,
            ),
            chunk(
                1,
                12_000,
                [TimedWord(Span(13, 16), 1_200, 4_800), TimedWord(Span(17, 23), 6_000, 11_000)],
                23,
                last=True,
            ),
        ]
    )
    messages = await synthesize(engine, text)
    assert engine.asked == [True]
    words = [
        (w.text, w.start_seconds, w.end_seconds, w.text_start, w.text_end)
        for m in messages
        for w in m.words
    ]
    assert words == [
        ("Hello", 0.1, 0.4, 0, 5),
        ("there.", 10_000 / RATE, 20_000 / RATE, 6, 12),
        ("Big", 1.05, 1.2, 13, 16),
        ("world.", 1.25, 35_000 / RATE, 17, 23),
    ]
    assert [len(m.words) for m in messages] == [2, 2]


async def test_a_piece_sent_as_several_messages_has_its_words_on_the_first() -> None:
    # 1.3 M samples of PCM are 2.6 MB: three messages.
    engine = FakeEngine([chunk(0, 1_300_000, [TimedWord(Span(0, 4), 0, 1_000)], 4, last=True)])
    messages = await synthesize(engine, "Long")
    assert [len(m.words) for m in messages] == [1, 0, 0]


async def test_a_voice_whose_language_has_no_word_boundaries_is_refused() -> None:
    with pytest.raises(WordTimestampsUnsupported, match="Spanish") as refused:
        await synthesize(FakeEngine([]), "Hola.", voice="ef_dora")
    assert refused.value.reason == "WORD_TIMESTAMPS_UNSUPPORTED"
    assert "American English (en-us)" in str(refused.value)
