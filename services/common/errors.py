"""Domain errors over gRPC, the same way in every service.

A servicer never aborts by hand: it raises. The bootstrap (services/common/server.py) installs
an `ErrorInterceptor` with the service's one `ErrorTable`, which answers each exception with
the status the table gives its class. An exception that carries a `reason` (a `ServiceError`
such as insufficient credits or a revoked key) also reaches the caller as a
`google.rpc.ErrorInfo` in the standard `grpc-status-details-bin` trailer, under the domain
`<service>.kokoropay`, so callers branch on the reason and never parse the message. Anything
the table does not name is logged with the request id and answered INTERNAL without details.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.rpc import error_details_pb2
from grpc_status import rpc_status

from services.common.interceptors import Around, AroundInterceptor
from services.common.status import abort_with, rich_status, service_domain

_log = logging.getLogger("rpc.errors")


class ServiceError(Exception):
    """A refusal the caller is told about; `reason` and `metadata` make it machine-readable."""

    def __init__(
        self, message: str, *, reason: str | None = None, metadata: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(message)
        self.reason = reason
        self.metadata = dict(metadata or {})


class InvalidArgument(ServiceError):
    """A request field is missing or malformed; nothing was read or written."""


class NotFound(ServiceError):
    """The request names something that does not exist."""


class Unavailable(ServiceError):
    """A dependency (the database, the model) cannot serve now; a retry may succeed."""


@dataclass(frozen=True)
class ErrorTable:
    """How one service answers the exceptions its handlers raise."""

    # Names the ErrorInfo domain, `<service>.kokoropay`, and the INTERNAL message.
    service: str
    # Exception class → status; a subclass inherits its nearest listed ancestor's status.
    statuses: Mapping[type[Exception], grpc.StatusCode] = field(default_factory=dict)

    @property
    def domain(self) -> str:
        return service_domain(self.service)

    def status_of(self, error: Exception) -> grpc.StatusCode | None:
        for cls in type(error).__mro__:
            if cls in self.statuses:
                return self.statuses[cls]
        return None

    def rpc_status(self, code: grpc.StatusCode, error: Exception) -> grpc.Status:
        """The status to end the call with: code, message, and ErrorInfo when there is a reason."""
        return rich_status(
            code,
            str(error),
            reason=getattr(error, "reason", None),
            domain=self.domain,
            metadata=getattr(error, "metadata", None),
        )


class ErrorInterceptor(AroundInterceptor):
    """Answers what a handler raises according to the service's `ErrorTable`."""

    def __init__(self, table: ErrorTable) -> None:
        self._table = table

    def around(self, details: grpc.HandlerCallDetails) -> Around:
        table = self._table

        @asynccontextmanager
        async def answered(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            try:
                yield
            except grpc.aio.AbortError:
                raise
            except Exception as error:
                code = table.status_of(error)
                if code is None:
                    _log.exception("%s request failed", table.service)
                    message = f"the {table.service} service failed; see its logs"
                    await context.abort(grpc.StatusCode.INTERNAL, message)
                await abort_with(context, table.rpc_status(code, error))

        return answered


def error_info(error: grpc.RpcError) -> error_details_pb2.ErrorInfo | None:
    """The ErrorInfo a server attached to a failed call, if any."""
    try:
        status = rpc_status.from_call(error)
    except (ValueError, AttributeError):  # inconsistent trailer, or not a call at all
        return None
    for detail in status.details if status is not None else ():
        if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
            info = error_details_pb2.ErrorInfo()
            detail.Unpack(info)
            return info
    return None


def error_reason(error: grpc.RpcError) -> str | None:
    """The machine-readable reason of a failed call (e.g. "INSUFFICIENT_CREDITS"), if any."""
    info = error_info(error)
    return info.reason if info is not None else None
