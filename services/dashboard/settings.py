"""Dashboard settings, from `DASHBOARD_*` environment variables, built once in `main()`."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.client_address import Network, parse_networks
from services.common.mesh import PORTS, local_address
from services.common.settings import ServiceSettings

# The ledger's default LEDGER_MAX_TOP_UP_CREDITS: the most one payment can be credited.
LEDGER_MAX_TOP_UP_CREDITS = 10_000_000


class DashboardSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="DASHBOARD_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "dashboard"

    port: int = Field(default=PORTS["dashboard"], ge=1, le=65535)
    auth_address: str = Field(default=local_address("auth"), min_length=1)
    ledger_address: str = Field(default=local_address("ledger"), min_length=1)
    # Voice previews are synthesized once per voice by synth (never billed); in a cluster
    # through Envoy, like the gateway's streams.
    synth_address: str = Field(default=local_address("synth"), min_length=1)
    # Webhook signing secrets (and, later, the predictions list) are the predictions service's.
    predictions_address: str = Field(default=local_address("predictions"), min_length=1)
    # The playground spends through the public API like any client, at this address (in a
    # cluster, the gateway's Service), with the session's playground key.
    gateway_url: str = Field(default=f"http://{local_address('gateway')}", min_length=1)
    # The dashboard as customers reach it: the payment provider sends them back here.
    public_url: str = Field(default=f"http://{local_address('dashboard')}", min_length=1)
    # Where customers send API requests: shown on the key and usage pages in examples.
    public_api_url: str = Field(default=f"http://{local_address('gateway')}/v1", min_length=1)
    # Whether strangers may create accounts here; off, only the operator creates people
    # (`kokoro-pay user create`).
    signup_enabled: bool = True
    # Cookies only over HTTPS. On wherever the dashboard is served behind TLS (the Ingress);
    # off for `make run`, which serves plain HTTP on loopback.
    cookie_secure: bool = False
    # Proxies whose X-Forwarded-For is believed (comma-separated addresses or CIDRs): the
    # Ingress controller's. The client's address is what throttles sign-ins, so a header from
    # anyone else is ignored: a client could otherwise claim a fresh address per attempt.
    trusted_proxies: str = ""
    # Deadline of each auth and ledger call. Sign-in waits out the growing delay auth imposes
    # after failures (AUTH_SIGN_IN_DELAY_CAP_SECONDS) before it answers, so it gets its own.
    rpc_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    sign_in_timeout_seconds: float = Field(default=45.0, gt=0, le=600)
    # Top-ups through Stripe Checkout; without both secrets the billing page says how to get
    # credits from the operator instead. The webhook to register is <public_url>/billing/webhook,
    # for checkout.session.completed and checkout.session.async_payment_succeeded.
    stripe_secret_key: SecretStr | None = None
    stripe_webhook_secret: SecretStr | None = None
    # Stripe's API address; only tests point it elsewhere (a local stand-in for Stripe's API).
    stripe_api_base: str | None = None
    # What one pack of credits holds and costs; a purchase is 1 to max_packs packs.
    topup_credits_per_pack: int = Field(default=10_000, ge=1, le=10_000_000)
    topup_cents_per_pack: int = Field(default=500, ge=50, le=1_000_000)
    topup_currency: str = Field(default="usd", pattern="^[a-z]{3}$")
    topup_max_packs: int = Field(default=100, ge=1, le=1000)
    # Budget of each health check behind /readyz.
    ready_timeout_seconds: float = Field(default=1.0, gt=0, le=30)

    @model_validator(mode="after")
    def _largest_purchase_fits_the_ledger(self) -> Self:
        largest = self.topup_credits_per_pack * self.topup_max_packs
        if largest > LEDGER_MAX_TOP_UP_CREDITS:
            raise ValueError(
                f"{self.env_name('topup_max_packs')} × {self.env_name('topup_credits_per_pack')}"
                f" is {largest:,} credits, more than the ledger grants for one payment"
                f" (LEDGER_MAX_TOP_UP_CREDITS, {LEDGER_MAX_TOP_UP_CREDITS:,} by default): a"
                " customer would pay and never be credited"
            )
        return self

    @field_validator("trusted_proxies")
    @classmethod
    def _networks_parse(cls, value: str) -> str:
        parse_networks(value)
        return value

    @property
    def trusted_networks(self) -> tuple[Network, ...]:
        return parse_networks(self.trusted_proxies)
