"""Incremental encoders: chunks of a sine in, one decodable file out, in every format."""

from __future__ import annotations

import io

import av
import numpy as np
import pytest

from services.synth.audio.encoders import AudioFormat, open_encoder

RATE = 24_000


def sine(seconds: float, frequency: float = 440.0) -> np.ndarray:
    t = np.arange(int(seconds * RATE)) / RATE
    return (0.4 * np.sin(2 * np.pi * frequency * t)).astype(np.float32)


def decode(data: bytes, audio_format: AudioFormat) -> np.ndarray:
    """Decoded mono samples at 24 kHz (Opus decodes at 48 kHz: every second one is kept)."""
    if audio_format is AudioFormat.PCM:
        return np.frombuffer(data, dtype="<i2").astype(np.float32) / 32767.0
    with av.open(io.BytesIO(data), mode="r") as container:
        frames = [frame for frame in container.decode(audio=0)]
    rate = frames[0].sample_rate
    samples = np.concatenate([frame.to_ndarray().reshape(-1) for frame in frames])
    samples = samples.astype(np.float32)
    if frames[0].format.name.startswith("s16"):
        samples /= 32767.0
    return samples[:: rate // RATE]


def encode_in_chunks(audio_format: AudioFormat, samples: np.ndarray, pieces: int) -> list[bytes]:
    encoder = open_encoder(audio_format, RATE)
    out = [encoder.encode(part) for part in np.array_split(samples, pieces)]
    out.append(encoder.finish())
    return out


@pytest.mark.parametrize("audio_format", list(AudioFormat))
def test_chunks_concatenate_to_a_file_of_the_same_duration(audio_format: AudioFormat) -> None:
    pcm = sine(6.0)
    parts = encode_in_chunks(audio_format, pcm, pieces=6)
    decoded = decode(b"".join(parts), audio_format)
    assert len(decoded) == pytest.approx(len(pcm), rel=0.01)


@pytest.mark.parametrize("audio_format", list(AudioFormat))
def test_each_chunk_yields_bytes_before_the_stream_ends(audio_format: AudioFormat) -> None:
    parts = encode_in_chunks(audio_format, sine(3.0), pieces=3)
    # Every chunk but a codec's first (still priming) brings audio of its own.
    assert all(len(part) > 0 for part in parts[1:-1])


@pytest.mark.parametrize("audio_format", [AudioFormat.MP3, AudioFormat.AAC, AudioFormat.OPUS])
def test_lossy_codecs_keep_the_timeline(audio_format: AudioFormat) -> None:
    """A tone starting at 1.0 s decodes starting at 1.0 s: priming is compensated."""
    pcm = np.zeros(3 * RATE, dtype=np.float32)
    pcm[RATE : 2 * RATE] = sine(1.0, 1000.0)
    decoded = decode(b"".join(encode_in_chunks(audio_format, pcm, pieces=4)), audio_format)
    onset = int(np.argmax(np.abs(decoded) > 0.1))
    assert abs(onset - RATE) < 0.005 * RATE


def test_wav_header_declares_an_unknown_length() -> None:
    header = encode_in_chunks(AudioFormat.WAV, sine(0.1), pieces=1)[0][:44]
    assert header[:4] == b"RIFF" and header[8:12] == b"WAVE"
    assert header[4:8] == b"\xff\xff\xff\xff"
    assert header[36:40] == b"data" and header[40:44] == b"\xff\xff\xff\xff"


def test_pcm_is_headerless_s16le() -> None:
    samples = np.array([0.0, 0.5, -1.0, 2.0], dtype=np.float32)
    data = b"".join(encode_in_chunks(AudioFormat.PCM, samples, pieces=1))
    assert np.frombuffer(data, "<i2").tolist() == [0, 16384, -32767, 32767]
