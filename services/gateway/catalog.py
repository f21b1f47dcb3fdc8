"""What synth speaks with, cached: voices and models, for listing and for validating requests.

A request naming an unknown voice or model is refused here, before anything is reserved. The
cache is refreshed after `ttl` seconds by one fetch while callers keep using the old lists;
when synth cannot be reached the old lists are served rather than none, and synth is not asked
again for a few seconds. With nothing cached yet, concurrent callers share one fetch.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Generic, TypeVar

from services.common.voice_expressions import VoiceExpressionError, parse_voice_expression
from services.gateway.clients import Model, SynthClient, Voice

T = TypeVar("T")

# After a failed refresh the old lists are served this long before synth is asked again.
RETRY_AFTER_SECONDS = 5.0


@dataclass
class _Entry(Generic[T]):
    value: T
    fetched_at: float


class _Cached(Generic[T]):
    """One fetch at a time; a stale value is served while it runs and after it fails."""

    def __init__(
        self,
        fetch: Callable[[], Awaitable[T]],
        ttl: float,
        *,
        retry_after: float = RETRY_AFTER_SECONDS,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._retry_after = retry_after
        self._clock = clock
        self._entry: _Entry[T] | None = None
        self._retry_at = float("-inf")
        self._refreshing: asyncio.Future[T] | None = None

    async def get(self) -> T:
        entry = self._entry
        if entry is not None:
            now = self._clock()
            fresh = now - entry.fetched_at < self._ttl
            if fresh or now < self._retry_at or self._refreshing is not None:
                return entry.value
        if self._refreshing is None:
            refreshing = asyncio.ensure_future(self._refresh())
            # Retrieve a failure nobody awaits any more (its callers were cancelled).
            refreshing.add_done_callback(lambda done: done.cancelled() or done.exception())
            self._refreshing = refreshing
        # Shielded: a caller that gives up does not cancel the fetch the others wait on.
        return await asyncio.shield(self._refreshing)

    async def _refresh(self) -> T:
        try:
            value = await self._fetch()
        except Exception:
            self._retry_at = self._clock() + self._retry_after
            if self._entry is None:
                raise
            return self._entry.value
        finally:
            self._refreshing = None
        self._entry = _Entry(value, self._clock())
        return value


class Catalog:
    def __init__(self, synth: SynthClient, ttl: float) -> None:
        self._voices = _Cached(synth.list_voices, ttl)
        self._models = _Cached(synth.list_models, ttl)

    async def voices(self) -> list[Voice]:
        return await self._voices.get()

    async def models(self) -> list[Model]:
        return await self._models.get()

    async def model_names(self) -> list[str]:
        """Every accepted model name: ids, then aliases."""
        models = await self.models()
        return [m.id for m in models] + [alias for m in models for alias in m.aliases]

    async def resolved_model(self, name: str) -> str:
        """The id of the model `name` names (an id or one of its aliases)."""
        for model in await self.models():
            if name == model.id or name in model.aliases:
                return model.id
        return name

    async def resolved_voice(self, expression: str) -> str:
        """`expression` as the builtin voices it mixes: aliases and blends expanded, weights
        normalized to sum to 1 and merged, names sorted. Two expressions that speak alike
        resolve alike (`alloy` is `af_alloy`; `a(2)+b(1)` is `b(2)+a(4)`)."""
        voices = {voice.id: voice for voice in await self.voices()}
        weights: dict[str, float] = {}

        def add(text: str, share: float, depth: int) -> None:
            components = parse_voice_expression(text)
            total = sum(weight for _, weight in components)
            for name, weight in components:
                part = share * weight / total
                voice = voices.get(name)
                if voice is not None and voice.kind != "builtin" and voice.target and depth < 4:
                    add(voice.target, part, depth + 1)
                else:
                    weights[name] = weights.get(name, 0.0) + part

        add(expression.strip(), 1.0, 0)
        return "+".join(f"{name}({weight:.6f})" for name, weight in sorted(weights.items()))

    async def word_timestamps_problem(self, expression: str) -> str | None:
        """Why synth could not time the words `expression` speaks, or None when it can (or when
        `expression` is not a voice synth knows: voice_problem says so). A blend speaks, and is
        timed, as its first voice."""
        voices = {voice.id: voice for voice in await self.voices()}
        try:
            first = voices.get(parse_voice_expression(expression)[0][0])
        except VoiceExpressionError:
            return None
        if first is None or first.word_timestamps:
            return None
        timed = sorted({v.language for v in voices.values() if v.word_timestamps}) or ["none"]
        return (
            f"word timestamps are not available for voice {expression.strip()!r}: its language "
            f"({first.language}) is phonemized without word boundaries, so there are no word "
            f"durations to report; languages with word timestamps: {', '.join(timed)}"
        )

    async def voice_problem(self, expression: str) -> str | None:
        """Why synth would refuse `expression`, or None when it names known voices."""
        known = {voice.id for voice in await self.voices()}
        if expression.strip() in known:
            return None
        try:
            components = parse_voice_expression(expression)
        except VoiceExpressionError as error:
            return str(error)
        for name, _ in components:
            if name not in known:
                return f"unknown voice {name!r}; see /v1/audio/voices"
        return None
