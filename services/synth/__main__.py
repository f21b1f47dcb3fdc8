"""`python -m services.synth`: settings → weights → engine → servicer → server."""

from __future__ import annotations

import asyncio

from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.common.logs import configure_logging
from services.common.server import ServiceSpec, serve
from services.common.settings import load_settings
from services.synth.settings import MODEL_MAX_PHONEMES, SynthSettings

SERVICE_NAME = synth_pb2.DESCRIPTOR.services_by_name["SynthService"].full_name


def main() -> None:
    settings = load_settings(SynthSettings)
    configure_logging("synth", settings.log_level)
    # Imported here, after settings: torch and the model stack are slow to import.
    from services.synth.engine.kokoro_backend import KokoroBackend, choose_device
    from services.synth.engine.manager import EngineManager
    from services.synth.engine.model_files import WeightsError, find_weights
    from services.synth.servicer import ERRORS, SynthServicer
    from services.synth.text.chunking import ChunkBudgets
    from services.synth.text.g2p import build_phonemizers

    try:
        weights = find_weights(settings.weights_dir)
        device = choose_device(settings.device)
    except (WeightsError, RuntimeError) as error:
        raise SystemExit(f"error: {error}") from None
    engine = EngineManager(
        KokoroBackend(weights, device, settings.torch_threads),
        build_phonemizers,
        ChunkBudgets(settings.first_chunk_phonemes, settings.chunk_phonemes, MODEL_MAX_PHONEMES),
        max_concurrent=settings.max_concurrent,
        lookahead_chunks=settings.lookahead_chunks,
        warm_up=settings.warm_up,
    )
    servicer = SynthServicer(
        engine,
        max_input_chars=settings.max_input_chars,
        precision=weights.manifest.precision,
    )
    spec = ServiceSpec(
        names=[SERVICE_NAME],
        register=lambda server: synth_pb2_grpc.add_SynthServiceServicer_to_server(servicer, server),
        errors=ERRORS,
        startup=engine.start,
        shutdown=engine.close,
    )
    asyncio.run(serve(spec, settings))


if __name__ == "__main__":
    main()
