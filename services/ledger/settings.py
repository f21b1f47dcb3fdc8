"""Ledger settings: LEDGER_-prefixed, on top of the shared database and certificate settings."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.mesh import PORTS
from services.common.settings import DatabaseSettings


class LedgerSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="LEDGER_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "ledger"
    renamed_variables: ClassVar[dict[str, str]] = {"LEDGER_POOL_SIZE": "LEDGER_POOL_MAX_SIZE"}

    port: int = Field(default=PORTS["ledger"], ge=1, le=65535)
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
    # How long a customer's Idempotency-Key names one request; after it, the key is free again.
    request_key_window_seconds: int = Field(default=24 * 3600, ge=60, le=30 * 24 * 3600)
    # Free replays of a keyed request once its price is paid (re-synthesized audio is GPU time).
    max_free_replays: int = Field(default=2, ge=0, le=100)
    # Credits a new account gets once, through GrantSignupBonus (the dashboard's sign-up);
    # 0 turns the bonus off (the prod overlay does).
    signup_grant_credits: int = Field(default=1000, ge=0, le=1_000_000)
    # The most credits one payment event may grant (GrantTopUp): far above any pack the
    # dashboard sells, so a mistake in its prices or a forged amount cannot mint a fortune.
    # At most validation.MAX_AMOUNT.
    max_top_up_credits: int = Field(default=10_000_000, ge=1, le=10**12)

    @model_validator(mode="after")
    def _ttls_agree(self) -> Self:
        if self.default_hold_ttl_seconds > self.max_hold_ttl_seconds:
            raise ValueError(
                f"{self.env_name('default_hold_ttl_seconds')} exceeds "
                f"{self.env_name('max_hold_ttl_seconds')}"
            )
        return self
