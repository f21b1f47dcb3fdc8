"""Voice previews: one short clip per voice, made once by synth and kept in memory.

Browsing voices must cost nothing and start at once, so the clips are synthesized by the
dashboard itself (synth's Synthesize, callable by DASHBOARD, billed to no one) on first request
and cached for the life of the process. Only voices synth lists can be previewed, so the cache
holds at most one clip per listed voice and no request can make us synthesize anything else.
"""

from __future__ import annotations

import asyncio
import time

from kokoropay.synth.v1 import synth_pb2

from services.dashboard.clients import Backends

PREVIEW_TEXT = "Hello! This is how I sound. Type anything and I will read it to you."
# Voices change only when synth is redeployed.
VOICES_TTL_SECONDS = 300.0
# Model calls for previews at once: a browsing customer must not crowd out paying requests.
CONCURRENT_PREVIEWS = 2
PREVIEW_TIMEOUT_SECONDS = 120.0


class UnknownVoice(Exception):
    """A preview asked for a voice synth does not list."""


class VoicePreviews:
    def __init__(self, backends: Backends) -> None:
        self._backends = backends
        self._voices: list[synth_pb2.Voice] = []
        self._voices_at = -VOICES_TTL_SECONDS
        self._clips: dict[str, bytes] = {}
        self._making: dict[str, asyncio.Lock] = {}
        self._slots = asyncio.Semaphore(CONCURRENT_PREVIEWS)

    async def voices(self) -> list[synth_pb2.Voice]:
        """Every voice synth accepts, built-ins first, refreshed every few minutes."""
        if time.monotonic() - self._voices_at > VOICES_TTL_SECONDS or not self._voices:
            self._voices = await self._backends.list_voices()
            self._voices_at = time.monotonic()
        return self._voices

    async def clip(self, voice: str) -> bytes:
        """The voice's MP3 preview; UnknownVoice for a voice synth does not list."""
        if voice in self._clips:
            return self._clips[voice]
        if voice not in {v.id for v in await self.voices()}:
            raise UnknownVoice(voice)
        # One synthesis per voice however many people ask at once; the rest wait for it.
        lock = self._making.setdefault(voice, asyncio.Lock())
        async with lock:
            if voice not in self._clips:
                async with self._slots:
                    self._clips[voice] = await self._backends.synthesize_mp3(
                        PREVIEW_TEXT, voice, PREVIEW_TIMEOUT_SECONDS
                    )
        return self._clips[voice]
