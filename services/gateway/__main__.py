"""`python -m services.gateway`: settings → metrics → gRPC clients → app → uvicorn, until
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
from services.gateway.app import create_app
from services.gateway.clients import GrpcUpstreams
from services.gateway.settings import GatewaySettings

_log = logging.getLogger("gateway")


async def serve(settings: GatewaySettings) -> None:
    # Its own port, never the public one: /metrics is for Prometheus, not for customers.
    metrics = start_metrics_server(settings.host, settings.metrics_listen_port)
    # gRPC channels belong to the running event loop, so they are opened inside it.
    upstreams = GrpcUpstreams(
        settings.auth_address,
        settings.ledger_address,
        settings.synth_address,
        settings.predictions_address,
        timeout=settings.rpc_timeout_seconds,
        ready_timeout=settings.ready_timeout_seconds,
        tls=settings.tls_identity(),
    )
    app = create_app(settings, upstreams)
    config = uvicorn.Config(
        app,
        host=settings.host,
        port=settings.port,
        # Logging is ours (JSON, with request ids); uvicorn's access log would duplicate it.
        log_config=None,
        access_log=False,
        # The client's address (what the invalid-key throttle counts by) is worked out from
        # X-Forwarded-For in routes/common.py, believing GATEWAY_TRUSTED_PROXIES only; uvicorn
        # must not rewrite the peer first (by default it believes 127.0.0.1).
        proxy_headers=False,
        timeout_graceful_shutdown=math.ceil(settings.grace_seconds),
        lifespan="on",
    )
    server = DrainingServer(config, app.state.draining)
    _log.info(
        "gateway on http://%s:%d",
        settings.host,
        settings.port,
        extra={
            "auth": settings.auth_address,
            "ledger": settings.ledger_address,
            "synth": settings.synth_address,
            "predictions": settings.predictions_address,
        },
    )
    try:
        await server.serve()
    finally:
        await upstreams.close()
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
    if not server.started:
        raise SystemExit(f"error: gateway could not listen on {settings.host}:{settings.port}")
    _log.info("stopped")


def main() -> None:
    settings = load_settings(GatewaySettings)
    configure_logging("gateway", settings.log_level)
    with traces("gateway", edge=True):
        asyncio.run(serve(settings))


if __name__ == "__main__":
    main()
