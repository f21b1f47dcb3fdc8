"""SynthService over gRPC: validate, resolve the voice, stream encoded chunks as they are spoken.

Handlers raise; `ERRORS` (errors.py) is the one table that turns what they raise into a status
(services/common/errors.py), a model failure mid-stream included (INTERNAL, logged with its
traceback). Who may call each RPC is declared in synth.proto.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator
from contextlib import aclosing

import grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.common.errors import InvalidArgument
from services.synth import metrics
from services.synth.audio.encoders import AudioFormat, StreamEncoder, open_encoder
from services.synth.engine.manager import EngineManager, GeneratedChunk, SynthesisCancelled
from services.synth.engine.timestamps import place_words
from services.synth.errors import InputTooLong, WordTimestampsUnsupported
from services.synth.models import model_info, resolve_model
from services.synth.voices import LANGUAGES, VoiceKind

_log = logging.getLogger("synth.rpc")

SERVICE_NAME: str = synth_pb2.DESCRIPTOR.services_by_name["SynthService"].full_name


# 0.25–4 is OpenAI's range (the gateway's /v1/audio/speech keeps it); up to 5 serves the hosted
# listing's predictions (0.5–5).
MIN_SPEED, MAX_SPEED = 0.25, 5.0
# Well under gRPC's default 4 MiB receive limit: a long chunk of PCM/WAV at a slow speed
# encodes to more than that, so its bytes travel in several messages.
MAX_MESSAGE_AUDIO_BYTES = 1 << 20

_FORMATS: dict[int, AudioFormat] = {
    synth_pb2.AUDIO_FORMAT_UNSPECIFIED: AudioFormat.MP3,
    synth_pb2.AUDIO_FORMAT_MP3: AudioFormat.MP3,
    synth_pb2.AUDIO_FORMAT_OPUS: AudioFormat.OPUS,
    synth_pb2.AUDIO_FORMAT_AAC: AudioFormat.AAC,
    synth_pb2.AUDIO_FORMAT_FLAC: AudioFormat.FLAC,
    synth_pb2.AUDIO_FORMAT_WAV: AudioFormat.WAV,
    synth_pb2.AUDIO_FORMAT_PCM: AudioFormat.PCM,
}
_VOICE_KINDS = {
    VoiceKind.BUILTIN: synth_pb2.VOICE_KIND_BUILTIN,
    VoiceKind.ALIAS: synth_pb2.VOICE_KIND_ALIAS,
    VoiceKind.BLEND: synth_pb2.VOICE_KIND_BLEND,
}


class SynthServicer(synth_pb2_grpc.SynthServiceServicer):
    def __init__(self, engine: EngineManager, *, max_input_chars: int, precision: str) -> None:
        self._engine = engine
        self._max_input_chars = max_input_chars
        self._model = model_info(precision)

    async def Synthesize(
        self, request: synth_pb2.SynthesizeRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[synth_pb2.AudioChunk]:
        text = request.text
        if not text.strip():
            raise InvalidArgument("text is empty")
        if len(text) > self._max_input_chars:
            raise InputTooLong(len(text), self._max_input_chars)
        speed = request.speed or 1.0
        if not MIN_SPEED <= speed <= MAX_SPEED:
            raise InvalidArgument(f"speed {request.speed:g} is outside {MIN_SPEED}–{MAX_SPEED}")
        audio_format = _FORMATS.get(request.format)
        if audio_format is None:
            raise InvalidArgument(f"unknown format {request.format}")
        model = resolve_model(request.model)
        catalog = self._engine.catalog
        voice = catalog.resolve(request.voice)
        if request.word_timestamps and not catalog.has_word_timestamps(voice):
            raise WordTimestampsUnsupported(
                request.voice.strip(), LANGUAGES[voice.language_code], catalog.timed_languages
            )

        started = time.perf_counter()
        first_chunk_ms: float | None = None
        cancelled = SynthesisCancelled()
        # Fires however the RPC ends (client cancel, deadline, disconnect): the worker stops.
        context.add_done_callback(lambda _: cancelled.set())
        encoder = open_encoder(audio_format, self._engine.sample_rate)
        sample_rate = self._engine.sample_rate
        samples_sent = 0
        sequence = 0
        characters_sent = 0
        chunks = self._engine.stream(
            text, voice, speed, cancelled, word_timestamps=request.word_timestamps
        )
        try:
            async with aclosing(chunks):
                async for chunk in chunks:
                    if not len(chunk.audio) and not chunk.is_last:
                        continue  # a chunk of bare punctuation says nothing
                    audio = await _encode(encoder, chunk)
                    chunk_start = samples_sent / sample_rate
                    chunk_seconds = len(chunk.audio) / sample_rate
                    pieces = split_audio(audio)
                    words = _word_timestamps(text, chunk, samples_sent, sample_rate)
                    for index, (offset, piece) in enumerate(pieces):
                        last_piece = index == len(pieces) - 1
                        share = len(piece) / len(audio) if audio else 1.0
                        message = synth_pb2.AudioChunk(
                            audio=piece,
                            sequence=sequence,
                            start_seconds=chunk_start + chunk_seconds * offset / max(len(audio), 1),
                            duration_seconds=chunk_seconds * share,
                            # Characters count as spoken once all of their audio has gone.
                            characters_consumed=chunk.text_end if last_piece else characters_sent,
                        )
                        if index == 0:
                            message.words.extend(words)
                        sequence += 1
                        if chunk.is_last and last_piece:
                            message.summary.CopyFrom(
                                synth_pb2.SynthesisSummary(
                                    characters=len(text),
                                    audio_seconds=(samples_sent + len(chunk.audio)) / sample_rate,
                                    voice=voice.expression,
                                    model=model,
                                )
                            )
                        if first_chunk_ms is None:
                            first_chunk_ms = (time.perf_counter() - started) * 1e3
                            metrics.FIRST_CHUNK_SECONDS.observe(first_chunk_ms / 1e3)
                        yield message
                    samples_sent += len(chunk.audio)
                    characters_sent = chunk.text_end
        finally:
            encoder.close()
        _log.info(
            "synthesized %d characters, %.2f s of audio",
            len(text),
            samples_sent / sample_rate,
            extra={
                "voice": voice.expression,
                "format": audio_format.value,
                "chunks": sequence,
                "first_chunk_ms": round(first_chunk_ms or 0.0, 1),
                "total_ms": round((time.perf_counter() - started) * 1e3, 1),
            },
        )

    async def ListVoices(
        self, request: synth_pb2.ListVoicesRequest, context: grpc.aio.ServicerContext
    ) -> synth_pb2.ListVoicesResponse:
        return synth_pb2.ListVoicesResponse(
            voices=[
                synth_pb2.Voice(
                    id=entry.id,
                    language=entry.language,
                    gender=entry.gender,
                    kind=_VOICE_KINDS[entry.kind],
                    target=entry.target,
                    word_timestamps=entry.word_timestamps,
                )
                for entry in self._engine.catalog.entries()
            ]
        )

    async def ListModels(
        self, request: synth_pb2.ListModelsRequest, context: grpc.aio.ServicerContext
    ) -> synth_pb2.ListModelsResponse:
        info = self._model
        return synth_pb2.ListModelsResponse(
            models=[
                synth_pb2.Model(
                    id=info.id,
                    aliases=list(info.aliases),
                    description=info.description,
                    sample_rate=info.sample_rate,
                )
            ]
        )


def split_audio(audio: bytes, limit: int = MAX_MESSAGE_AUDIO_BYTES) -> list[tuple[int, bytes]]:
    """(offset, piece) pairs of at most `limit` bytes that concatenate to `audio`; one if empty."""
    if not audio:
        return [(0, b"")]
    return [(offset, audio[offset : offset + limit]) for offset in range(0, len(audio), limit)]


def _word_timestamps(
    text: str, chunk: GeneratedChunk, samples_sent: int, sample_rate: int
) -> list[synth_pb2.WordTimestamp]:
    """The chunk's words, timed from the start of the stream (`samples_sent` came before it)."""
    if chunk.words is None:
        return []
    placed = place_words(
        chunk.words,
        stream_offset_samples=samples_sent,
        sample_rate=sample_rate,
        trimmed_head_samples=chunk.trimmed_head_samples,
        trimmed_tail_samples=chunk.trimmed_tail_samples,
    )
    return [
        synth_pb2.WordTimestamp(
            text=word.span.of(text),
            start_seconds=word.start_seconds,
            end_seconds=word.end_seconds,
            text_start=word.span.start,
            text_end=word.span.end,
        )
        for word in placed
    ]


async def _encode(encoder: StreamEncoder, chunk: GeneratedChunk) -> bytes:
    """This chunk's bytes (and the stream's tail on the last), encoded off the event loop."""

    def encode() -> bytes:
        data = encoder.encode(chunk.audio) if len(chunk.audio) else b""
        return data + encoder.finish() if chunk.is_last else data

    return await asyncio.to_thread(encode)
