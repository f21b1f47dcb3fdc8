"""PostgreSQL for the services that own data (auth, ledger): schema migrations and a pool.

Each service's store owns one schema and a folder of numbered `.sql` files, and opens its
database through `open_database`. Migrations run inside one transaction holding a per-schema
advisory lock, so replicas starting together apply each file exactly once: the second waits,
then finds nothing left to do.

Two roles: migrations run as the schema's owner (`<PREFIX>MIGRATION_DATABASE_URL`), the service
serves as another (`DATABASE_URL`). In the migrations' transaction the owner revokes whatever
the serving role held in the schema and grants it what the folder's `grants.sql` declares, the
statements its store runs and nothing else: a serving role owns no table, so it cannot alter
one or disable the triggers that keep the ledger's journal append-only.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql
from psycopg_pool import AsyncConnectionPool

from services.common.settings import DatabaseSettings

_log = logging.getLogger("postgres")

# Beside the migrations: what the service's serving role may do in its schema.
GRANTS_FILE = "grants.sql"


async def open_database(
    settings: DatabaseSettings,
    *,
    schema: str,
    migrations: Path,
    application_name: str,
    autocommit: bool = False,
) -> AsyncConnectionPool:
    """The service's pool, once `schema` is up to date with the `migrations` folder and the
    pool's role holds exactly the privileges of the folder's `grants.sql`."""
    pool = await open_pool(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        autocommit=autocommit,
        timeout=settings.pool_timeout_seconds,
        application_name=application_name,
    )
    try:
        await apply_migrations(
            settings.migration_url, schema, migrations, serving_role=await _role_of(pool)
        )
    except BaseException:
        await pool.close()
        raise
    return pool


async def _role_of(pool: AsyncConnectionPool) -> str:
    """The role the pool's connections act as: the one the migrations grant to."""
    async with pool.connection() as conn:
        cursor = await conn.execute("SELECT current_user")
        row = await cursor.fetchone()
    if row is None:
        raise AssertionError("SELECT current_user returned no row")
    return str(row[0])


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
        # A connection is checked (one empty round trip) before it is handed out, so after a
        # database restart the dead ones are replaced instead of failing a request each.
        check=AsyncConnectionPool.check_connection,
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


async def apply_migrations(
    dsn: str, schema: str, folder: Path, *, serving_role: str | None = None
) -> list[str]:
    """Apply the folder's migrations not yet recorded in `<schema>.schema_migrations`, then
    grant `serving_role`, when given, what the folder's `grants.sql` declares."""
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
        if serving_role is not None:
            await _grant_serving_role(conn, schema, folder / GRANTS_FILE, serving_role)
    if applied_now:
        _log.info("applied migrations %s", applied_now, extra={"schema": schema})
    return applied_now


# Everything a serving role may hold in a schema, taken back before grants.sql gives what it
# declares, so that a privilege dropped from the file is gone at the next start (revoking a
# table's privileges revokes its columns' too).
_REVOKE_ALL = """
REVOKE ALL ON ALL TABLES IN SCHEMA {schema} FROM {role};
REVOKE ALL ON ALL SEQUENCES IN SCHEMA {schema} FROM {role};
REVOKE ALL ON SCHEMA {schema} FROM {role};
"""

# Whether `role` can act as the schema's owner or as whoever migrates (a superuser can): then
# grants would change nothing it can do.
_HAS_OWNER_PRIVILEGES = """
SELECT pg_has_role(%(role)s, current_user, 'MEMBER')
    OR coalesce((SELECT pg_has_role(%(role)s, nspowner, 'MEMBER')
                 FROM pg_namespace WHERE nspname = %(schema)s), false)
"""


async def _grant_serving_role(
    conn: psycopg.AsyncConnection[Any], schema: str, grants: Path, role: str
) -> None:
    """Give `role` exactly what `grants` declares in `schema` (its `{role}` filled in)."""
    cursor = await conn.execute(_HAS_OWNER_PRIVILEGES, {"role": role, "schema": schema})
    row = await cursor.fetchone()
    if row is not None and row[0]:
        _log.warning(
            "serving as %s, which has the owner's privileges on schema %s: it could alter its "
            "tables and disable their triggers. Serve as a role of its own (DATABASE_URL) and "
            "migrate as the owner (the service's *_MIGRATION_DATABASE_URL)",
            role,
            schema,
            extra={"schema": schema},
        )
        return
    names = {"schema": sql.Identifier(schema), "role": sql.Identifier(role)}
    await conn.execute(sql.SQL(_REVOKE_ALL).format(**names))
    # Trusted SQL shipped with the service; the role's name goes in only as an identifier.
    await conn.execute(sql.SQL(grants.read_text()).format(**names))
    _log.info("granted %s what %s declares", role, grants.name, extra={"schema": schema})
