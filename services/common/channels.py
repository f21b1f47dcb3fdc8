"""Client channels between services: the caller's request id travels in metadata."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from services.common.interceptors import REQUEST_ID_KEY
from services.common.keepalive import CHANNEL_OPTIONS
from services.common.logs import request_id_var


def _with_request_id(details: Any) -> Any:
    request_id = request_id_var.get()
    if not request_id:
        return details
    metadata = [m for m in (details.metadata or ()) if m[0] != REQUEST_ID_KEY]
    metadata.append((REQUEST_ID_KEY, request_id))
    return details._replace(metadata=tuple(metadata))


class _UnaryUnary(grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request)


class _UnaryStream(grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(
        self, continuation: Callable[..., Any], client_call_details: Any, request: Any
    ) -> Any:
        return await continuation(_with_request_id(client_call_details), request)


def open_channel(address: str) -> grpc.aio.Channel:
    """An insecure channel (TLS is the mesh's job in a cluster) that forwards request ids."""
    return grpc.aio.insecure_channel(
        address, options=CHANNEL_OPTIONS, interceptors=[_UnaryUnary(), _UnaryStream()]
    )


def operator_metadata(token: str) -> tuple[tuple[str, str], ...]:
    """Metadata that authorizes admin RPCs."""
    return (("authorization", f"Bearer {token}"),)
