"""Auth settings: AUTH_-prefixed, on top of the shared database and certificate settings."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import SettingsConfigDict

from services.auth.keys import DEFAULT_MAX_KEYS_PER_ACCOUNT, MAX_LISTED_KEYS
from services.auth.limits import (
    DEFAULT_CONCURRENCY_RETRY_AFTER,
    DEFAULT_LEASE,
    DEFAULT_LIMITS,
    MAX_CONCURRENT,
    MAX_LEASE_SECONDS,
    MAX_REQUESTS_PER_MINUTE,
)
from services.auth.sessions import DEFAULT_IDLE, DEFAULT_MAX, MAX_SESSION_SECONDS
from services.common.mesh import KEY_HASH_SECRET_ENV, KEY_HASH_SECRET_FILE, PORTS
from services.common.settings import DatabaseSettings, read_secret


class AuthSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="AUTH_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "auth"

    port: int = Field(default=PORTS["auth"], ge=1, le=65535)
    # Keys the HMAC under which keys are stored; else `.data/key-hash-secret`.
    key_hash_secret: SecretStr | None = Field(default=None, validation_alias=KEY_HASH_SECRET_ENV)

    # argon2id's cost, RFC 9106's second recommended option (64 MiB, 3 passes, 4 lanes) by
    # default. Raising any of them rehashes each password at its next successful sign-in.
    password_time_cost: int = Field(default=3, ge=1, le=20)
    password_memory_kib: int = Field(default=65536, ge=8, le=1024 * 1024)
    password_parallelism: int = Field(default=4, ge=1, le=64)
    # Hashes computed at once (each takes `password_memory_kib`): a flood of sign-ins queues
    # here instead of taking the process's memory.
    password_hash_concurrency: int = Field(default=4, ge=1, le=64)

    # A session ends when unused this long (activity is written at most once a minute)…
    session_idle_seconds: int = Field(default=int(DEFAULT_IDLE.total_seconds()), ge=1)
    # …or this long after sign-in, whatever its activity; the database refuses a session that
    # would last longer than MAX_SESSION_SECONDS (migration 0003).
    session_max_seconds: int = Field(
        default=int(DEFAULT_MAX.total_seconds()), ge=1, le=MAX_SESSION_SECONDS
    )

    # Attempts per client address, in fixed windows; past them RESOURCE_EXHAUSTED.
    sign_ins_per_address_per_minute: int = Field(default=20, ge=1)
    sign_ups_per_address_per_hour: int = Field(default=10, ge=1)
    # Failed sign-ins on one email (within 15 minutes) before its attempts are slowed; then each
    # waits base × 2^(failures − free) seconds, at most the cap, before its password is checked.
    sign_in_free_failures: int = Field(default=3, ge=0, le=100)
    sign_in_base_delay_seconds: float = Field(default=1.0, ge=0, le=60)
    sign_in_delay_cap_seconds: float = Field(default=30.0, ge=0, le=300)
    # ChangePassword attempts in one session in an hour (each checks the current password), so
    # that a stolen session cookie is worth only this many guesses; past it RESOURCE_EXHAUSTED.
    password_changes_per_session_per_hour: int = Field(default=5, ge=1)

    # Live (unrevoked) keys an account may hold, by CreateKey and CreateOwnKey alike. At most
    # what one list shows, so a list always holds every live key.
    max_keys_per_account: int = Field(
        default=DEFAULT_MAX_KEYS_PER_ACCOUNT, ge=1, le=MAX_LISTED_KEYS
    )

    # Each key's limits unless its account overrides them (SetAccountLimits): requests per
    # minute and streams (predictions) at once, per use (services/auth/limits.py).
    speech_requests_per_minute: int = Field(
        default=DEFAULT_LIMITS.speech_requests_per_minute, ge=1, le=MAX_REQUESTS_PER_MINUTE
    )
    speech_concurrent_streams: int = Field(
        default=DEFAULT_LIMITS.speech_concurrent_streams, ge=1, le=MAX_CONCURRENT
    )
    prediction_creates_per_minute: int = Field(
        default=DEFAULT_LIMITS.prediction_creates_per_minute, ge=1, le=MAX_REQUESTS_PER_MINUTE
    )
    predictions_concurrent: int = Field(
        default=DEFAULT_LIMITS.predictions_concurrent, ge=1, le=MAX_CONCURRENT
    )
    # A stream slot is held this long from its admission or its holder's last renewal; a gateway
    # replica that dies leaves its slots to run out this long after.
    slot_lease_seconds: int = Field(
        default=int(DEFAULT_LEASE.total_seconds()), ge=1, le=MAX_LEASE_SECONDS
    )
    # What a refusal for concurrency says to wait before trying again.
    concurrency_retry_after_seconds: int = Field(
        default=int(DEFAULT_CONCURRENCY_RETRY_AFTER.total_seconds()),
        ge=1,
        le=MAX_LEASE_SECONDS,
    )

    def key_hash_secret_value(self) -> str | None:
        configured = self.key_hash_secret.get_secret_value() if self.key_hash_secret else None
        return read_secret(configured, KEY_HASH_SECRET_FILE)

    @model_validator(mode="after")
    def _limits_agree(self) -> Self:
        # argon2 needs 8 KiB per lane.
        if self.password_memory_kib < 8 * self.password_parallelism:
            raise ValueError(
                f"{self.env_name('password_memory_kib')} must be at least 8 × "
                f"{self.env_name('password_parallelism')}"
            )
        if self.session_idle_seconds > self.session_max_seconds:
            raise ValueError(
                f"{self.env_name('session_idle_seconds')} exceeds "
                f"{self.env_name('session_max_seconds')}"
            )
        if self.sign_in_base_delay_seconds > self.sign_in_delay_cap_seconds:
            raise ValueError(
                f"{self.env_name('sign_in_base_delay_seconds')} exceeds "
                f"{self.env_name('sign_in_delay_cap_seconds')}"
            )
        return self
