"""The engine as synth's settings describe it: the one place SYNTH_* settings become an
EngineManager, for the service and for anything that measures it (bench/)."""

from __future__ import annotations

from services.synth.engine.kokoro_backend import KokoroBackend
from services.synth.engine.manager import BatchPolicy, EngineManager, PhonemizerFactory
from services.synth.engine.model_files import WeightsPaths
from services.synth.settings import MODEL_MAX_PHONEMES, SynthSettings
from services.synth.text.chunking import ChunkBudgets
from services.synth.text.g2p import build_phonemizers


def engine_from_settings(
    settings: SynthSettings,
    weights: WeightsPaths,
    device: str,
    phonemizers: PhonemizerFactory = build_phonemizers,
) -> EngineManager:
    """Kokoro from `weights` on `device` (already chosen), chunked, scheduled and batched as
    `settings` say. `phonemizers` is the installed G2P but for benches replaying recorded
    phonemes on a machine without it (bench/recorded_g2p.py)."""
    return EngineManager(
        KokoroBackend(weights, device, settings.torch_threads),
        phonemizers,
        chunk_budgets(settings, device),
        max_concurrent=settings.max_concurrent,
        lookahead_chunks=settings.lookahead_chunks,
        warm_up=settings.warm_up,
        batching=(
            BatchPolicy(
                settings.batch_max_phonemes,
                settings.batch_wait_ms / 1e3,
                settings.batch_max_streams,
            )
            if settings.batching_on(device)
            else None
        ),
    )


def chunk_budgets(settings: SynthSettings, device: str) -> ChunkBudgets:
    """How the engine cuts text into model calls on `device` (also what bench/recorded_g2p.py
    plans, so that recorded phonemes cover the same calls)."""
    return ChunkBudgets(
        settings.first_chunk_phonemes, settings.chunk_budget(device), MODEL_MAX_PHONEMES
    )
