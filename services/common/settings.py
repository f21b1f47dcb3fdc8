"""Settings shared by every service, read from the environment at start-up.

Each service subclasses `ServiceSettings` with its own env prefix (AUTH_, LEDGER_, …) and
builds it in `main()` through `load_settings`, so a bad value stops the process with one line
instead of surfacing later as a confusing failure.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import TypeVar

from pydantic import Field, ValidationError
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

# `.data/` at the repository root holds the local run's database, secrets and weights.
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / ".data"


class ServiceSettings(BaseSettings):
    """What every gRPC service needs: where to listen, how long to drain, how to log."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    # Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.
    grace_seconds: float = Field(default=10.0, ge=0, le=600)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"


S = TypeVar("S", bound=BaseSettings)


def load_settings(settings_type: type[S]) -> S:
    """Build settings from the environment, or exit with one line naming the bad variable."""
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
    if name in settings_type.model_fields:
        return f"{settings_type.model_config.get('env_prefix', '')}{name}".upper()
    return name.upper()  # a validation_alias such as DATABASE_URL, which takes no prefix


def read_secret(value: str | None, file_name: str) -> str | None:
    """A secret from the environment, else from `.data/<file_name>` written by the local run.

    KOKOROPAY_SECRETS_DIR names another folder for those files (tests point it at an empty one).
    """
    if value:
        return value
    path = Path(os.environ.get("KOKOROPAY_SECRETS_DIR") or DATA_DIR) / file_name
    return path.read_text().strip() if path.exists() else None
