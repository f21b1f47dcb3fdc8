"""What the operator CLI reads from the environment, the way the services read theirs."""

from __future__ import annotations

import sys
from pathlib import Path

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.mesh import PKI_DIR, local_address
from services.common.pki import TlsIdentity
from services.common.settings import DATA_DIR


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KOKOROPAY_", extra="ignore", frozen=True)

    # The services the admin commands talk to; the local run's by default.
    auth_address: str = Field(default=local_address("auth"), min_length=1)
    ledger_address: str = Field(default=local_address("ledger"), min_length=1)
    predictions_address: str = Field(default=local_address("predictions"), min_length=1)
    # The local CA and identities `make run` keeps; `kokoro-pay cert issue` issues from here.
    pki_dir: Path = DATA_DIR / PKI_DIR
    # The operator's certificate (tls.crt, tls.key, ca.crt); unset: the local one.
    tls_dir: Path | None = None

    def tls_identity(self) -> TlsIdentity:
        try:
            return TlsIdentity.load(self.tls_dir or self.pki_dir / "operator")
        except FileNotFoundError as missing:
            sys.exit(
                f"error: no operator certificate: {missing.filename} is missing; "
                "run `make run` once, or set KOKOROPAY_TLS_DIR"
            )
