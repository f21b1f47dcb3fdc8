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

from pydantic import Field, ValidationError, model_validator
from pydantic_core import ErrorDetails
from pydantic_settings import BaseSettings, SettingsConfigDict

from services.common.mesh import HEALTH_PORTS, METRICS_PORTS, PKI_DIR
from services.common.pki import TlsIdentity

# `.data/` at the repository root holds the local run's database, secrets and weights.
REPO_ROOT = Path(__file__).resolve().parents[2]
DATA_DIR = REPO_ROOT / ".data"


class ServiceSettings(BaseSettings):
    """What every service needs: where to listen, how long to drain, how to log, and the
    certificate it proves itself with."""

    model_config = SettingsConfigDict(extra="ignore", frozen=True)
    # Names the service in messages and its default certificate folder, `.data/pki/<name>`.
    service_name: ClassVar[str] = ""
    # Variables a release renamed, old → new: a service started with an old one exits naming
    # the new one instead of silently running on a default.
    renamed_variables: ClassVar[dict[str, str]] = {}

    host: str = "127.0.0.1"
    port: int = Field(ge=1, le=65535)
    # Seconds in-flight RPCs get to finish after SIGTERM before they are cancelled.
    grace_seconds: float = Field(default=10.0, ge=0, le=600)
    log_level: str = Field(default="INFO", pattern="^(DEBUG|INFO|WARNING|ERROR)$")
    # A folder with tls.crt, tls.key and ca.crt (a cert-manager Secret's layout); unset means
    # the one `make run` writes, `.data/pki/<service>`.
    tls_dir: Path | None = None
    # Plain HTTP for Prometheus (/metrics), on `host`. Unset: the service's default
    # (services/common/mesh.py METRICS_PORTS); 0: no exporter.
    metrics_port: int | None = Field(default=None, ge=0, le=65535)

    @property
    def bind_address(self) -> str:
        return f"{self.host}:{self.port}"

    @property
    def metrics_listen_port(self) -> int:
        """Where the exporter listens; 0 when it is off (or the service has no default)."""
        if self.metrics_port is not None:
            return self.metrics_port
        return METRICS_PORTS.get(self.service_name, 0)

    def tls_identity(self) -> TlsIdentity:
        """The service's certificate, key and CA, or exit with one line saying what is missing."""
        folder = self.tls_dir or DATA_DIR / PKI_DIR / self.service_name
        try:
            return TlsIdentity.load(folder)
        except FileNotFoundError as missing:
            sys.exit(
                f"error: {self.service_name} has no certificate: {missing.filename} is missing; "
                f"run `make run` once to create the local ones, or set {self.env_name('tls_dir')}"
            )

    @classmethod
    def env_name(cls, field_name: str) -> str:
        """The environment variable that sets `field_name`, as the operator must spell it."""
        return _env_name(cls, (field_name,))


class GrpcServiceSettings(ServiceSettings):
    """A gRPC service: its mTLS port, and a plaintext port that serves health checks alone."""

    # Kubelet's gRPC probes cannot present a certificate; they dial this port, which answers
    # grpc.health.v1 and nothing else. Unset: the service's default (services/common/mesh.py).
    health_port: int | None = Field(default=None, ge=1, le=65535)

    @property
    def health_bind_address(self) -> str:
        return f"{self.host}:{self.health_port or HEALTH_PORTS[self.service_name]}"


class DatabaseSettings(GrpcServiceSettings):
    """A service that owns a PostgreSQL schema: where the database is and how to pool it."""

    # The PostgreSQL URL the service serves with, as a role that may do only what its store
    # runs (granted at start-up, migrations/grants.sql). Required.
    database_url: str = Field(validation_alias="DATABASE_URL", min_length=1)
    # The schema owner's URL (<PREFIX>MIGRATION_DATABASE_URL), for migrations and grants only.
    # Unset: migrations run as DATABASE_URL's role, which then serves as the owner (a warning).
    migration_database_url: str | None = Field(default=None, min_length=1)
    # Warm connections: the hot RPCs are one short query or transaction each.
    pool_min_size: int = Field(default=2, ge=1, le=100)
    # More connections than the database has cores only queue inside PostgreSQL.
    pool_max_size: int = Field(default=10, ge=1, le=100)
    # How long an RPC waits for a free connection before answering UNAVAILABLE.
    pool_timeout_seconds: float = Field(default=5.0, gt=0, le=60)

    @property
    def migration_url(self) -> str:
        """Where migrations run: the owner's URL when set, else the serving one."""
        return self.migration_database_url or self.database_url

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
