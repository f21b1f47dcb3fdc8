"""A gRPC status with a machine-readable reason, built with grpcio-status.

The one place the mesh builds a rich status: `errors.ErrorTable` for what handlers raise, and
the readiness gate for "not serving yet" (or any more), which callers must tell apart from a
service that failed.
"""

from __future__ import annotations

from collections.abc import Mapping

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2
from grpc_status import rpc_status

# The reason a service gives while it starts up or drains: retry soon, nothing happened.
NOT_SERVING = "NOT_SERVING"


def rich_status(
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    domain: str = "kokoropay",
    metadata: Mapping[str, str] | None = None,
) -> grpc.Status:
    """`code` and `message`, with a google.rpc.ErrorInfo when there is a reason."""
    status = status_pb2.Status(code=code.value[0], message=message)
    if reason:
        info = any_pb2.Any()
        info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata))
        status.details.append(info)
    return rpc_status.to_status(status)


def service_domain(service: str) -> str:
    """The ErrorInfo domain of a service's reasons: `<service>.kokoropay`."""
    return f"{service}.kokoropay"


async def abort_with(context: grpc.aio.ServicerContext, status: grpc.Status) -> None:
    """Ends the call with the rich `status`, as `context.abort_with_status` does, but through
    `context.abort`: the call that the tracing instrumentation watches to put the code on the
    call's span (services/common/tracing.py)."""
    await context.abort(status.code, status.details, status.trailing_metadata)
