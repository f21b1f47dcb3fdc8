"""The local run's certificates: the development CA and one identity per part of the mesh.

`kokoro-pay up` calls `ensure_local_pki` on every start: the CA under `.data/pki/` is created
once and kept; each identity is issued on first start and again when it nears expiry (or was
signed by another CA). In a cluster the same folders are mounted from Secrets instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from services.common.pki import LOCAL_HOSTS, DevelopmentCa, TlsIdentity, spiffe_id

# Identity → its role; the services also serve, so their certificates name the local hosts.
SERVERS = ("auth", "ledger", "synth", "predictions")
CLIENTS = ("gateway", "dashboard", "operator", "envoy")


@dataclass(frozen=True)
class LocalPki:
    root: Path
    ca: DevelopmentCa

    def folder(self, identity: str) -> Path:
        return self.root / identity

    def identity(self, name: str) -> TlsIdentity:
        return TlsIdentity.load(self.folder(name))

    def issue(self, name: str, role: str) -> Path:
        """A client certificate for another caller, e.g. an internal service of ours."""
        folder = self.folder(name)
        uri = spiffe_id(role, name) if role == "internal" else spiffe_id(role)
        self.ca.issue(folder, uri)
        return folder


def ensure_local_pki(root: Path) -> LocalPki:
    """The CA and the mesh's own identities under `root` (`.data/pki`), renewed where due."""
    ca = DevelopmentCa(root)
    for name in SERVERS:
        ca.ensure(root / name, spiffe_id(name), hosts=LOCAL_HOSTS)
    for name in CLIENTS:
        ca.ensure(root / name, spiffe_id(name), hosts=LOCAL_HOSTS if name == "envoy" else ())
    return LocalPki(root, ca)
