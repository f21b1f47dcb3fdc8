"""`python -m services.synth`: settings → weights → listen (NOT_SERVING) → engine → SERVING."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import TYPE_CHECKING

from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.common.logs import configure_logging
from services.common.server import ServiceSpec, serve
from services.common.settings import load_settings
from services.common.tracing import traces
from services.synth.engine.model_files import WeightsError, WeightsPaths, find_weights
from services.synth.errors import ERRORS
from services.synth.loading import LoadingSynthServicer
from services.synth.settings import SynthSettings

if TYPE_CHECKING:  # the model stack is imported at start-up, not here
    from services.synth.engine.manager import EngineManager
    from services.synth.servicer import SynthServicer

SERVICE_NAME = synth_pb2.DESCRIPTOR.services_by_name["SynthService"].full_name


def main() -> None:
    settings = load_settings(SynthSettings)
    configure_logging("synth", settings.log_level)
    try:
        weights = find_weights(settings.weights_dir)
    except WeightsError as error:
        raise SystemExit(f"error: {error}") from None
    servicer = LoadingSynthServicer()
    closers: list[Callable[[], Awaitable[None]]] = []

    async def startup() -> None:
        # The model stack is slow to import: off the event loop, while health says NOT_SERVING.
        engine, loaded = await asyncio.to_thread(_build, settings, weights)
        closers.append(engine.close)
        await engine.start()
        servicer.loaded = loaded

    async def shutdown() -> None:
        for close in closers:
            await close()

    spec = ServiceSpec(
        names=[SERVICE_NAME],
        register=lambda server: synth_pb2_grpc.add_SynthServiceServicer_to_server(servicer, server),
        errors=ERRORS,
        startup=startup,
        shutdown=shutdown,
    )
    with traces("synth"):
        asyncio.run(serve(spec, settings))


def _build(settings: SynthSettings, weights: WeightsPaths) -> tuple[EngineManager, SynthServicer]:
    """The engine and the real servicer; imports torch and the model stack."""
    from services.synth.engine.assembly import engine_from_settings
    from services.synth.engine.kokoro_backend import choose_device
    from services.synth.servicer import SynthServicer

    try:
        device = choose_device(settings.device)
    except RuntimeError as error:
        raise SystemExit(f"error: {error}") from None
    engine = engine_from_settings(settings, weights, device)
    servicer = SynthServicer(
        engine, max_input_chars=settings.max_input_chars, precision=weights.manifest.precision
    )
    return engine, servicer


if __name__ == "__main__":
    main()
