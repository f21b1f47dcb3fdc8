"""The tests' certificates: one development CA for the session, an identity per caller.

Every service a test starts serves mutual TLS, so every test client proves who it is, exactly
as in production. Besides the mesh's own identities (services, gateway, operator, envoy) the
session has one per remaining role, and a gateway identity signed by a foreign CA, which no
service may answer.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from pathlib import Path

import grpc

from services.cli.local_pki import LocalPki, ensure_local_pki
from services.common.channels import channel_credentials, open_channel
from services.common.pki import DevelopmentCa, TlsIdentity, spiffe_id

_ROOT = Path(tempfile.mkdtemp(prefix="kokoropay-test-pki-"))
atexit.register(shutil.rmtree, _ROOT, ignore_errors=True)

PKI: LocalPki = ensure_local_pki(_ROOT / "mesh" / "pki")
for _role in ("dashboard",):
    PKI.ca.issue(PKI.folder(_role), spiffe_id(_role))
PKI.issue("reports", "internal")  # what `kokoro-pay cert issue reports --role internal` makes
# Signed by the mesh's CA but naming no caller of the mesh.
PKI.ca.issue(PKI.folder("stranger"), "spiffe://elsewhere/gateway")

_FOREIGN = DevelopmentCa(_ROOT / "foreign")
_FOREIGN.issue(_ROOT / "foreign" / "gateway", spiffe_id("gateway"))


def identity(name: str) -> TlsIdentity:
    """`operator`, `gateway`, `dashboard`, `predictions`, `reports` (internal), `envoy`,
    `stranger`, or a service's own."""
    return PKI.identity(name)


def foreign_identity() -> TlsIdentity:
    """A gateway certificate from a CA the mesh does not trust."""
    return TlsIdentity.load(_ROOT / "foreign" / "gateway")


def tls_env(service: str) -> dict[str, str]:
    """The environment that gives a service process its certificate."""
    return {f"{service.upper()}_TLS_DIR": str(PKI.folder(service))}


def channel(address: str, name: str = "operator") -> grpc.aio.Channel:
    """An asyncio channel to `address` that calls as `name`."""
    return open_channel(address, identity(name))


def sync_channel(address: str, name: str = "operator") -> grpc.Channel:
    """A blocking channel to `address` that calls as `name`."""
    return grpc.secure_channel(address, channel_credentials(identity(name)))
