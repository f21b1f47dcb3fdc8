"""Auth settings: AUTH_-prefixed, plus the mesh-wide DATABASE_URL and operator token."""

from __future__ import annotations

from pydantic import Field, SecretStr
from pydantic_settings import SettingsConfigDict

from services.common.mesh import KEY_HASH_SECRET_ENV, KEY_HASH_SECRET_FILE, PORTS
from services.common.settings import DatabaseSettings, read_secret


class AuthSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore", frozen=True)

    port: int = Field(default=PORTS["auth"], ge=1, le=65535)
    # Keys the HMAC under which keys are stored; else `.data/key-hash-secret`.
    key_hash_secret: SecretStr | None = Field(default=None, validation_alias=KEY_HASH_SECRET_ENV)

    def key_hash_secret_value(self) -> str | None:
        configured = self.key_hash_secret.get_secret_value() if self.key_hash_secret else None
        return read_secret(configured, KEY_HASH_SECRET_FILE)
