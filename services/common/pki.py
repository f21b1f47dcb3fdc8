"""The mesh's certificates: a development CA and one certificate per caller, in files.

Every hop in the mesh is mutual TLS. A certificate's identity is a SPIFFE-style URI SAN,
`spiffe://kokoropay/<role>` (internal callers: `spiffe://kokoropay/internal/<name>`), which the
access interceptor reads as the caller's role. Each identity is a folder laid out like a
cert-manager Secret, so a pod mounts the same three files the local run writes:

    <folder>/tls.crt   the certificate (PEM)
    <folder>/tls.key   its private key (PEM, owner-only)
    <folder>/ca.crt    the CA that signed every certificate of the mesh

`kokoro-pay up` keeps the CA under `.data/pki/` and issues (or renews, when near expiry or
signed by another CA) the certificates of the services, the gateway and the operator.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

TRUST_DOMAIN = "kokoropay"
CA_DAYS = 3650
CERT_DAYS = 90
# Renewed on start once less than this much of its life is left.
RENEW_BEFORE = datetime.timedelta(days=30)
# Where a server is reached locally; a cluster's certificates name its Services instead.
LOCAL_HOSTS = ("localhost", "127.0.0.1")


def spiffe_id(role: str, name: str | None = None) -> str:
    """`spiffe://kokoropay/<role>`, or `…/internal/<name>` for a named internal caller."""
    return f"spiffe://{TRUST_DOMAIN}/{role}" + (f"/{name}" if name else "")


@dataclass(frozen=True)
class TlsIdentity:
    """What one caller or server presents and trusts, as PEM bytes."""

    certificate: bytes
    private_key: bytes
    ca: bytes

    @classmethod
    def load(cls, folder: Path) -> TlsIdentity:
        """The three files of `folder`; FileNotFoundError names the first missing one."""
        return cls(
            certificate=(folder / "tls.crt").read_bytes(),
            private_key=(folder / "tls.key").read_bytes(),
            ca=(folder / "ca.crt").read_bytes(),
        )


class DevelopmentCa:
    """A CA kept in `folder` (created on first use) that issues the mesh's certificates."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        self._cert_path = folder / "ca.crt"
        self._key_path = folder / "ca.key"
        if not self._cert_path.exists():
            self._create()
        self.certificate = x509.load_pem_x509_certificate(self._cert_path.read_bytes())
        key = serialization.load_pem_private_key(self._key_path.read_bytes(), password=None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        self._key = key

    @property
    def certificate_pem(self) -> bytes:
        return self.certificate.public_bytes(serialization.Encoding.PEM)

    def ensure(
        self, folder: Path, uri: str, *, hosts: tuple[str, ...] = (), days: int = CERT_DAYS
    ) -> bool:
        """Issue into `folder` unless a certificate there is ours, for `uri`, and not near
        expiry; whether one was issued."""
        if self._current(folder, uri):
            return False
        self.issue(folder, uri, hosts=hosts, days=days)
        return True

    def issue(
        self, folder: Path, uri: str, *, hosts: tuple[str, ...] = (), days: int = CERT_DAYS
    ) -> None:
        """A key and certificate for `uri` (and server `hosts`), both client and server use."""
        key = ec.generate_private_key(ec.SECP256R1())
        now = _now()
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(uri)]
        for host in hosts:
            names.append(_host_name(host))
        certificate = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, uri[:64])]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=days))
            .add_extension(x509.SubjectAlternativeName(names), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.ExtendedKeyUsage(
                    [ExtendedKeyUsageOID.SERVER_AUTH, ExtendedKeyUsageOID.CLIENT_AUTH]
                ),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )
        folder.mkdir(parents=True, exist_ok=True)
        _write_private(folder / "tls.key", _key_pem(key))
        (folder / "tls.crt").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        (folder / "ca.crt").write_bytes(self.certificate_pem)

    def _current(self, folder: Path, uri: str) -> bool:
        try:
            certificate = x509.load_pem_x509_certificate((folder / "tls.crt").read_bytes())
            if not (folder / "tls.key").exists():
                return False
        except (FileNotFoundError, ValueError):
            return False
        try:
            sans = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName)
        except x509.ExtensionNotFound:
            return False
        return (
            certificate.issuer == self.certificate.subject
            and (folder / "ca.crt").read_bytes() == self.certificate_pem
            and uri in sans.value.get_values_for_type(x509.UniformResourceIdentifier)
            and certificate.not_valid_after_utc - _now() > RENEW_BEFORE
        )

    def _create(self) -> None:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "kokoro-pay development CA")])
        now = _now()
        certificate = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=CA_DAYS))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    key_cert_sign=True,
                    crl_sign=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .sign(key, hashes.SHA256())
        )
        self.folder.mkdir(parents=True, exist_ok=True)
        _write_private(self._key_path, _key_pem(key))
        self._cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _host_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


def _write_private(path: Path, data: bytes) -> None:
    """Owner-only from the first byte: a private key lets anyone act as its owner."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as file:
        file.write(data)
