"""`python -m services.ledger`: settings → migrations and pool → store → servicer → server."""

from __future__ import annotations

import asyncio
import sys
from pathlib import Path

import grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from psycopg_pool import AsyncConnectionPool

from services.common.interceptors import OperatorAuthInterceptor
from services.common.logs import configure_logging
from services.common.postgres import apply_migrations
from services.common.server import ServiceSpec, serve
from services.common.settings import load_settings, read_secret
from services.ledger.servicer import LedgerServicer
from services.ledger.settings import LedgerSettings
from services.ledger.store import LedgerStore
from services.ledger.sweeper import HoldSweeper

SERVICE_NAME = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"].full_name
ADMIN_METHODS = frozenset(
    f"/{SERVICE_NAME}/{method}" for method in ("OpenAccount", "Grant", "SetUnlimited")
)
MIGRATIONS = Path(__file__).resolve().parent / "migrations"


def build_spec(settings: LedgerSettings, operator_token: str) -> ServiceSpec:
    """The ledger as the shared bootstrap runs it; nothing connects until start-up."""
    pool: AsyncConnectionPool = AsyncConnectionPool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_size,
        timeout=settings.pool_timeout_seconds,
        kwargs={"application_name": "kokoropay-ledger"},
        open=False,
    )
    store = LedgerStore(pool)
    servicer = LedgerServicer(
        store, settings.default_hold_ttl_seconds, settings.max_hold_ttl_seconds
    )
    sweeper = HoldSweeper(store, settings.sweep_interval_seconds, settings.sweep_batch_size)

    def register(server: grpc.aio.Server) -> None:
        ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server)

    async def startup() -> None:
        await apply_migrations(settings.database_url, "ledger", MIGRATIONS)
        await pool.open(wait=True, timeout=15)
        sweeper.start()

    async def shutdown() -> None:
        await sweeper.stop()
        await pool.close()

    return ServiceSpec(
        names=[SERVICE_NAME],
        register=register,
        startup=startup,
        shutdown=shutdown,
        interceptors=[OperatorAuthInterceptor(ADMIN_METHODS, operator_token)],
    )


def main() -> None:
    settings = load_settings(LedgerSettings)
    configure_logging("ledger", settings.log_level)
    configured = settings.operator_token.get_secret_value() if settings.operator_token else None
    operator_token = read_secret(configured, "operator-token")
    if not operator_token:
        sys.exit(
            "error: no operator token: set KOKOROPAY_OPERATOR_TOKEN or write .data/operator-token"
        )
    asyncio.run(
        serve(build_spec(settings, operator_token), settings.bind_address, settings.grace_seconds)
    )


if __name__ == "__main__":
    main()
