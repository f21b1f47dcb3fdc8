"""The one way a kokoro-pay gRPC service starts, reports health and stops.

Start-up: listen at once (health NOT_SERVING, service RPCs refused with UNAVAILABLE), run the
service's own start-up (database pool and migrations, or model load and warm-up), then mark
SERVING. Every call passes the same interceptors: a span while traces are on
(services/common/tracing.py), metrics, request id, readiness, who may call it (the access each
RPC declares in its .proto), and the service's error table. Metrics are
served on a port of their own (services/common/metrics.py) from the first second. SIGTERM or SIGINT:
NOT_SERVING first so load balancers stop sending, let in-flight RPCs drain for the grace
period, then release the service's resources.
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

from services.common.access import AccessInterceptor, AccessPolicy
from services.common.errors import ErrorInterceptor, ErrorTable
from services.common.grpc_metrics import ServerMetricsInterceptor
from services.common.interceptors import ReadinessInterceptor, RequestIdInterceptor
from services.common.keepalive import SERVER_OPTIONS
from services.common.metrics import start_metrics_server
from services.common.pki import TlsIdentity
from services.common.settings import GrpcServiceSettings
from services.common.tracing import server_interceptors as tracing_interceptors

_log = logging.getLogger("server")


@dataclass
class ServiceSpec:
    """What a service brings to the shared bootstrap."""

    # Fully-qualified gRPC service names, for health, reflection and access declarations.
    names: Sequence[str]
    # Adds the servicers to the server; called before it listens.
    register: Callable[[grpc.aio.Server], None]
    # How the service answers what its handlers raise; names the service in logs and errors.
    errors: ErrorTable
    # Work to finish before SERVING (open pools, migrate, load the model).
    startup: Callable[[], Awaitable[None]] | None = None
    # Releases resources after the drain.
    shutdown: Callable[[], Awaitable[None]] | None = None
    # Extra interceptors, after request ids, readiness, access and error answers.
    interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)


@dataclass
class BuiltServer:
    """The service's server (mTLS) and its health-only server, not yet listening."""

    server: grpc.aio.Server
    # Answers grpc.health.v1 alone, in plaintext, for probes that carry no certificate.
    health_server: grpc.aio.Server
    readiness: ReadinessInterceptor
    health: health.aio.HealthServicer


def server_credentials(tls: TlsIdentity) -> grpc.ServerCredentials:
    """TLS that requires a client certificate signed by the mesh's CA."""
    return grpc.ssl_server_credentials(
        [(tls.private_key, tls.certificate)], root_certificates=tls.ca, require_client_auth=True
    )


def build_server(spec: ServiceSpec) -> BuiltServer:
    """The service's servicers behind the shared interceptors, with health and reflection."""
    readiness = ReadinessInterceptor(spec.errors.service)
    server = grpc.aio.server(
        interceptors=[
            # Outermost: the call's span (none while traces are off) covers all the rest.
            *tracing_interceptors(),
            # Next, so it counts every answer, the refusals of those below included.
            ServerMetricsInterceptor(spec.names),
            RequestIdInterceptor(),
            readiness,
            AccessInterceptor(AccessPolicy.of_names(spec.names)),
            ErrorInterceptor(spec.errors),
            *spec.interceptors,
        ],
        options=SERVER_OPTIONS,
    )
    spec.register(server)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    health_server = grpc.aio.server(options=SERVER_OPTIONS)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, health_server)
    reflection.enable_server_reflection(
        [
            *spec.names,
            health_pb2.DESCRIPTOR.services_by_name["Health"].full_name,
            reflection.SERVICE_NAME,
        ],
        server,
    )
    return BuiltServer(server, health_server, readiness, health_servicer)


def _listen(add_port: Callable[[str], int], address: str) -> None:
    try:
        bound = add_port(address)
    except RuntimeError:
        bound = 0
    if bound == 0:
        raise SystemExit(f"error: cannot listen on {address}: is another process using it?")


async def serve(spec: ServiceSpec, settings: GrpcServiceSettings) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop. Exits with one line if a port is taken
    or the certificate is missing."""
    tls = settings.tls_identity()
    bind_address, health_address = settings.bind_address, settings.health_bind_address
    grace_seconds = settings.grace_seconds
    built = build_server(spec)
    server, readiness, health_servicer = built.server, built.readiness, built.health
    for name in ("", *spec.names):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.NOT_SERVING)

    _listen(lambda address: server.add_secure_port(address, server_credentials(tls)), bind_address)
    _listen(built.health_server.add_insecure_port, health_address)
    metrics = start_metrics_server(settings.host, settings.metrics_listen_port)
    await server.start()
    await built.health_server.start()
    _log.info(
        "listening on %s (mutual TLS), health on %s",
        bind_address,
        health_address,
        extra={"address": bind_address, "health_address": health_address},
    )

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
        readiness.draining()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace_seconds)
        await built.health_server.stop(None)
        if startup is not None and not startup.done():
            startup.cancel()
        if spec.shutdown is not None:
            await spec.shutdown()
        if metrics is not None:
            await asyncio.to_thread(metrics.stop)
        _log.info("stopped")
