"""`python -m services.ledger`: settings → store → servicer and sweeper → server."""

from __future__ import annotations

import asyncio

from kokoropay.ledger.v1 import ledger_pb2_grpc

from services.common.logs import configure_logging
from services.common.server import ServiceSpec, serve
from services.common.settings import load_settings
from services.common.tracing import traces
from services.ledger.servicer import ERRORS, SERVICE_NAME, LedgerServicer
from services.ledger.settings import LedgerSettings
from services.ledger.store import LedgerStore
from services.ledger.sweeper import HoldSweeper


def main() -> None:
    settings = load_settings(LedgerSettings)
    configure_logging("ledger", settings.log_level)

    store = LedgerStore()
    servicer = LedgerServicer(store, settings)
    sweeper = HoldSweeper(store, settings.sweep_interval_seconds, settings.sweep_batch_size)

    async def startup() -> None:
        await store.open(settings)
        sweeper.start()

    async def shutdown() -> None:
        await sweeper.stop()
        await store.close()

    spec = ServiceSpec(
        names=[SERVICE_NAME],
        register=lambda server: ledger_pb2_grpc.add_LedgerServiceServicer_to_server(
            servicer, server
        ),
        errors=ERRORS,
        startup=startup,
        shutdown=shutdown,
    )
    with traces("ledger"):
        asyncio.run(serve(spec, settings))


if __name__ == "__main__":
    main()
