"""Who may call each RPC, as declared beside it in its `.proto`, enforced in one place.

Every method carries `option (kokoropay.common.v1.access) = { callers: [...] }`. The
`AccessPolicy` reads those declarations from the service descriptors; the `AccessInterceptor`
enforces them on every call:

- a method with no declaration (or a handler for a service the policy was not built from) is
  refused to everyone with PERMISSION_DENIED, so a forgotten declaration fails closed;
- until callers carry certificates, the operator is the only caller that can prove who it is
  (by the operator token). So a method the GATEWAY may call stays open, and any other declared
  method needs the operator token: nothing that needs the token becomes open in the meantime;
- health and reflection are exempt: probes and tools must reach them unauthenticated.
"""

from __future__ import annotations

import hmac
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pool
from google.protobuf.descriptor import MethodDescriptor, ServiceDescriptor
from kokoropay.common.v1 import access_pb2

from services.common.interceptors import (
    ALWAYS_OPEN,
    Around,
    AroundInterceptor,
    metadata_value,
    refusal,
)

Caller = access_pb2.Caller
OPERATOR = access_pb2.OPERATOR
GATEWAY = access_pb2.GATEWAY


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

    def needs_operator(self, method: str) -> bool:
        """Whether the method can be called only with the operator token (today's rule)."""
        return GATEWAY not in self.callers.get(method, frozenset())

    @property
    def any_needs_operator(self) -> bool:
        return any(callers and self.needs_operator(m) for m, callers in self.callers.items())


class AccessInterceptor(AroundInterceptor):
    """Enforces an `AccessPolicy`; `operator_token` None means no caller can be the operator."""

    def __init__(self, policy: AccessPolicy, operator_token: str | None) -> None:
        self._policy = policy
        self._expected = f"Bearer {operator_token}".encode() if operator_token else None

    def around(self, details: grpc.HandlerCallDetails) -> Around | None:
        method = details.method
        if method.startswith(ALWAYS_OPEN):
            return None
        if not self._policy.callers.get(method):
            return refusal(grpc.StatusCode.PERMISSION_DENIED, f"{method} declares no callers")
        if not self._policy.needs_operator(method):
            return None
        presented = (metadata_value(details, "authorization") or "").encode()
        if self._expected is None or not hmac.compare_digest(presented, self._expected):
            return refusal(grpc.StatusCode.UNAUTHENTICATED, "operator token missing or wrong")
        return None
