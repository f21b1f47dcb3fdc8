"""Domain errors over gRPC: a status code plus a machine-readable reason.

A caller that must branch (insufficient credits, revoked key) reads the reason from a
`google.rpc.ErrorInfo` carried in the standard `grpc-status-details-bin` trailer, never by
parsing the message.
"""

from __future__ import annotations

from typing import NoReturn

import grpc
from google.protobuf import any_pb2
from google.rpc import error_details_pb2, status_pb2

_DETAILS_KEY = "grpc-status-details-bin"


async def abort(
    context: grpc.aio.ServicerContext,
    code: grpc.StatusCode,
    message: str,
    *,
    reason: str | None = None,
    domain: str = "kokoropay",
    metadata: dict[str, str] | None = None,
) -> NoReturn:
    """End the RPC with `code`; with a reason, attach it as ErrorInfo."""
    if reason is None:
        await context.abort(code, message)
    info = any_pb2.Any()
    info.Pack(error_details_pb2.ErrorInfo(reason=reason, domain=domain, metadata=metadata or {}))
    status = status_pb2.Status(code=code.value[0], message=message, details=[info])
    await context.abort(
        code, message, trailing_metadata=((_DETAILS_KEY, status.SerializeToString()),)
    )
    raise AssertionError("unreachable: context.abort raises")  # for type checkers


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a server attached to a failed call, if any."""
    trailing = error.trailing_metadata() if hasattr(error, "trailing_metadata") else None
    for key, value in trailing or ():
        if key == _DETAILS_KEY:
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return info
    return None


def error_reason(error: grpc.RpcError) -> str | None:
    """The machine-readable reason of a failed call (e.g. "INSUFFICIENT_CREDITS"), if any."""
    info = error_info(error)
    return info.reason if info is not None else None
