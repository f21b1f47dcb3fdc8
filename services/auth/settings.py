"""Auth settings: AUTH_-prefixed, plus the mesh-wide DATABASE_URL and operator token."""

from __future__ import annotations

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.settings import ServiceSettings


class AuthSettings(ServiceSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore", frozen=True)

    port: int = Field(default=50051, ge=1, le=65535)
    # A PostgreSQL connection URL. Required.
    database_url: str = Field(validation_alias="DATABASE_URL", min_length=1)
    # VerifyKey runs on every gateway request; a few warm connections keep it one round trip.
    pool_min_size: int = Field(default=2, ge=1, le=100)
    pool_max_size: int = Field(default=10, ge=1, le=100)
    # How long an RPC waits for a free connection before answering UNAVAILABLE.
    pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)
    # Keys the HMAC under which keys are stored; else `.data/key-hash-secret`.
    key_hash_secret: SecretStr | None = None
    # Guards the admin RPCs; else `.data/operator-token`.
    operator_token: SecretStr | None = Field(
        default=None, validation_alias="KOKOROPAY_OPERATOR_TOKEN"
    )

    @model_validator(mode="after")
    def _pool_sizes_agree(self) -> AuthSettings:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError("AUTH_POOL_MIN_SIZE exceeds AUTH_POOL_MAX_SIZE")
        return self
