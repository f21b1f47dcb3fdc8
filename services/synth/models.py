"""The one model synth serves, the names it answers to, and how it describes its weights."""

from __future__ import annotations

from dataclasses import dataclass

MODEL_ID = "kokoro"
# Where hexgrad publishes the model: `make weights` downloads from it, and KModel and KPipeline
# want the id even when every file is local (they never contact it then).
HUB_REPO_ID = "hexgrad/Kokoro-82M"
# OpenAI's speech model names, so OpenAI clients work unchanged; all speak with Kokoro.
MODEL_ALIASES = ("tts-1", "tts-1-hd", "gpt-4o-mini-tts")
SAMPLE_RATE = 24_000


class UnknownModelError(ValueError):
    """A model name that is neither `kokoro` nor one of its aliases."""


@dataclass(frozen=True)
class ModelInfo:
    id: str
    aliases: tuple[str, ...]
    description: str
    sample_rate: int


def resolve_model(name: str) -> str:
    """The canonical model id for a requested name; empty means the default."""
    requested = name.strip()
    if not requested or requested == MODEL_ID or requested in MODEL_ALIASES:
        return MODEL_ID
    known = ", ".join((MODEL_ID, *MODEL_ALIASES))
    shown = requested if len(requested) <= 64 else requested[:64] + "…"  # never echo a huge field
    raise UnknownModelError(f"unknown model {shown!r}; known models: {known}")


def model_info(precision: str) -> ModelInfo:
    """What ListModels says, with the precision the weights manifest declares."""
    description = "Kokoro-82M v1.0"
    if precision:
        description += f", {precision}"
    return ModelInfo(MODEL_ID, MODEL_ALIASES, description, SAMPLE_RATE)
