"""Client channels between services: mutual TLS with the caller's certificate, the caller's
request id in metadata, every call counted and timed (services/common/grpc_metrics.py), and,
while traces are on, a span per call whose context travels in the metadata
(services/common/tracing.py)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc

from services.common.grpc_metrics import client_interceptors
from services.common.interceptors import REQUEST_ID_KEY
from services.common.keepalive import CHANNEL_OPTIONS
from services.common.logs import request_id_var
from services.common.pki import TlsIdentity
from services.common.tracing import client_interceptors as tracing_interceptors


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


def channel_credentials(tls: TlsIdentity) -> grpc.ChannelCredentials:
    """Mutual TLS: the caller's certificate, and the mesh's CA to check the server's."""
    return grpc.ssl_channel_credentials(
        root_certificates=tls.ca, private_key=tls.private_key, certificate_chain=tls.certificate
    )


def open_channel(address: str, tls: TlsIdentity) -> grpc.aio.Channel:
    """A mutual-TLS channel that proves who calls (`tls`), forwards request ids, counts its
    calls and, while traces are on, traces them."""
    return grpc.aio.secure_channel(
        address,
        channel_credentials(tls),
        options=CHANNEL_OPTIONS,
        # The span first (none while traces are off), then metrics: their time covers the call.
        interceptors=[
            *tracing_interceptors(),
            *client_interceptors(),
            _UnaryUnary(),
            _UnaryStream(),
        ],
    )
