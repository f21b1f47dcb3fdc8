"""Encode 24 kHz mono float32 chunk by chunk into a stream that concatenates to one valid file.

PyAV (FFmpeg) writes the container into an in-memory sink that is drained after every chunk,
so each chunk's bytes can be sent as soon as they exist. The sink cannot seek: muxers that
would go back to patch a header (WAV sizes, FLAC totals, MP3's Xing frame) then write the
streaming form instead, which is what a stream must be.

MP3 and AAC decoders play the encoder's priming samples as silence before the audio, and ADTS
and header-less MP3 have nowhere to say so. We skip that many samples at the very start of
the stream, which Kokoro always begins with a pause, so the decoded timeline lines up with the
model's and the decoded duration exceeds the PCM's only by the last frame's padding.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from enum import Enum
from typing import Protocol

import av
import numpy as np
import numpy.typing as npt

Samples = npt.NDArray[np.float32]


class AudioFormat(Enum):
    MP3 = "mp3"
    OPUS = "opus"
    AAC = "aac"
    FLAC = "flac"
    WAV = "wav"
    PCM = "pcm"


@dataclass(frozen=True)
class _Codec:
    container: str
    codec: str
    # The codec's own rate when it cannot take 24 kHz (Opus); PyAV resamples.
    rate: int | None = None
    # Samples a decoder emits before the first input sample (see the module docstring).
    priming: int = 0
    # Muxer options: small Ogg pages so each chunk's packets leave at once.
    options: tuple[tuple[str, str], ...] = ()
    bit_rate: int | None = None


# libmp3lame: 576 encoder delay + 529 decoder delay. FFmpeg's AAC encoder: one 1024-sample frame.
_CODECS: dict[AudioFormat, _Codec] = {
    AudioFormat.MP3: _Codec("mp3", "libmp3lame", priming=1105, bit_rate=64_000),
    AudioFormat.OPUS: _Codec(
        "ogg", "libopus", rate=48_000, options=(("page_duration", "20000"),), bit_rate=32_000
    ),
    AudioFormat.AAC: _Codec("adts", "aac", priming=1024, bit_rate=64_000),
    AudioFormat.FLAC: _Codec("flac", "flac"),
    AudioFormat.WAV: _Codec("wav", "pcm_s16le"),
}

# Nothing in the stream should vary run to run (encoder version tags, dates).
_BITEXACT = (("fflags", "+bitexact"),)


class StreamEncoder(Protocol):
    def encode(self, samples: Samples) -> bytes:
        """Bytes that became final with these samples (possibly none)."""
        ...

    def finish(self) -> bytes:
        """The rest of the stream; the encoder is unusable afterwards."""
        ...

    def close(self) -> None:
        """Release the encoder without finishing; safe at any time, from any thread, repeatedly."""
        ...


def _to_int16(samples: Samples) -> npt.NDArray[np.int16]:
    return (np.clip(samples, -1.0, 1.0) * 32767.0).round().astype("<i2")


class PcmEncoder:
    """Raw 16-bit little-endian samples, no header: nothing to buffer."""

    def encode(self, samples: Samples) -> bytes:
        return _to_int16(samples).tobytes()

    def finish(self) -> bytes:
        return b""

    def close(self) -> None:
        pass


class _DrainedSink:
    """A write-only file for PyAV. No `seek`, so muxers write their streaming form."""

    def __init__(self) -> None:
        self._buffer = bytearray()

    def write(self, data: bytes) -> int:
        self._buffer += data
        return len(data)

    def drain(self) -> bytes:
        data = bytes(self._buffer)
        self._buffer.clear()
        return data


class PyAVEncoder:
    """One container and codec, fed chunk by chunk."""

    def __init__(self, audio_format: AudioFormat, sample_rate: int) -> None:
        codec = _CODECS[audio_format]
        self._sample_rate = sample_rate
        self._to_skip = codec.priming
        self._sink = _DrainedSink()
        self._container = av.open(
            self._sink,
            mode="w",
            format=codec.container,
            options=dict(_BITEXACT + codec.options),
        )
        stream = self._container.add_stream(codec.codec, rate=codec.rate or sample_rate)
        assert isinstance(stream, av.AudioStream)
        self._stream = stream
        self._stream.layout = "mono"
        if codec.bit_rate is not None:
            self._stream.bit_rate = codec.bit_rate
        self._samples_in = 0
        self._guard = threading.Lock()
        self._busy = False
        self._closed = False
        self._close_when_idle = False

    def encode(self, samples: Samples) -> bytes:
        with self._in_use():
            return self._encode(samples)

    def finish(self) -> bytes:
        with self._in_use():
            for packet in self._stream.encode(None):
                self._container.mux(packet)
            self._release()
            return self._sink.drain()

    def close(self) -> None:
        # A cancelled RPC closes from the event loop while a worker thread may still be
        # encoding: PyAV is not thread-safe, so that thread releases the container when done.
        with self._guard:
            if self._busy:
                self._close_when_idle = True
            else:
                self._release()

    @contextmanager
    def _in_use(self) -> Iterator[None]:
        with self._guard:
            if self._closed:
                raise RuntimeError("the encoder is closed")
            self._busy = True
        try:
            yield
        finally:
            with self._guard:
                self._busy = False
                if self._close_when_idle:
                    self._release()

    def _release(self) -> None:
        if not self._closed:
            self._closed = True
            self._container.close()

    def _encode(self, samples: Samples) -> bytes:
        if self._to_skip:
            skipped = min(self._to_skip, len(samples))
            samples = samples[skipped:]
            self._to_skip -= skipped
        if len(samples):
            frame = av.AudioFrame.from_ndarray(
                np.ascontiguousarray(samples, dtype=np.float32).reshape(1, -1),
                format="flt",
                layout="mono",
            )
            frame.sample_rate = self._sample_rate
            frame.pts = self._samples_in
            self._samples_in += len(samples)
            for packet in self._stream.encode(frame):
                self._container.mux(packet)
        return self._sink.drain()


def open_encoder(audio_format: AudioFormat, sample_rate: int) -> StreamEncoder:
    """A fresh encoder for one stream."""
    if audio_format is AudioFormat.PCM:
        return PcmEncoder()
    return PyAVEncoder(audio_format, sample_rate)
