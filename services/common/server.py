"""The one way a kokoro-pay gRPC service starts, reports health and stops.

Start-up: listen at once (health NOT_SERVING, service RPCs refused with UNAVAILABLE), run the
service's own start-up (database pool and migrations, or model load and warm-up), then mark
SERVING. SIGTERM or SIGINT: NOT_SERVING first so load balancers stop sending, let in-flight RPCs
drain for the grace period, then release the service's resources.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from services.common.interceptors import ReadinessInterceptor, RequestIdInterceptor

_log = logging.getLogger("server")

# Long synthesis streams must not be cut by keepalive defaults; these let clients ping freely.
_SERVER_OPTIONS = [
    ("grpc.keepalive_time_ms", 30_000),
    ("grpc.keepalive_timeout_ms", 10_000),
    ("grpc.http2.min_ping_interval_without_data_ms", 10_000),
    ("grpc.keepalive_permit_without_calls", 1),
]


@dataclass
class ServiceSpec:
    """What a service brings to the shared bootstrap."""

    # Fully-qualified gRPC service names, for health and reflection.
    names: Sequence[str]
    # Adds the servicers to the server; called before it listens.
    register: Callable[[grpc.aio.Server], None]
    # Work to finish before SERVING (open pools, migrate, load the model).
    startup: Callable[[], Awaitable[None]] | None = None
    # Releases resources after the drain.
    shutdown: Callable[[], Awaitable[None]] | None = None
    # Extra interceptors (e.g. operator auth), after request ids and readiness.
    interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)


async def serve(spec: ServiceSpec, bind_address: str, grace_seconds: float) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop. Exits with one line if the port is taken."""
    readiness = ReadinessInterceptor()
    server = grpc.aio.server(
        interceptors=[RequestIdInterceptor(), readiness, *spec.interceptors],
        options=_SERVER_OPTIONS,
    )
    spec.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        [
            *spec.names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    for name in ("", *spec.names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    try:
        bound = server.add_insecure_port(bind_address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise SystemExit(f"error: cannot listen on {bind_address}: is another process using it?")
    await server.start()
    _log.info("listening on %s", bind_address, extra={"address": bind_address})

    stopping = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stopping.set)

    startup = asyncio.ensure_future(spec.startup()) if spec.startup else None
    try:
        if startup is not None:
            # A signal during a long start-up (model load) must not wait for it to finish.
            done, _ = await asyncio.wait(
                [startup, asyncio.ensure_future(stopping.wait())],
                return_when=asyncio.FIRST_COMPLETED,
            )
            if startup in done:
                startup.result()  # re-raise a failed start-up
        if not stopping.is_set():
            readiness.ready = True
            for name in ("", *spec.names):
                await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
            _log.info("serving", extra={"services": list(spec.names)})
            await stopping.wait()
    finally:
        _log.info("stopping: NOT_SERVING, draining for up to %.1fs", grace_seconds)
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace_seconds)
        if startup is not None and not startup.done():
            startup.cancel()
        if spec.shutdown is not None:
            await spec.shutdown()
        _log.info("stopped")
