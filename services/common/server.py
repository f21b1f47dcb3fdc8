"""The one way a kokoro-pay gRPC service starts, reports health and stops.

Start-up: listen at once (health NOT_SERVING, service RPCs refused with UNAVAILABLE), run the
service's own start-up (database pool and migrations, or model load and warm-up), then mark
SERVING. Every call passes the same interceptors: request id, readiness, who may call it (the
access each RPC declares in its .proto), and the service's error table. SIGTERM or SIGINT:
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
from services.common.interceptors import ReadinessInterceptor, RequestIdInterceptor
from services.common.keepalive import SERVER_OPTIONS
from services.common.mesh import OPERATOR_TOKEN_ENV, OPERATOR_TOKEN_FILE

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
    # Proves the operator to RPCs that only it may call (see services/common/access.py).
    operator_token: str | None = None
    # Work to finish before SERVING (open pools, migrate, load the model).
    startup: Callable[[], Awaitable[None]] | None = None
    # Releases resources after the drain.
    shutdown: Callable[[], Awaitable[None]] | None = None
    # Extra interceptors, after request ids, readiness, access and error answers.
    interceptors: Sequence[grpc.aio.ServerInterceptor] = field(default_factory=tuple)


@dataclass
class BuiltServer:
    """A server with every shared piece in place, not yet listening."""

    server: grpc.aio.Server
    readiness: ReadinessInterceptor
    health: health.aio.HealthServicer


def build_server(spec: ServiceSpec) -> BuiltServer:
    """The service's servicers behind the shared interceptors, with health and reflection.

    Exits with one line when an RPC only the operator may call has no operator token to check.
    """
    policy = AccessPolicy.of_names(spec.names)
    if policy.any_needs_operator and not spec.operator_token:
        raise SystemExit(
            f"error: {spec.errors.service} needs {OPERATOR_TOKEN_ENV} or the file "
            f".data/{OPERATOR_TOKEN_FILE} (make run writes it)"
        )
    readiness = ReadinessInterceptor(spec.errors.service)
    server = grpc.aio.server(
        interceptors=[
            RequestIdInterceptor(),
            readiness,
            AccessInterceptor(policy, spec.operator_token),
            ErrorInterceptor(spec.errors),
            *spec.interceptors,
        ],
        options=SERVER_OPTIONS,
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
    return BuiltServer(server, readiness, health_servicer)


async def serve(spec: ServiceSpec, bind_address: str, grace_seconds: float) -> None:
    """Run until SIGTERM/SIGINT, then drain and stop. Exits with one line if the port is taken."""
    built = build_server(spec)
    server, readiness, health_servicer = built.server, built.readiness, built.health
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
        readiness.draining()
        await health_servicer.enter_graceful_shutdown()
        await server.stop(grace_seconds)
        if startup is not None and not startup.done():
            startup.cancel()
        if spec.shutdown is not None:
            await spec.shutdown()
        _log.info("stopped")
