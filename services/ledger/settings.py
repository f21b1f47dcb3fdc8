"""Ledger settings: LEDGER_-prefixed, plus the mesh-wide DATABASE_URL and operator token."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class LedgerSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True)

    port: int = Field(default=50052, ge=1, le=65535)
    database_url: str = Field(validation_alias="DATABASE_URL", min_length=1)
    # Every Reserve and Capture is a short transaction; more connections than cores only queue
    # inside PostgreSQL, and a hot account serializes on its row lock anyway.
    pool_min_size: int = Field(default=2, ge=1, le=100)
    pool_size: int = Field(default=10, ge=1, le=100)
    # How long an RPC waits for a free connection before failing.
    pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # A hold outlives the longest synthesis it pays for: 4096 characters take about two
    # minutes on a CPU, so fifteen minutes leaves room for a slow stream.
    default_hold_ttl_seconds: int = Field(default=900, ge=1)
    # Reserve refuses a longer ttl: credits held for days look spent to the customer.
    max_hold_ttl_seconds: int = Field(default=6 * 3600, ge=1)
    # How often the sweeper returns holds past their deadline. Reserve and GetBalance expire
    # the account's own overdue holds at once, so this only bounds how stale others look.
    sweep_interval_seconds: float = Field(default=5.0, gt=0, le=3600)
    # Accounts handled per sweeper transaction batch.
    sweep_batch_size: int = Field(default=100, ge=1, le=10_000)
    # Guards the admin RPCs; else `.data/operator-token`.
    operator_token: SecretStr | None = Field(
        default=None, validation_alias="KOKOROPAY_OPERATOR_TOKEN"
    )

    @model_validator(mode="after")
    def _ttls_agree(self) -> LedgerSettings:
        if self.default_hold_ttl_seconds > self.max_hold_ttl_seconds:
            raise ValueError("DEFAULT_HOLD_TTL_SECONDS exceeds MAX_HOLD_TTL_SECONDS")
        if self.pool_min_size > self.pool_size:
            raise ValueError("POOL_MIN_SIZE exceeds POOL_SIZE")
        return self
