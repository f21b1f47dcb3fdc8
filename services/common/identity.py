"""Who is calling: the role in the caller's certificate, or in Envoy's word for it.

Every service port requires a client certificate from the mesh's CA, so each call arrives with
the peer's SPIFFE id (`spiffe://kokoropay/<role>[/<name>]`). A call that came through Envoy
carries Envoy's certificate instead; Envoy forwards the original caller's id in the
`x-forwarded-client-cert` header (XFCC), and that header is believed only on a connection
whose own certificate is Envoy's. From anyone else it is ignored, so no caller can claim to be
another by sending it.
"""

from __future__ import annotations

import grpc
from kokoropay.common.v1 import access_pb2

from services.common.pki import TRUST_DOMAIN, spiffe_id

ENVOY_ID = spiffe_id("envoy")
XFCC_HEADER = "x-forwarded-client-cert"
# Longer headers are not Envoy's: its XFCC for one hop is a few hundred bytes.
MAX_XFCC_LENGTH = 4096

ROLES: dict[str, int] = {
    "operator": access_pb2.OPERATOR,
    "gateway": access_pb2.GATEWAY,
    "predictions": access_pb2.PREDICTIONS,
    "dashboard": access_pb2.DASHBOARD,
    "internal": access_pb2.INTERNAL,
}


def role_of(uri: str) -> int | None:
    """The Caller a SPIFFE id names, or None for ids outside the mesh's callers."""
    prefix = f"spiffe://{TRUST_DOMAIN}/"
    if not uri.startswith(prefix):
        return None
    segment = uri.removeprefix(prefix).split("/", 1)[0]
    return ROLES.get(segment)


def peer_id(context: grpc.aio.ServicerContext) -> str | None:
    """The SPIFFE id of the certificate the connection was made with."""
    values = (context.auth_context() or {}).get("peer_spiffe_id") or []
    return values[0].decode() if values else None


def forwarded_id(xfcc: str) -> str | None:
    """The `URI=` of the nearest client in an XFCC header (Envoy's format, last element)."""
    if not xfcc or len(xfcc) > MAX_XFCC_LENGTH:
        return None
    nearest = xfcc.split(",")[-1]
    for pair in nearest.split(";"):
        key, _, value = pair.partition("=")
        if key.strip().lower() == "uri":
            return value.strip().strip('"') or None
    return None


def caller_id(context: grpc.aio.ServicerContext, xfcc: str | None) -> str | None:
    """The SPIFFE id the call acts for: the peer's, or through Envoy the forwarded one."""
    peer = peer_id(context)
    if peer == ENVOY_ID:
        return forwarded_id(xfcc or "")
    return peer
