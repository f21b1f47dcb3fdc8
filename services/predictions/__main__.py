"""`python -m services.predictions`: settings → store, upstreams → servicer → server.

The workers that run the predictions are another process: `python -m services.predictions.worker`.
"""

from __future__ import annotations

import asyncio

from kokoropay.predictions.v1 import predictions_pb2_grpc

from services.common.logs import configure_logging
from services.common.server import ServiceSpec, serve
from services.common.settings import load_settings
from services.common.tracing import traces
from services.predictions.clients import Upstreams, VoiceCatalog
from services.predictions.servicer import ERRORS, SERVICE_NAME, PredictionServicer
from services.predictions.settings import PredictionsSettings
from services.predictions.signing import UrlSigner, url_signer
from services.predictions.store import PostgresOutputs, PredictionStore


async def run(settings: PredictionsSettings, signer: UrlSigner) -> None:
    store = PredictionStore()
    upstreams = Upstreams(settings.ledger_address, settings.synth_address, settings.tls_identity())
    servicer = PredictionServicer(
        store,
        PostgresOutputs(store),
        upstreams,
        VoiceCatalog(upstreams.synth, settings.voice_cache_seconds),
        signer,
        settings,
    )

    async def startup() -> None:
        await store.open(settings)

    async def shutdown() -> None:
        await upstreams.close()
        await store.close()

    spec = ServiceSpec(
        names=[SERVICE_NAME],
        register=lambda server: predictions_pb2_grpc.add_PredictionServiceServicer_to_server(
            servicer, server
        ),
        errors=ERRORS,
        startup=startup,
        shutdown=shutdown,
    )
    await serve(spec, settings)


def main() -> None:
    settings = load_settings(PredictionsSettings)
    configure_logging("predictions", settings.log_level)
    with traces("predictions"):
        asyncio.run(run(settings, url_signer(settings)))


if __name__ == "__main__":
    main()
