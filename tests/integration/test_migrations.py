"""Replicas starting together: migrations applied from two OS processes at once on a fresh
database both succeed, and each file is applied exactly once (services/common/postgres.py with
the ledger's migrations)."""

from __future__ import annotations

import asyncio
import json
import sys
import time

import psycopg

from services.common.postgres import migration_files
from services.common.settings import REPO_ROOT

LEDGER_MIGRATIONS = REPO_ROOT / "services" / "ledger" / "migrations"
MIGRATE = """
import asyncio, json, sys
from pathlib import Path
from services.common.postgres import apply_migrations
applied = asyncio.run(apply_migrations(sys.argv[1], "ledger", Path(sys.argv[2])))
print(json.dumps(applied))
"""
WAITING_ON_ADVISORY_LOCKS = """
SELECT count(*) FROM pg_locks
WHERE locktype = 'advisory' AND NOT granted
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
"""


def _wait_until_waiting(conn: psycopg.Connection, count: int, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(WAITING_ON_ADVISORY_LOCKS).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.05)
    raise TimeoutError(f"{count} migrating processes never queued on the migration lock")


async def test_two_processes_migrating_at_once_both_succeed(database_url: str) -> None:
    # Hold the migration lock so that both processes are provably inside apply_migrations,
    # contending, before either can go on.
    with psycopg.connect(database_url, autocommit=True) as gate:
        gate.execute("SELECT pg_advisory_lock(hashtextextended('kokoropay.migrations.ledger', 0))")
        processes = [
            await asyncio.create_subprocess_exec(
                sys.executable,
                "-c",
                MIGRATE,
                database_url,
                str(LEDGER_MIGRATIONS),
                cwd=REPO_ROOT,
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            for _ in range(2)
        ]
        await asyncio.to_thread(_wait_until_waiting, gate, 2)
        gate.execute("SELECT pg_advisory_unlock_all()")
        outputs = [await asyncio.wait_for(p.communicate(), 30) for p in processes]

    for process, (_, stderr) in zip(processes, outputs, strict=True):
        assert process.returncode == 0, stderr.decode()
    applied = sorted(json.loads(stdout) for stdout, _ in outputs)
    versions = [path.stem for path in migration_files(LEDGER_MIGRATIONS)]
    assert applied == [[], versions]

    with psycopg.connect(database_url) as conn:
        recorded = conn.execute("SELECT version FROM ledger.schema_migrations").fetchall()
        tables = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'ledger'"
        ).fetchall()
        triggers = conn.execute(
            "SELECT DISTINCT trigger_name FROM information_schema.triggers"
            " WHERE trigger_schema = 'ledger'"
        ).fetchall()
    assert sorted(row[0] for row in recorded) == versions
    assert {row[0] for row in tables} == {
        "schema_migrations",
        "accounts",
        "holds",
        "entries",
        "keyed_requests",
        "payment_events",
    }
    # information_schema lists row triggers only; the TRUNCATE guard is checked elsewhere.
    assert {row[0] for row in triggers} == {
        "entries_append_only",
        "holds_close_once",
        "holds_keyed_capture_within_price",
        "payment_events_append_only",
        "payment_events_record_their_grant",
    }
