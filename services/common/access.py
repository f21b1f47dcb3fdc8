"""Who may call each RPC, as declared beside it in its `.proto`, enforced in one place.

Every method carries `option (kokoropay.common.v1.access) = { callers: [...] }`. The
`AccessPolicy` reads those declarations from the service descriptors; the `AccessInterceptor`
enforces them on every call, against the caller's role from its certificate
(services/common/identity.py):

- a method with no declaration (or a handler for a service the policy was not built from) is
  refused to everyone with PERMISSION_DENIED, so a forgotten declaration fails closed;
- a caller whose role the declaration does not name is refused with PERMISSION_DENIED, and one
  with no role of the mesh (a certificate of our CA naming no caller) with UNAUTHENTICATED;
- health and reflection are exempt: probes and tools must reach them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from kokoropay.common.v1 import access_pb2

from services.common.identity import XFCC_HEADER, caller_id, role_of
from services.common.interceptors import (
    ALWAYS_OPEN,
    Around,
    AroundInterceptor,
    metadata_value,
    refusal,
)

Caller = access_pb2.Caller


def declared_callers(method: MethodDescriptor) -> frozenset[int]:
    """The callers a method's `access` option names; empty when it declares none."""
    options = method.GetOptions()
    if not options.HasExtension(access_pb2.access):
        return frozenset()
    return frozenset(options.Extensions[access_pb2.access].callers) - {
        access_pb2.CALLER_UNSPECIFIED
    }


@dataclass(frozen=True)
class AccessPolicy:
    """`/package.Service/Method` → the callers declared for it."""

    callers: Mapping[str, frozenset[int]]

    @classmethod
    def of(cls, services: Iterable[ServiceDescriptor]) -> AccessPolicy:
        return cls(
            {
                f"/{service.full_name}/{method.name}": declared_callers(method)
                for service in services
                for method in service.methods
            }
        )

    @classmethod
    def of_names(cls, service_names: Iterable[str]) -> AccessPolicy:
        """The policy of services whose stubs are imported (their descriptors are loaded)."""
        pool = descriptor_pool.Default()
        return cls.of(pool.FindServiceByName(name) for name in service_names)

    def allows(self, method: str, caller: int) -> bool:
        return caller in self.callers.get(method, frozenset())


class AccessInterceptor(AroundInterceptor):
    """Enforces an `AccessPolicy` on the role each call's certificate (or Envoy) names."""

    def __init__(self, policy: AccessPolicy) -> None:
        self._policy = policy

    def around(self, details: grpc.HandlerCallDetails) -> Around | None:
        method = details.method
        if method.startswith(ALWAYS_OPEN):
            return None
        if not self._policy.callers.get(method):
            return refusal(grpc.StatusCode.PERMISSION_DENIED, f"{method} declares no callers")
        policy = self._policy
        xfcc = metadata_value(details, XFCC_HEADER)

        @asynccontextmanager
        async def checked(request: Any, context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
            caller = caller_id(context, xfcc)
            role = role_of(caller) if caller else None
            if role is None:
                await context.abort(
                    grpc.StatusCode.UNAUTHENTICATED, f"no caller of the mesh: {caller!r}"
                )
            elif not policy.allows(method, role):
                name = access_pb2.Caller.Name(role)
                await context.abort(
                    grpc.StatusCode.PERMISSION_DENIED, f"{name} may not call {method}"
                )
            yield

        return checked
