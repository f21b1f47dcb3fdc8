"""SynthServicer.Synthesize against a fake engine: message sizes, accounting, cleanup."""

from __future__ import annotations

from collections.abc import AsyncGenerator, Callable
from types import SimpleNamespace
from typing import Any

import numpy as np
import pytest
from kokoropay.synth.v1 import synth_pb2

from services.common.errors import InvalidArgument
from services.synth import servicer as servicer_module
from services.synth.audio.encoders import AudioFormat, PyAVEncoder, StreamEncoder, open_encoder
from services.synth.engine.manager import GeneratedChunk
from services.synth.servicer import MAX_MESSAGE_AUDIO_BYTES, SynthServicer, split_audio
from tests.support.metrics import scrape

RATE = 24_000


class FakeEngine:
    sample_rate = RATE

    def __init__(self, chunks: list[GeneratedChunk]) -> None:
        self.catalog = SimpleNamespace(resolve=lambda _: SimpleNamespace(expression="af_bella"))
        self._chunks = chunks

    async def stream(self, *_: Any, **__: Any) -> AsyncGenerator[GeneratedChunk, None]:
        for chunk in self._chunks:
            yield chunk


class FakeContext:
    def __init__(self) -> None:
        self.callbacks: list[Callable[[Any], None]] = []

    def add_done_callback(self, callback: Callable[[Any], None]) -> None:
        self.callbacks.append(callback)

    async def abort(self, code: Any, message: str) -> None:
        raise AssertionError(f"aborted: {code} {message}")


def chunk(index: int, text_end: int, samples: int, *, is_last: bool = False) -> GeneratedChunk:
    audio = np.sin(np.arange(samples, dtype=np.float32) / 7.0).astype(np.float32) * 0.5
    return GeneratedChunk(index=index, text_end=text_end, audio=audio, is_last=is_last)


def servicer(chunks: list[GeneratedChunk]) -> SynthServicer:
    return SynthServicer(FakeEngine(chunks), max_input_chars=1000, precision="")  # type: ignore[arg-type]


def request(text: str, audio_format: int) -> synth_pb2.SynthesizeRequest:
    return synth_pb2.SynthesizeRequest(text=text, voice="af_bella", format=audio_format)


async def spoken(speed: float) -> list[synth_pb2.AudioChunk]:
    synthesis = servicer([chunk(0, 3, 2_400, is_last=True)]).Synthesize(
        synth_pb2.SynthesizeRequest(
            text="Hi.", voice="af_bella", speed=speed, format=synth_pb2.AUDIO_FORMAT_PCM
        ),
        FakeContext(),  # type: ignore[arg-type]
    )
    return [message async for message in synthesis]


# OpenAI's 0.25–4 for /v1/audio/speech, up to 5 for the listing's predictions (0.5–5); 0 is 1.
@pytest.mark.parametrize("speed", [0, 0.25, 4.0, 4.5, 5.0])
async def test_speeds_from_a_quarter_to_five_are_spoken(speed: float) -> None:
    assert (await spoken(speed))[-1].summary.characters == 3


async def test_the_first_audio_of_each_stream_is_timed_once() -> None:
    before = scrape()
    await spoken(1.0)
    after = scrape()
    assert after.delta(before, "kokoropay_synth_first_chunk_seconds_count") == 1


@pytest.mark.parametrize("speed", [0.1, 5.5, 100.0])
async def test_speeds_outside_a_quarter_to_five_are_refused(speed: float) -> None:
    with pytest.raises(InvalidArgument, match="speed"):
        await spoken(speed)


def test_split_audio_bounds_pieces_and_concatenates_back() -> None:
    audio = bytes(range(256)) * 10
    pieces = split_audio(audio, limit=1000)
    assert [len(piece) for _, piece in pieces] == [1000, 1000, 560]
    assert [offset for offset, _ in pieces] == [0, 1000, 2000]
    assert b"".join(piece for _, piece in pieces) == audio
    assert split_audio(b"") == [(0, b"")]


async def test_a_large_chunk_travels_in_pieces_that_concatenate_back_exactly() -> None:
    text = "Short. A very long sentence indeed. End."
    # The middle chunk encodes to 2.6 MB of PCM: three messages.
    chunks = [chunk(0, 7, 4_800), chunk(1, 36, 1_300_000), chunk(2, len(text), 2_400, is_last=True)]
    messages = [
        message
        async for message in servicer(chunks).Synthesize(
            request(text, synth_pb2.AUDIO_FORMAT_PCM),
            FakeContext(),  # type: ignore[arg-type]
        )
    ]
    assert len(messages) == 5
    assert all(len(message.audio) <= MAX_MESSAGE_AUDIO_BYTES for message in messages)
    expected = open_encoder(AudioFormat.PCM, RATE)
    assert b"".join(m.audio for m in messages) == b"".join(expected.encode(c.audio) for c in chunks)
    assert [message.sequence for message in messages] == list(range(5))
    assert [message.characters_consumed for message in messages] == [7, 7, 7, 36, len(text)]
    elapsed = 0.0
    for message in messages:
        assert message.start_seconds == pytest.approx(elapsed)
        assert message.duration_seconds == pytest.approx(len(message.audio) / 2 / RATE)
        elapsed += message.duration_seconds
    assert not any(message.HasField("summary") for message in messages[:-1])
    assert messages[-1].summary.audio_seconds == pytest.approx(elapsed)
    assert messages[-1].summary.characters == len(text)


async def test_the_encoder_is_closed_when_the_stream_is_abandoned(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    opened: list[StreamEncoder] = []

    def spying_open_encoder(audio_format: AudioFormat, sample_rate: int) -> StreamEncoder:
        opened.append(open_encoder(audio_format, sample_rate))
        return opened[-1]

    monkeypatch.setattr(servicer_module, "open_encoder", spying_open_encoder)
    chunks = [chunk(0, 5, 4_800), chunk(1, 10, 4_800, is_last=True)]
    stream = servicer(chunks).Synthesize(
        request("Hi there", synth_pb2.AUDIO_FORMAT_MP3),
        FakeContext(),  # type: ignore[arg-type]
    )
    await anext(stream)
    await stream.aclose()  # what grpc does to a handler whose RPC was cancelled
    (encoder,) = opened
    assert isinstance(encoder, PyAVEncoder)
    with pytest.raises(RuntimeError, match="closed"):
        encoder.encode(np.zeros(100, dtype=np.float32))


def test_closing_an_encoder_twice_or_after_finishing_is_harmless() -> None:
    encoder = open_encoder(AudioFormat.OPUS, RATE)
    encoder.encode(np.zeros(4_800, dtype=np.float32))
    encoder.finish()
    encoder.close()
    encoder.close()
