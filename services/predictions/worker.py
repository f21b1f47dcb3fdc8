"""`python -m services.predictions.worker`: a worker process that runs the predictions' jobs.

settings → store (migrations, pool) → upstreams → runner and webhook deliverer → procrastinate's
worker (on a pool of its own), with the maintenance beside it. It serves no RPC; a plaintext port
(PREDICTIONS_WORKER_HEALTH_PORT) answers grpc.health.v1 for its probes: SERVING once it takes
jobs. SIGTERM or SIGINT: NOT_SERVING, take no new job, let running ones finish for
PREDICTIONS_WORKER_GRACE_SECONDS, hand the rest back to the queue, release resources. Run as
many as the load needs (their own Deployment); they share the queue. Its metrics (jobs, webhooks,
the queue's depth, its gRPC clients) are served on PREDICTIONS_WORKER_METRICS_PORT.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal
import sys

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from services.common.logs import configure_logging
from services.common.metrics import start_metrics_server
from services.common.settings import load_settings
from services.common.tracing import traces
from services.predictions.clients import Upstreams
from services.predictions.jobs import Maintenance, build_app, worker_options
from services.predictions.runner import PredictionRunner
from services.predictions.settings import PredictionsSettings
from services.predictions.signing import UrlSigner, url_signer
from services.predictions.store import PostgresOutputs, PredictionStore
from services.predictions.webhooks import WebhookDeliverer, WebhookSender

_log = logging.getLogger("predictions.worker")


async def run(settings: PredictionsSettings, signer: UrlSigner) -> int:
    """Work until a signal (0) or until the worker stops by itself (1)."""
    # Its own port: PREDICTIONS_METRICS_PORT is the service's, which may run beside it.
    metrics = start_metrics_server(settings.host, settings.worker_metrics_port)
    health_servicer = health.aio.HealthServicer()
    health_server = grpc.aio.server()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    if health_server.add_insecure_port(settings.worker_health_bind_address) == 0:
        sys.exit(f"error: cannot listen on {settings.worker_health_bind_address}")
    await health_servicer.set("", health_pb2.HealthCheckResponse.NOT_SERVING)
    await health_server.start()

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    store = PredictionStore()
    upstreams = Upstreams(settings.ledger_address, settings.synth_address, settings.tls_identity())
    sender = WebhookSender(
        timeout=settings.webhook_timeout_seconds,
        allow_private=settings.allow_private_webhooks,
    )
    outputs = PostgresOutputs(store)
    runner = PredictionRunner(store, outputs, upstreams.ledger, upstreams.synth, settings)
    app = build_app(runner, WebhookDeliverer(store, signer, sender), settings)
    try:
        await store.open(settings)
        await app.open_async()
        maintenance = Maintenance(app, store, outputs, runner, settings)
        worker = asyncio.create_task(app.run_worker_async(**worker_options(settings)))
        maintenance.start()
        await health_servicer.set("", health_pb2.HealthCheckResponse.SERVING)
        _log.info("taking jobs", extra={"concurrency": settings.worker_concurrency})
        signalled = asyncio.ensure_future(stopping.wait())
        await asyncio.wait({worker, signalled}, return_when=asyncio.FIRST_COMPLETED)
        await health_servicer.enter_graceful_shutdown()
        await maintenance.stop()
        if worker.done():
            signalled.cancel()
            _log.error("the queue worker stopped by itself", exc_info=worker.exception())
            return 1
        _log.info("stopping: running jobs get %.1fs", settings.worker_grace_seconds)
        # Cancelling run_worker_async is procrastinate's graceful stop: no new job, running ones
        # finish or are handed back to the queue.
        worker.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await worker
        return 0
    finally:
        await app.close_async()
        await sender.close()
        await upstreams.close()
        await store.close()
        await health_server.stop(None)
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        _log.info("stopped")


def main() -> None:
    settings = load_settings(PredictionsSettings)
    configure_logging("predictions-worker", settings.log_level)
    # httpx logs each request's URL at INFO: webhook URLs often carry the receiver's token.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    with traces("predictions-worker"):
        code = asyncio.run(run(settings, url_signer(settings)))
    sys.exit(code)


if __name__ == "__main__":
    main()
