"""All of auth's SQL: accounts and keys in the `auth` schema, and the pool it runs on.

Every operation is a single statement (or, for ListKeys, reads that need no isolation since
accounts are never deleted), so connections run in autocommit: VerifyKey costs exactly one
round trip to PostgreSQL, with no BEGIN/COMMIT around it.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import LiteralString

import psycopg
from psycopg import errors
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.auth import ids
from services.common.errors import NotFound, ServiceError, Unavailable
from services.common.postgres import open_database
from services.common.settings import DatabaseSettings

SCHEMA = "auth"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")


@dataclass(frozen=True)
class Account:
    id: str
    name: str
    create_time: datetime


@dataclass(frozen=True)
class ApiKey:
    id: str
    account_id: str
    name: str
    prefix: str
    create_time: datetime
    revoke_time: datetime | None


@dataclass(frozen=True)
class KeyMatch:
    """What VerifyKey needs to know about the key a hash belongs to."""

    key_id: str
    account_id: str
    revoked: bool


class AccountNameTaken(ServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(f"an account named {name!r} already exists")


class AccountNotFound(NotFound):
    def __init__(self, account: str) -> None:
        super().__init__("no such account")
        self.account = account


class KeyNotFound(NotFound):
    def __init__(self, key_id: str) -> None:
        super().__init__("no such key")
        self.key_id = key_id


class DatabaseUnavailable(Unavailable):
    """PostgreSQL could not be reached, or no connection freed up in time."""

    def __init__(self) -> None:
        super().__init__("the auth database is unavailable")


_KEY_COLUMNS = "id, account_id, name, prefix, create_time, revoke_time"


class AuthStore:
    """Nothing connects until `open`, so the service listens (NOT_SERVING) before the database."""

    def __init__(self) -> None:
        self._pool: AsyncConnectionPool | None = None

    async def open(self, database: DatabaseSettings) -> None:
        """Migrate the schema, then fill the pool; fails fast when the database is unreachable."""
        self._pool = await open_database(
            database,
            schema=SCHEMA,
            migrations=MIGRATIONS_DIR,
            application_name="kokoropay-auth",
            autocommit=True,
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[psycopg.AsyncConnection]:
        if self._pool is None:
            raise RuntimeError("AuthStore.open() has not run")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except psycopg.OperationalError as exc:  # PoolTimeout included
            raise DatabaseUnavailable() from exc

    async def create_account(self, name: str) -> Account:
        try:
            async with self._connection() as conn:
                cursor = conn.cursor(row_factory=class_row(Account))
                await cursor.execute(
                    "INSERT INTO auth.accounts (id, name) VALUES (%s, %s)"
                    " RETURNING id, name, create_time",
                    [ids.new_id(ids.ACCOUNT), name],
                )
                account = await cursor.fetchone()
        except errors.UniqueViolation as exc:
            if exc.diag.constraint_name == "accounts_name_key":
                raise AccountNameTaken(name) from exc
            raise
        if account is None:
            raise AssertionError("INSERT … RETURNING returned no row")
        return account

    async def get_account_by_id(self, account_id: str) -> Account:
        return await self._one_account(
            "SELECT id, name, create_time FROM auth.accounts WHERE id = %s", account_id
        )

    async def get_account_by_name(self, name: str) -> Account:
        return await self._one_account(
            "SELECT id, name, create_time FROM auth.accounts WHERE name = %s", name
        )

    async def _one_account(self, query: LiteralString, value: str) -> Account:
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(Account))
            await cursor.execute(query, [value])
            account = await cursor.fetchone()
        if account is None:
            raise AccountNotFound(value)
        return account

    async def create_key(self, account_id: str, name: str, prefix: str, key_hash: bytes) -> ApiKey:
        """Store a new key for an existing account; AccountNotFound writes nothing."""
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(ApiKey))
            # Selecting the account in the same statement makes "unknown account" a no-op insert.
            await cursor.execute(
                "INSERT INTO auth.api_keys (id, account_id, name, prefix, key_hash)"
                " SELECT %s, a.id, %s, %s, %s FROM auth.accounts a WHERE a.id = %s"
                f" RETURNING {_KEY_COLUMNS}",
                [ids.new_id(ids.KEY), name, prefix, key_hash, account_id],
            )
            key = await cursor.fetchone()
        if key is None:
            raise AccountNotFound(account_id)
        return key

    async def list_keys(self, account_id: str) -> list[ApiKey]:
        """The account's keys, revoked ones included, newest first."""
        async with self._connection() as conn:
            exists = await conn.execute("SELECT 1 FROM auth.accounts WHERE id = %s", [account_id])
            if await exists.fetchone() is None:
                raise AccountNotFound(account_id)
            cursor = conn.cursor(row_factory=class_row(ApiKey))
            await cursor.execute(
                f"SELECT {_KEY_COLUMNS} FROM auth.api_keys WHERE account_id = %s"
                " ORDER BY create_time DESC, id DESC",
                [account_id],
            )
            return await cursor.fetchall()

    async def revoke_key(self, key_id: str) -> ApiKey:
        """Revoke a key; revoking it again keeps the first revoke time."""
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(ApiKey))
            await cursor.execute(
                "UPDATE auth.api_keys SET revoke_time = coalesce(revoke_time, now())"
                f" WHERE id = %s RETURNING {_KEY_COLUMNS}",
                [key_id],
            )
            key = await cursor.fetchone()
        if key is None:
            raise KeyNotFound(key_id)
        return key

    async def find_key(self, key_hash: bytes) -> KeyMatch | None:
        """The key stored under `key_hash`: one lookup on its unique index, never cached, so a
        revocation committed by any replica is seen by the very next call."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                "SELECT id, account_id, revoke_time IS NOT NULL"
                " FROM auth.api_keys WHERE key_hash = %s",
                [key_hash],
            )
            row = await cursor.fetchone()
        if row is None:
            return None
        return KeyMatch(key_id=row[0], account_id=row[1], revoked=row[2])
