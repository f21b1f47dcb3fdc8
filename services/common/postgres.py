"""PostgreSQL for the services that own data (auth, ledger): schema migrations and a pool.

Each service's store owns one schema and a folder of numbered `.sql` files, and opens its
database through `open_database`: migrations first, then the pool. Migrations run inside one
transaction holding a per-schema advisory lock, so replicas starting together apply each file
exactly once: the second waits, then finds nothing left to do.
"""

from __future__ import annotations

import logging
from pathlib import Path

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from services.common.settings import DatabaseSettings

_log = logging.getLogger("postgres")


async def open_database(
    settings: DatabaseSettings,
    *,
    schema: str,
    migrations: Path,
    application_name: str,
    autocommit: bool = False,
) -> AsyncConnectionPool:
    """Bring `schema` up to date with the `migrations` folder, then open the service's pool."""
    await apply_migrations(settings.database_url, schema, migrations)
    return await open_pool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        autocommit=autocommit,
        timeout=settings.pool_timeout_seconds,
        application_name=application_name,
    )


async def open_pool(
    dsn: str,
    *,
    min_size: int = 1,
    max_size: int = 10,
    autocommit: bool = False,
    timeout: float = 30.0,
    application_name: str | None = None,
) -> AsyncConnectionPool:
    """An open pool; fails fast with the server's message when the database is unreachable.

    `autocommit` suits stores whose reads are single statements (no BEGIN/COMMIT round trips);
    they open explicit transactions where several statements must agree. `timeout` bounds the
    wait for a free connection; `application_name` labels the sessions in pg_stat_activity.
    """
    kwargs: dict[str, object] = {"autocommit": autocommit}
    if application_name is not None:
        kwargs["application_name"] = application_name
    pool = AsyncConnectionPool(
        dsn,
        min_size=min_size,
        max_size=max_size,
        open=False,
        timeout=timeout,
        kwargs=kwargs,
    )
    try:
        await pool.open(wait=True, timeout=15)
    except BaseException:
        await pool.close()  # its workers keep retrying otherwise
        raise
    return pool


def migration_files(folder: Path) -> list[Path]:
    """`NNNN_name.sql` files in version order."""
    return sorted(folder.glob("[0-9][0-9][0-9][0-9]_*.sql"))


async def apply_migrations(dsn: str, schema: str, folder: Path) -> list[str]:
    """Apply the folder's migrations not yet recorded in `<schema>.schema_migrations`."""
    applied_now: list[str] = []
    async with await psycopg.AsyncConnection.connect(dsn) as conn, conn.transaction():
        await conn.execute(
            "SELECT pg_advisory_xact_lock(hashtextextended(%s, 0))",
            [f"kokoropay.migrations.{schema}"],
        )
        await conn.execute(sql.SQL("CREATE SCHEMA IF NOT EXISTS {}").format(sql.Identifier(schema)))
        await conn.execute(
            sql.SQL(
                "CREATE TABLE IF NOT EXISTS {}.schema_migrations ("
                " version text PRIMARY KEY, applied_at timestamptz NOT NULL DEFAULT now())"
            ).format(sql.Identifier(schema))
        )
        cursor = await conn.execute(
            sql.SQL("SELECT version FROM {}.schema_migrations").format(sql.Identifier(schema))
        )
        done = {row[0] for row in await cursor.fetchall()}
        for path in migration_files(folder):
            version = path.stem
            if version in done:
                continue
            # Trusted SQL shipped with the service, not user input.
            await conn.execute(path.read_text().encode())
            await conn.execute(
                sql.SQL("INSERT INTO {}.schema_migrations (version) VALUES (%s)").format(
                    sql.Identifier(schema)
                ),
                [version],
            )
            applied_now.append(version)
    if applied_now:
        _log.info("applied migrations %s", applied_now, extra={"schema": schema})
    return applied_now
