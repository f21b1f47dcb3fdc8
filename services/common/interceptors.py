"""Server interceptors every service installs: request ids and readiness.

Access (services/common/access.py) and error answers (services/common/errors.py) are
interceptors too, built on `wrap_handler` here.

Each one wraps the method handler rather than acting in `intercept_service` itself, so what it
sets (a context variable) or refuses (an abort) happens inside the RPC's own task, for unary
and streaming methods alike.
"""

from __future__ import annotations

import inspect
import logging
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import grpc

from services.common.logs import request_id_var
from services.common.status import NOT_SERVING, abort_with, rich_status, service_domain

REQUEST_ID_KEY = "x-request-id"
_log = logging.getLogger("rpc")

# Entered around the real behaviour, inside the RPC's task; may abort.
Around = Callable[[Any, grpc.aio.ServicerContext], AbstractAsyncContextManager[None]]
Continuation = Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler | None]]


def metadata_value(details: grpc.HandlerCallDetails, key: str) -> str | None:
    for item in details.invocation_metadata or ():
        if item[0] == key:
            value = item[1]
            return value.decode() if isinstance(value, bytes) else value
    return None


def wrap_handler(handler: grpc.RpcMethodHandler, around: Around) -> grpc.RpcMethodHandler:
    """The same handler with `around` entered for the whole call. Client streaming is unused."""
    if handler.unary_unary is not None:
        inner_uu = handler.unary_unary

        async def unary_unary(request: Any, context: grpc.aio.ServicerContext) -> Any:
            async with around(request, context):
                return await inner_uu(request, context)

        return handler._replace(unary_unary=unary_unary)
    if handler.unary_stream is not None:
        inner_us = handler.unary_stream
        if not inspect.isasyncgenfunction(inner_us):
            # Handlers that stream with `await context.write(...)` (e.g. health Watch) return a
            # coroutine, not an async iterator; wrap them as a coroutine too.
            async def unary_stream_writer(request: Any, context: grpc.aio.ServicerContext) -> None:
                async with around(request, context):
                    await inner_us(request, context)

            return handler._replace(unary_stream=unary_stream_writer)

        async def unary_stream(
            request: Any, context: grpc.aio.ServicerContext
        ) -> AsyncIterator[Any]:
            async with around(request, context):
                async for response in inner_us(request, context):
                    yield response

        return handler._replace(unary_stream=unary_stream)
    return handler


# Health and reflection answer probes and tools before start-up ends, and without credentials.
ALWAYS_OPEN = ("/grpc.health.v1.Health/", "/grpc.reflection.")


class AroundInterceptor(grpc.aio.ServerInterceptor):
    """Enters the context manager `around` chooses for a call (None: the call as it is)."""

    async def intercept_service(
        self, continuation: Continuation, handler_call_details: grpc.HandlerCallDetails
    ) -> grpc.RpcMethodHandler | None:
        handler = await continuation(handler_call_details)
        if handler is None:
            return None
        around = self.around(handler_call_details)
        return handler if around is None else wrap_handler(handler, around)

    def around(self, details: grpc.HandlerCallDetails) -> Around | None:
        raise NotImplementedError


def refusal(code: grpc.StatusCode, message: str, status: grpc.Status | None = None) -> Around:
    """Ends the call with `code` (or the rich `status`) before the handler runs."""

    @asynccontextmanager
    async def refuse(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
        if status is not None:
            await abort_with(context, status)
        await context.abort(code, message)
        yield

    return refuse


class RequestIdInterceptor(AroundInterceptor):
    """Carries `x-request-id` into logs (generating one if absent) and logs each RPC once."""

    def around(self, details: grpc.HandlerCallDetails) -> Around:
        method = details.method
        request_id = metadata_value(details, REQUEST_ID_KEY) or uuid.uuid4().hex

        @asynccontextmanager
        async def traced(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            request_id_var.set(request_id)
            started = time.perf_counter()
            try:
                yield
            finally:
                code = context.code()
                _log.info(
                    "rpc %s %s",
                    method,
                    code.name if isinstance(code, grpc.StatusCode) else "OK",
                    extra={
                        "method": method,
                        "duration_ms": round((time.perf_counter() - started) * 1e3, 2),
                    },
                )

        return traced


class ReadinessInterceptor(AroundInterceptor):
    """Refuses service RPCs with UNAVAILABLE, reason NOT_SERVING, until start-up work has
    finished and again once a stop has begun.

    The server listens before the database pool or the model is ready so health checks can
    report NOT_SERVING meanwhile; health and reflection always pass. The reason lets a caller
    tell "not serving: retry soon" from a service that failed or vanished.
    """

    def __init__(self, service: str = "kokoropay") -> None:
        self.ready = False
        self._domain = service_domain(service)
        self._message = "the service is starting: not serving yet"

    def draining(self) -> None:
        """From now on, refuse new calls: the service is stopping."""
        self.ready = False
        self._message = "the service is stopping: not serving any more"

    def around(self, details: grpc.HandlerCallDetails) -> Around | None:
        if self.ready or details.method.startswith(ALWAYS_OPEN):
            return None
        status = rich_status(
            grpc.StatusCode.UNAVAILABLE, self._message, reason=NOT_SERVING, domain=self._domain
        )
        return refusal(grpc.StatusCode.UNAVAILABLE, self._message, status)
