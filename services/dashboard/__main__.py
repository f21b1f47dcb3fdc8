"""`python -m services.dashboard`: settings → metrics → gRPC clients → app → uvicorn, until
SIGTERM."""

from __future__ import annotations

import asyncio
import logging
import math

import uvicorn

from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server
from services.common.settings import load_settings
from services.common.tracing import traces
from services.common.web import DrainingServer
from services.dashboard.app import create_app
from services.dashboard.clients import Backends
from services.dashboard.payments import payments_from
from services.dashboard.settings import DashboardSettings

_log = logging.getLogger("dashboard")


async def serve(settings: DashboardSettings) -> None:
    # Its own port, never the public one: /metrics is for Prometheus, not for customers.
    metrics = start_metrics_server(settings.host, settings.metrics_listen_port)
    # gRPC channels belong to the running event loop, so they are opened inside it.
    backends = Backends(
        settings.auth_address,
        settings.ledger_address,
        settings.synth_address,
        settings.predictions_address,
        settings.tls_identity(),
        timeout=settings.rpc_timeout_seconds,
        sign_in_timeout=settings.sign_in_timeout_seconds,
        ready_timeout=settings.ready_timeout_seconds,
    )
    app = create_app(settings, backends, payments_from(settings))
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        log_config=None,
        access_log=False,
        # The client's address is worked out from X-Forwarded-For by client_address.py, with
        # the trusted proxies from our settings; uvicorn must not rewrite it first.
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.grace_seconds),
    )
    server = DrainingServer(config, app.state.draining)
    _log.info(
        "dashboard on http://%s:%d",
        settings.host,
        settings.port,
        extra={"auth": settings.auth_address, "ledger": settings.ledger_address},
    )
    try:
        await server.serve()
    finally:
        await backends.close()
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
    if not server.started:
        raise SystemExit(f"error: dashboard could not listen on {settings.host}:{settings.port}")
    _log.info("stopped")


def main() -> None:
    settings = load_settings(DashboardSettings)
    configure_logging("dashboard", settings.log_level)
    with traces("dashboard", edge=True):
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
