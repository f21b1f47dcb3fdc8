"""The auth service as tests and benchmarks meet it: a real process, a real socket, real rows."""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from pathlib import Path

import psycopg

from services.cli.processes import ServiceProcess
from tests.support.pki import tls_env


@dataclass(frozen=True)
class AuthSecrets:
    key_hash_secret: str

    @classmethod
    def generate(cls) -> AuthSecrets:
        return cls(secrets.token_urlsafe(32))

    def env(self, database_url: str) -> dict[str, str]:
        return {
            "DATABASE_URL": database_url,
            **tls_env("auth"),
            "AUTH_KEY_HASH_SECRET": self.key_hash_secret,
            # Tests stop services on purpose; nothing they run needs a long drain.
            "AUTH_GRACE_SECONDS": "2",
        }


def start_auth(database_url: str, auth_secrets: AuthSecrets, log_dir: Path) -> ServiceProcess:
    return ServiceProcess("auth", auth_secrets.env(database_url), log_dir).start()


@dataclass(frozen=True)
class RowCounts:
    accounts: int
    keys: int
    revoked_keys: int


def row_counts(database_url: str) -> RowCounts:
    with psycopg.connect(database_url) as conn:
        row = conn.execute(
            "SELECT (SELECT count(*) FROM auth.accounts),"
            " (SELECT count(*) FROM auth.api_keys),"
            " (SELECT count(*) FROM auth.api_keys WHERE revoke_time IS NOT NULL)"
        ).fetchone()
    assert row is not None
    return RowCounts(*row)
