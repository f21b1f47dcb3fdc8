"""What the operator CLI reads from the environment, the way the services read theirs."""

from __future__ import annotations

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.mesh import OPERATOR_TOKEN_ENV, OPERATOR_TOKEN_FILE, local_address
from services.common.settings import read_secret


class CliSettings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="KOKOROPAY_", extra="ignore", frozen=True)

    # The services the admin commands talk to; the local run's by default.
    auth_address: str = Field(default=local_address("auth"), min_length=1)
    ledger_address: str = Field(default=local_address("ledger"), min_length=1)
    # Proves the operator; else `.data/operator-token`, which `make run` writes.
    operator_token: str | None = Field(default=None, validation_alias=OPERATOR_TOKEN_ENV)

    def operator_token_value(self) -> str:
        token = read_secret(self.operator_token, OPERATOR_TOKEN_FILE)
        if not token:
            raise SystemExit(
                f"error: no operator token: set {OPERATOR_TOKEN_ENV} or run `make run` once"
            )
        return token
