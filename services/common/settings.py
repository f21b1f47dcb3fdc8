"""Settings shared by every service, read from the environment at start-up.

Each service subclasses `ServiceSettings` (or `DatabaseSettings`, when it owns a schema) with
its own env prefix (AUTH_, LEDGER_, …) and builds it in `main()` through `load_settings`, so
a bad value stops the process with one line instead of surfacing later as a confusing failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import ClassVar, Self, TypeVar

from pydantic import Field, SecretStr, ValidationError, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.mesh import OPERATOR_TOKEN_ENV, OPERATOR_TOKEN_FILE

# `.data/` at the repository root holds the local run's database, secrets and weights.
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / ".data"


class ServiceSettings(BaseSettings):
    """What every service needs: where to listen, how long to drain, how to log, who operates."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)
    # Variables a release renamed, old → new: a service started with an old one exits naming
    # the new one instead of silently running on a default.
    renamed_variables: ClassVar[dict[str, str]] = {}

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    # Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.
    grace_seconds: float = Field(default=10.0, ge=0, le=600)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    # Proves the operator to RPCs only the operator may call; else `.data/operator-token`.
    operator_token: SecretStr | None = Field(default=None, validation_alias=OPERATOR_TOKEN_ENV)

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"

    def operator_token_value(self) -> str | None:
        configured = self.operator_token.get_secret_value() if self.operator_token else None
        return read_secret(configured, OPERATOR_TOKEN_FILE)

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable that sets `field_name`, as the operator must spell it."""
        return _env_name(cls, (field_name,))


class DatabaseSettings(ServiceSettings):
    """A service that owns a PostgreSQL schema: where the database is and how to pool it."""

    # A PostgreSQL connection URL, shared by the mesh. Required.
    database_url: str = Field(validation_alias="DATABASE_URL", min_length=1)
    # Warm connections: the hot RPCs are one short query or transaction each.
    pool_min_size: int = Field(default=2, ge=1, le=100)
    # More connections than the database has cores only queue inside PostgreSQL.
    pool_max_size: int = Field(default=10, ge=1, le=100)
    # How long an RPC waits for a free connection before answering UNAVAILABLE.
    pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @model_validator(mode="after")
    def _pool_sizes_agree(self) -> Self:
        if self.pool_min_size > self.pool_max_size:
            raise ValueError(
                f"{self.env_name('pool_min_size')} exceeds {self.env_name('pool_max_size')}"
            )
        return self


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_type: type[S]) -> S:
    """Build settings from the environment, or exit with one line naming the bad variable."""
    for old, new in getattr(settings_type, "renamed_variables", {}).items():
        if old in os.environ:
            sys.exit(f"error: {old} was renamed to {new}; set {new} instead")
    try:
        return settings_type()
    except ValidationError as exc:
        problems = "; ".join(_problem(settings_type, err) for err in exc.errors())
        sys.exit(f"error: invalid settings: {problems}")


def _problem(settings_type: type[BaseSettings], error: ErrorDetails) -> str:
    """One error as `VARIABLE: what is wrong`; a cross-field check names its variables itself."""
    message = error["msg"].removeprefix("Value error, ")
    if not error["loc"]:
        return message
    return f"{_env_name(settings_type, error['loc'])}: {message}"


def _env_name(settings_type: type[BaseSettings], loc: tuple[int | str, ...]) -> str:
    """The environment variable a validation error is about, as the operator must spell it."""
    name = str(loc[0]) if loc else "?"
    field = settings_type.model_fields.get(name)
    if field is None:
        return name.upper()  # already a validation_alias such as DATABASE_URL
    if isinstance(field.validation_alias, str):
        return field.validation_alias.upper()  # an alias takes no prefix
    return f"{settings_type.model_config.get('env_prefix', '')}{name}".upper()


def read_secret(value: str | None, file_name: str) -> str | None:
    """A secret from the environment, else from `.data/<file_name>` written by the local run.

    KOKOROPAY_SECRETS_DIR names another folder for those files (tests point it at an empty one).
    """
    if value:
        return value
    path = Path(os.environ.get("KOKOROPAY_SECRETS_DIR") or DATA_DIR) / file_name
    return path.read_text().strip() if path.exists() else None
