"""The schema the service migrates: procrastinate's own, vendored verbatim, in `predictions`;
and what the serving role may not do, even holding its credentials."""

from __future__ import annotations

import psycopg
import pytest
from procrastinate.schema import SchemaManager

from services.cli.processes import ServiceProcess
from services.predictions.store import _QUEUE_LOAD, MIGRATIONS_DIR
from tests.integration.predictions.mesh import Databases, Predictions

QUEUE_MIGRATION = MIGRATIONS_DIR / "0002_procrastinate_3_10.sql"


def test_the_queue_migration_is_procrastinates_schema_verbatim() -> None:
    text = QUEUE_MIGRATION.read_text()
    body = text.split("SET LOCAL search_path TO predictions;\n", 1)[1]
    body = body.rsplit("SET LOCAL search_path TO DEFAULT;", 1)[0]
    assert body.strip() == SchemaManager.get_schema().strip(), (
        "procrastinate's schema changed: add its migrations as new numbered files (see 0002)"
    )


def test_the_queue_lives_in_the_predictions_schema(
    predictions_service: ServiceProcess, databases: Databases
) -> None:
    with psycopg.connect(databases.owner, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT table_schema FROM information_schema.tables "
            "WHERE table_name LIKE 'procrastinate%%'"
        ).fetchall()
    assert {schema for (schema,) in rows} == {"predictions"}
    assert len(rows) == 4


def _refused(url: str, statement: str) -> None:
    with (
        psycopg.connect(url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement.encode())


async def test_the_serving_role_cannot_rewrite_or_erase(
    predictions: Predictions, databases: Databases
) -> None:
    if databases.serving == databases.owner:
        pytest.skip("making a serving role needs a superuser on DATABASE_URL's server")
    account = await predictions.account()
    created = await predictions.create(account, "Keep me as I am.")
    serving = databases.serving
    where = f"WHERE id = '{created.id}'"
    _refused(serving, f"UPDATE predictions.predictions SET text = 'changed' {where}")
    _refused(serving, f"UPDATE predictions.predictions SET hold_id = 'hold_x' {where}")
    _refused(serving, f"DELETE FROM predictions.predictions {where}")
    _refused(serving, "UPDATE predictions.outputs SET data = ''")
    _refused(serving, "TRUNCATE predictions.procrastinate_jobs")
    _refused(serving, "ALTER TABLE predictions.predictions DISABLE TRIGGER USER")
    _refused(serving, "DELETE FROM predictions.procrastinate_events")
    # An idempotency key is the account's: no statement moves it to another.
    _refused(serving, "UPDATE predictions.idempotency_keys SET account_id = 'acct_other'")
    # What it may update, a finished prediction refuses to change again (the trigger).
    await predictions.cancel(account, created.id)
    with (
        psycopg.connect(serving, autocommit=True) as conn,
        pytest.raises(psycopg.errors.CheckViolation, match="finished once"),
    ):
        conn.execute(f"UPDATE predictions.predictions SET status = 'success' {where}".encode())


def test_the_queue_load_counts_running_and_due_jobs_but_not_backoffs(
    databases: Databases, predictions_service: ServiceProcess
) -> None:
    """What the workers' autoscaler reads (kokoropay_predictions_runnable_jobs): jobs running or
    due now; a retry waiting out its backoff is queued, not runnable."""
    queue = "queue-load-test"  # a queue of its own: other tests' jobs do not count
    jobs = [("todo", None), ("todo", "-1 minute"), ("todo", "+10 minutes"), ("doing", None)]
    with psycopg.connect(databases.owner) as conn:  # rolled back on leaving
        # procrastinate's triggers name its tables unqualified, as its workers' connections do.
        conn.execute("SET LOCAL search_path TO predictions")
        for number, (status, delay) in enumerate(jobs):
            conn.execute(
                "INSERT INTO predictions.procrastinate_jobs"
                " (queue_name, task_name, args, status, scheduled_at, lock)"
                " VALUES (%s, 'predict', '{}', %s, now() + %s::interval, %s)",
                (queue, status, delay, f"queue-load-{number}"),
            )
        row = conn.execute(_QUEUE_LOAD, {"queue": queue}).fetchone()
        conn.rollback()
    assert row == (3, 3)
