"""Auth settings: AUTH_-prefixed, on top of the shared database and certificate settings."""

from __future__ import annotations

from typing import ClassVar

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.mesh import KEY_HASH_SECRET_ENV, KEY_HASH_SECRET_FILE, PORTS
from services.common.settings import DatabaseSettings, read_secret


class AuthSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "auth"

    port: int = Field(default=PORTS["auth"], ge=1, le=65535)
    # Keys the HMAC under which keys are stored; else `.data/key-hash-secret`.
    key_hash_secret: SecretStr | None = Field(default=None, validation_alias=KEY_HASH_SECRET_ENV)

    def key_hash_secret_value(self) -> str | None:
        configured = self.key_hash_secret.get_secret_value() if self.key_hash_secret else None
        return read_secret(configured, KEY_HASH_SECRET_FILE)
