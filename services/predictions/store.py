"""All of the predictions service's SQL: predictions, their audio, webhook secrets and the job
queue, in the `predictions` schema, and the pool it runs on.

The queue is procrastinate's (migration 0002), in the same schema and database as the rows it
works on, so a prediction and the job that runs it are written by one statement: a prediction
exists exactly when its job does, and a crash between the two is impossible. Likewise the
webhook job of a prediction is deferred in the transaction that finishes it, and cancelling
marks the prediction and asks its job to abort in one transaction. Jobs are deferred by calling
procrastinate's own SQL function (`procrastinate_defer_jobs_v1`, its versioned interface), so
the workers' procrastinate sees them as its own.

Connections run with `search_path=predictions`: procrastinate's functions name their tables
without a schema. This module's own statements name the schema anyway.

State changes are conditional updates (`… WHERE status = 'processing'`): whichever of a worker
finishing and a customer cancelling commits first wins, and the other matches nothing and
learns so from the row count. A trigger (migration 0001) refuses any second finish. The winner
counts the finish in metrics.py once its transaction has committed, so each is counted once.

A key's creations take turns (`creating`): each holds the key's advisory lock from counting the
key's processing predictions to committing its own, so the count always includes every creation
that went before, and no two creations can both take a key's last place. The ledger's Reserve
runs inside that turn (the caller's, between the count and the insert): a refused creation has
reserved nothing, and a worker never sees a prediction before its hold exists. The transaction
is open across that one call, which the ledger's timeout bounds (about 10 s at worst, a few
milliseconds normally). Within one process the key's creations also queue on an asyncio lock
before they take a connection, so one key's flood occupies one pooled connection; and creations
of all keys together hold at most half the pool (`_creation_slots`), so a slow ledger holding
creations open can never take the connections that polls, cancels and downloads need. The
advisory lock is waited for at most `_LOCK_WAIT` (another replica's turn stuck on the ledger):
then the create fails as unavailable and nothing was reserved.

Idempotency keys (migration 0004) are per account, and an account's keys may be used by any of
its API keys, so the key's turn cannot keep two creates of one idempotency key apart; the
primary key of `idempotency_keys` does. A keyed create first looks its key up (`named_by_key`,
one statement, before any turn): a repeat of a committed create is answered there, taking no
turn, slot or lock. Otherwise it claims the key first in its turn (`CreationTurn.claim`: INSERT
… ON CONFLICT), before the count and the Reserve. A second create of the key, on any replica
and under any API key, finds the claim: committed, it is answered with the prediction the key
names; still being written, its INSERT waits on the uncommitted row (within `_LOCK_WAIT`, like
the advisory lock) and then finds it committed, or, if that create failed and rolled back,
claims the key itself. So a key is held by one create at a time and only that one reserves. A
claim older than `IDEMPOTENCY_KEY_SECONDS` is taken over by the next create under its key; the
workers' maintenance deletes the rest (`delete_expired_keys`).
"""

from __future__ import annotations

import asyncio
import base64
import logging
import secrets
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, fields
from datetime import datetime
from pathlib import Path
from typing import Any, LiteralString

from psycopg import AsyncConnection, AsyncCursor, OperationalError
from psycopg.conninfo import conninfo_to_dict, make_conninfo
from psycopg.rows import dict_row
from psycopg.types.json import Jsonb
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.common.errors import NotFound, Unavailable
from services.common.postgres import open_database
from services.common.settings import DatabaseSettings
from services.predictions import metrics
from services.predictions.outputs import MAX_CHUNK_BYTES, StoredOutput
from services.predictions.validation import IdempotencyKey

SCHEMA = "predictions"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# How long an idempotency key names its prediction: the gateway's 24 hours, as for speech.
IDEMPOTENCY_KEY_SECONDS = 24 * 3600

# The queue's tasks (registered by jobs.py under these names) and the queues they run on.
PREDICT_TASK = "predict"
PREDICT_QUEUE = "predictions"
WEBHOOK_TASK = "deliver_webhook"
WEBHOOK_QUEUE = "webhooks"

_log = logging.getLogger("predictions.store")

Row = dict[str, Any]


@dataclass(frozen=True)
class Prediction:
    id: str
    account_id: str
    key_id: str | None
    # processing, success or error.
    status: str
    text: str
    voice: str
    speed: float
    output_format: str
    webhook_url: str | None
    # What the hold holds: len(text) in code points.
    characters: int
    hold_id: str
    job_id: int
    message: str | None
    details: str | None
    predict_time: float | None
    create_time: datetime
    finish_time: datetime | None
    output_expire_time: datetime | None
    settle_time: datetime | None

    @property
    def finished(self) -> bool:
        return self.status != "processing"


@dataclass(frozen=True)
class NewPrediction:
    """What CreatePrediction validated, with its hold."""

    id: str
    account_id: str
    key_id: str
    text: str
    voice: str
    speed: float
    output_format: str
    webhook_url: str | None
    hold_id: str


@dataclass(frozen=True)
class KeyedPrediction:
    """What an idempotency key already names: its prediction as it now stands, and the
    fingerprint of the request that created it."""

    prediction: Prediction
    fingerprint: str


@dataclass(frozen=True)
class QueueLoad:
    """The prediction jobs' queue as the workers see it."""

    # Jobs waiting for a worker, retries waiting out their backoff included.
    waiting: int
    # Jobs running, or queued and due now: what the workers have to run at once, so what they
    # scale on (retries in their backoff are not, or an outage of synth would scale them up).
    runnable: int


@dataclass(frozen=True)
class WebhookSecret:
    secret: str
    create_time: datetime


class PredictionNotFound(NotFound):
    def __init__(self, prediction_id: str) -> None:
        super().__init__(f"no prediction {prediction_id!r}", reason="PREDICTION_NOT_FOUND")


class OutputExpired(NotFound):
    def __init__(self, prediction_id: str) -> None:
        super().__init__(
            f"the output of {prediction_id} has expired and was deleted", reason="OUTPUT_EXPIRED"
        )


class PredictionsUnavailable(Unavailable):
    """The database could not be reached, or no connection freed up in time; worth a retry."""


_PREDICTION_FIELDS = tuple(f.name for f in fields(Prediction))


def _prediction(row: Row) -> Prediction:
    return Prediction(**{name: row[name] for name in _PREDICTION_FIELDS})


def serving_url(database_url: str) -> str:
    """`database_url` with `search_path=predictions` added to its startup options."""
    options = conninfo_to_dict(database_url).get("options") or ""
    return make_conninfo(database_url, options=f"{options} -c search_path={SCHEMA}".strip())


def new_webhook_secret() -> str:
    """Standard Webhooks' form: "whsec_" and base64 of 32 random bytes."""
    return "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()


# A job, deferred through procrastinate's own function so its triggers notify the workers.
_DEFER_JOB: LiteralString = """
SELECT unnest(predictions.procrastinate_defer_jobs_v1(ARRAY[ROW(
    %(queue)s::varchar, %(task)s::varchar, 0, %(lock)s::text, NULL::text, %(args)s::jsonb,
    %(scheduled_at)s::timestamptz
)]::predictions.procrastinate_job_to_defer_v1[])) AS job_id
"""

# The prediction and its job, in one statement: neither exists without the other.
_CREATE: LiteralString = """
WITH job AS (
    SELECT unnest(predictions.procrastinate_defer_jobs_v1(ARRAY[ROW(
        %(queue)s::varchar, %(task)s::varchar, 0, %(id)s::text, NULL::text, %(args)s::jsonb,
        NULL::timestamptz
    )]::predictions.procrastinate_job_to_defer_v1[])) AS id
)
INSERT INTO predictions.predictions
    (id, account_id, key_id, text, voice, speed, output_format, webhook_url, characters,
     hold_id, job_id)
SELECT %(id)s, %(account_id)s, %(key_id)s, %(text)s, %(voice)s, %(speed)s, %(output_format)s,
       %(webhook_url)s, %(characters)s, %(hold_id)s, job.id
FROM job
RETURNING *
"""

# The count below must see every creation committed before this one took the key's lock, so
# each statement of the turn takes its own snapshot, whatever the database's default isolation
# (under REPEATABLE READ the lock's statement would fix the snapshot before the lock was had).
_READ_COMMITTED: LiteralString = "SET TRANSACTION ISOLATION LEVEL READ COMMITTED"
# How long a creation waits for its key's lock held by another replica's turn: past the ledger's
# timeout that turn is stuck, and this one fails as unavailable rather than queueing on.
_LOCK_WAIT: LiteralString = "SET LOCAL lock_timeout = '12s'"

# A key's creations take turns on this lock, held to the end of the transaction. Advisory locks
# need no grant; two keys whose names hash alike merely take turns too.
_LOCK_KEY: LiteralString = (
    "SELECT pg_advisory_xact_lock(hashtextextended('kokoropay.predictions.key:' || %(key_id)s, 0))"
)

# The key's predictions queued or running (cancelled and finished ones are not processing).
# Served by predictions_processing_by_key (migration 0003), whose predicate this repeats.
_ACTIVE_FOR_KEY: LiteralString = """
SELECT count(*) AS active FROM predictions.predictions
WHERE key_id = %(key_id)s AND status = 'processing'
"""

# Claim the account's key for the prediction about to be created: a new key, or one past its
# 24 hours. No row back: the key is held, by a committed create (a concurrent one's INSERT waits
# here until it commits or rolls back) whose claim this leaves locked until the turn ends.
_CLAIM_KEY: LiteralString = """
INSERT INTO predictions.idempotency_keys AS held
    (account_id, idempotency_key, fingerprint, prediction_id)
VALUES (%(account_id)s, %(key)s, %(fingerprint)s, %(prediction_id)s)
ON CONFLICT (account_id, idempotency_key) DO UPDATE
SET fingerprint = excluded.fingerprint, prediction_id = excluded.prediction_id,
    create_time = now()
WHERE held.create_time <= now() - %(key_seconds)s * interval '1 second'
RETURNING prediction_id
"""

# What the account's key names while it is live: asked first, outside any turn, and again by a
# claim the key refused (whose key is then live and locked by that refusal).
_NAMED_BY_KEY: LiteralString = """
SELECT k.fingerprint AS key_fingerprint, p.* FROM predictions.idempotency_keys k
JOIN predictions.predictions p ON p.id = k.prediction_id
WHERE k.account_id = %(account_id)s AND k.idempotency_key = %(key)s
  AND k.create_time > now() - %(key_seconds)s * interval '1 second'
"""

# Claims past their 24 hours, a batch at a time; served by idempotency_keys_by_age. The age is
# tested again outside the subquery: a DELETE that waited on a row a create was taking over
# re-checks only its own WHERE against the new row, and must then leave the fresh claim alone
# (else the key's next retry would create, and reserve, a second prediction).
_DELETE_EXPIRED_KEYS: LiteralString = """
DELETE FROM predictions.idempotency_keys
WHERE create_time <= now() - %(key_seconds)s * interval '1 second'
  AND (account_id, idempotency_key) IN (
    SELECT account_id, idempotency_key FROM predictions.idempotency_keys
    WHERE create_time <= now() - %(key_seconds)s * interval '1 second'
    ORDER BY create_time LIMIT %(limit)s
)
"""

_BY_ID: LiteralString = "SELECT * FROM predictions.predictions WHERE id = %(id)s"

_BY_ACCOUNT_AND_ID: LiteralString = """
SELECT * FROM predictions.predictions WHERE id = %(id)s AND account_id = %(account_id)s
"""

# Keyset pagination on (create_time, id), newest first: predictions created meanwhile never
# shift a page. Served by predictions_by_account_newest.
_PAGE: LiteralString = """
SELECT * FROM predictions.predictions
WHERE account_id = %(account_id)s
    AND (create_time, id) < (coalesce(%(before_time)s::timestamptz, 'infinity'),
                             coalesce(%(before_id)s::text, ''))
ORDER BY create_time DESC, id DESC
LIMIT %(limit)s
"""

_CANCEL_IF_PROCESSING: LiteralString = """
UPDATE predictions.predictions
SET status = 'error', message = 'cancelled', details = %(details)s, finish_time = now()
WHERE id = %(id)s AND account_id = %(account_id)s AND status = 'processing'
RETURNING *
"""

# Abort a running job (its worker is told by NOTIFY and cancels the task), or cancel a queued
# one; a finished job is left alone.
_ABORT_JOB: LiteralString = """
SELECT predictions.procrastinate_cancel_job_v1(%(job_id)s, true, false)
"""

_SUCCEED_IF_PROCESSING: LiteralString = """
UPDATE predictions.predictions
SET status = 'success', predict_time = %(predict_time)s, finish_time = now(),
    output_expire_time = %(output_expire_time)s
WHERE id = %(id)s AND status = 'processing'
RETURNING *
"""

_FAIL_IF_PROCESSING: LiteralString = """
UPDATE predictions.predictions
SET status = 'error', message = %(message)s, details = %(details)s, finish_time = now()
WHERE id = %(id)s AND status = 'processing'
RETURNING *
"""

_MARK_SETTLED: LiteralString = """
UPDATE predictions.predictions SET settle_time = now()
WHERE id = %(id)s AND settle_time IS NULL AND status <> 'processing'
"""

# Finished a while ago and still unsettled: the worker or the cancel that finished it could not
# reach the ledger, or died in between. Served by predictions_unsettled.
_UNSETTLED: LiteralString = """
SELECT * FROM predictions.predictions
WHERE settle_time IS NULL AND status <> 'processing'
    AND finish_time < now() - %(grace_seconds)s * interval '1 second'
ORDER BY finish_time
LIMIT %(limit)s
"""

# Jobs waiting for a worker: one count over one of procrastinate's partial indexes of queued
# jobs (`WHERE status = 'todo'`), so it costs what the queue holds, not what the table has kept
# (about 5 ms for 4,000 queued among 200,000 kept). Made by each worker's maintenance, not per
# scrape.
# Both counts in one pass over the partial index of queued and running jobs.
_QUEUE_LOAD: LiteralString = """
SELECT count(*) FILTER (WHERE status = 'todo') AS waiting,
       count(*) FILTER (
           WHERE status = 'doing' OR scheduled_at IS NULL OR scheduled_at <= now()
       ) AS runnable
FROM predictions.procrastinate_jobs
WHERE status IN ('todo', 'doing') AND queue_name = %(queue)s
"""

_CREATE_SECRET_IF_NONE: LiteralString = """
INSERT INTO predictions.webhook_secrets (account_id, secret) VALUES (%(account_id)s, %(secret)s)
ON CONFLICT (account_id) DO NOTHING
"""

_SECRET: LiteralString = """
SELECT secret, create_time FROM predictions.webhook_secrets WHERE account_id = %(account_id)s
"""

_ROTATE_SECRET: LiteralString = """
INSERT INTO predictions.webhook_secrets (account_id, secret) VALUES (%(account_id)s, %(secret)s)
ON CONFLICT (account_id) DO UPDATE SET secret = excluded.secret, create_time = now()
RETURNING secret, create_time
"""

# Written once: a repeat keeps the first audio (ON CONFLICT DO NOTHING), read back after.
_PUT_OUTPUT: LiteralString = """
INSERT INTO predictions.outputs (prediction_id, content_type, size, data, expire_time)
VALUES (%(id)s, %(content_type)s, %(size)s, %(data)b,
        now() + %(retention_seconds)s * interval '1 second')
ON CONFLICT (prediction_id) DO NOTHING
"""

_OUTPUT_ANY_AGE: LiteralString = """
SELECT size, content_type, expire_time FROM predictions.outputs WHERE prediction_id = %(id)s
"""

_OUTPUT_HEAD: LiteralString = """
SELECT size, content_type, expire_time FROM predictions.outputs
WHERE prediction_id = %(id)s AND expire_time > now()
"""

# substring() of an uncompressed out-of-line bytea reads only the TOAST chunks it needs.
_OUTPUT_PIECE: LiteralString = """
SELECT substring(data FROM %(start)s FOR %(count)s) AS piece FROM predictions.outputs
WHERE prediction_id = %(id)s AND expire_time > now()
"""

# Workers sweeping at once delete each row once: a row another deleted meanwhile is skipped.
_DELETE_EXPIRED_OUTPUTS: LiteralString = """
DELETE FROM predictions.outputs
WHERE prediction_id IN (
    SELECT prediction_id FROM predictions.outputs WHERE expire_time <= now()
    ORDER BY expire_time LIMIT %(limit)s
)
"""


def _defer(
    queue: str,
    task: str,
    args: dict[str, Any],
    lock: str | None = None,
    scheduled_at: datetime | None = None,
) -> dict[str, Any]:
    return {
        "queue": queue,
        "task": task,
        "args": Jsonb(args),
        "lock": lock,
        "scheduled_at": scheduled_at,
    }


def _key_params(keyed: IdempotencyKey) -> dict[str, Any]:
    return {
        "account_id": keyed.account_id,
        "key": keyed.key,
        "fingerprint": keyed.fingerprint,
        "key_seconds": IDEMPOTENCY_KEY_SECONDS,
    }


def _keyed_prediction(row: Row) -> KeyedPrediction:
    return KeyedPrediction(_prediction(row), row["key_fingerprint"])


class KeyTurns:
    """An asyncio lock per key, kept only while someone holds or awaits it."""

    def __init__(self) -> None:
        self._locks: dict[str, tuple[asyncio.Lock, int]] = {}

    def __len__(self) -> int:
        return len(self._locks)

    @asynccontextmanager
    async def turn(self, key: str) -> AsyncIterator[None]:
        lock, users = self._locks.get(key) or (asyncio.Lock(), 0)
        self._locks[key] = (lock, users + 1)
        try:
            async with lock:
                yield
        finally:
            lock, users = self._locks[key]
            if users == 1:
                del self._locks[key]
            else:
                self._locks[key] = (lock, users - 1)


class CreationTurn:
    """A key's turn to create (PredictionStore.creating): `active` is how many of the key's
    predictions were queued or running when the turn began; `create` writes one more, committed
    when the turn ends without an exception."""

    def __init__(self, cursor: AsyncCursor[Row], active: int) -> None:
        self._cursor = cursor
        self.active = active

    async def claim(self, keyed: IdempotencyKey, prediction_id: str) -> KeyedPrediction | None:
        """Take `keyed` for `prediction_id`, the prediction this turn is about to create: None
        when it is ours (the create then goes on), else what the key already names. Waits while
        another create of the key is uncommitted (the header)."""
        params = {**_key_params(keyed), "prediction_id": prediction_id}
        await self._cursor.execute(_CLAIM_KEY, params)
        if await self._cursor.fetchone() is not None:
            return None
        await self._cursor.execute(_NAMED_BY_KEY, params)
        row = await self._cursor.fetchone()
        if row is None:
            # The claim that refused ours is committed and locked by that refusal: it is there.
            raise AssertionError("a held idempotency key names no prediction")
        return _keyed_prediction(row)

    async def create(self, new: NewPrediction) -> Prediction:
        """The prediction and its queued job, written together."""
        params = {
            **_defer(PREDICT_QUEUE, PREDICT_TASK, {"prediction_id": new.id}),
            "id": new.id,
            "account_id": new.account_id,
            "key_id": new.key_id,
            "text": new.text,
            "voice": new.voice,
            "speed": new.speed,
            "output_format": new.output_format,
            "webhook_url": new.webhook_url,
            "hold_id": new.hold_id,
            # What the hold holds, counted here as it was for Reserve; the table's CHECK
            # (char_length, on a UTF-8 database) agrees or refuses.
            "characters": len(new.text),
        }
        await self._cursor.execute(_CREATE, params)
        row = await self._cursor.fetchone()
        if row is None:
            raise AssertionError("INSERT … RETURNING returned no row")
        return _prediction(row)


class PredictionStore:
    """The service's operations on PostgreSQL, each one statement or one transaction.

    Nothing connects until `open`, so the service listens (NOT_SERVING) before the database.
    """

    def __init__(self) -> None:
        self._pool: AsyncConnectionPool[Any] | None = None
        self._key_turns = KeyTurns()
        # Set by `open` from the pool's size: half of it at most for creations' turns.
        self._creation_slots = asyncio.Semaphore(1)

    async def open(self, database: DatabaseSettings) -> None:
        """Migrate the schema, then fill the pool; fails fast when the database is unreachable."""
        serving = database.model_copy(update={"database_url": serving_url(database.database_url)})
        self._pool = await open_database(
            serving,
            schema=SCHEMA,
            migrations=MIGRATIONS_DIR,
            application_name="kokoropay-predictions",
            autocommit=True,
        )
        self._creation_slots = asyncio.Semaphore(max(1, database.pool_max_size // 2))

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; an unreachable or saturated database is Unavailable."""
        if self._pool is None:
            raise RuntimeError("PredictionStore.open() has not run")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise PredictionsUnavailable("the predictions database is busy") from exc
        except OperationalError as exc:
            raise PredictionsUnavailable(f"the predictions database is unreachable: {exc}") from exc

    async def _rows(self, statement: LiteralString, params: dict[str, Any]) -> list[Row]:
        """One statement on its own (autocommit)."""
        async with self._connection() as conn:
            cursor = await conn.cursor(row_factory=dict_row).execute(statement, params)
            return await cursor.fetchall() if cursor.description else []

    # --- predictions ------------------------------------------------------------------------

    @asynccontextmanager
    async def creating(self, key_id: str) -> AsyncIterator[CreationTurn]:
        """The key's turn to create, after every creation of the key before it has committed
        or rolled back (the header). The block decides from `active`, may call out (Reserve),
        and writes with `create`; it commits when the block ends, and an exception rolls back."""
        params = {"key_id": key_id}
        async with (
            self._key_turns.turn(key_id),
            self._creation_slots,
            self._connection() as conn,
            conn.transaction(),
        ):
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_READ_COMMITTED)
            await cursor.execute(_LOCK_WAIT)
            await cursor.execute(_LOCK_KEY, params)
            # A statement of its own, so its snapshot is taken once the lock is ours.
            await cursor.execute(_ACTIVE_FOR_KEY, params)
            row = await cursor.fetchone()
            if row is None:
                raise AssertionError("SELECT count(*) returned no row")
            yield CreationTurn(cursor, row["active"])

    async def named_by_key(self, keyed: IdempotencyKey) -> KeyedPrediction | None:
        """What the account's key names, if it is live and committed; None otherwise (a create
        of the key still uncommitted is not seen: the claim in the turn waits for it)."""
        rows = await self._rows(_NAMED_BY_KEY, _key_params(keyed))
        return _keyed_prediction(rows[0]) if rows else None

    async def get(self, account_id: str, prediction_id: str) -> Prediction:
        """The account's prediction; PredictionNotFound for another account's."""
        rows = await self._rows(_BY_ACCOUNT_AND_ID, {"id": prediction_id, "account_id": account_id})
        if not rows:
            raise PredictionNotFound(prediction_id)
        return _prediction(rows[0])

    async def load(self, prediction_id: str) -> Prediction | None:
        """A prediction whoever's it is (the workers, ReadOutput after its signature)."""
        rows = await self._rows(_BY_ID, {"id": prediction_id})
        return _prediction(rows[0]) if rows else None

    async def page(
        self, account_id: str, limit: int, before: tuple[datetime, str] | None
    ) -> list[Prediction]:
        before_time, before_id = before or (None, None)
        params = {
            "account_id": account_id,
            "before_time": before_time,
            "before_id": before_id,
            "limit": limit,
        }
        return [_prediction(row) for row in await self._rows(_PAGE, params)]

    async def cancel(
        self, account_id: str, prediction_id: str, details: str, webhook_deadline: float
    ) -> tuple[Prediction, bool]:
        """Finish the account's prediction as cancelled if it is still processing, abort its
        job and queue its webhook, in one transaction. The prediction as it then stands, and
        whether this call cancelled it."""
        params = {"id": prediction_id, "account_id": account_id, "details": details}
        async with self._connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(_CANCEL_IF_PROCESSING, params)
            row = await cursor.fetchone()
            if row is None:
                await cursor.execute(_BY_ACCOUNT_AND_ID, params)
                current = await cursor.fetchone()
                if current is None:
                    raise PredictionNotFound(prediction_id)
                return _prediction(current), False
            prediction = _prediction(row)
            await cursor.execute(_ABORT_JOB, {"job_id": prediction.job_id})
            await self._defer_webhook(cursor, prediction, webhook_deadline)
        metrics.count_finished("cancelled")
        return prediction, True

    async def succeed(
        self,
        prediction_id: str,
        predict_time: float,
        output_expire_time: datetime,
        webhook_deadline: float,
    ) -> Prediction | None:
        """Finish as a success and queue the webhook, in one transaction; None if it was no
        longer processing (cancelled meanwhile, or finished by another run)."""
        params = {
            "id": prediction_id,
            "predict_time": predict_time,
            "output_expire_time": output_expire_time,
        }
        return await self._finish(_SUCCEED_IF_PROCESSING, params, webhook_deadline)

    async def fail(
        self, prediction_id: str, message: str, details: str, webhook_deadline: float
    ) -> Prediction | None:
        """Finish as an error and queue the webhook, in one transaction; None if it was no
        longer processing."""
        params = {"id": prediction_id, "message": message, "details": details[:2000]}
        return await self._finish(_FAIL_IF_PROCESSING, params, webhook_deadline)

    async def _finish(
        self, statement: LiteralString, params: dict[str, Any], webhook_deadline: float
    ) -> Prediction | None:
        async with self._connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=dict_row)
            await cursor.execute(statement, params)
            row = await cursor.fetchone()
            if row is None:
                return None
            prediction = _prediction(row)
            await self._defer_webhook(cursor, prediction, webhook_deadline)
        metrics.count_finished(metrics.finished_status(prediction.status, prediction.message))
        return prediction

    @staticmethod
    async def _defer_webhook(cursor: Any, prediction: Prediction, deadline: float) -> None:
        if prediction.webhook_url is None:
            return
        args = {"prediction_id": prediction.id, "deadline": deadline}
        await cursor.execute(_DEFER_JOB, _defer(WEBHOOK_QUEUE, WEBHOOK_TASK, args))

    async def mark_settled(self, prediction_id: str) -> None:
        """Record that the finished prediction's hold is captured or released; once."""
        await self._rows(_MARK_SETTLED, {"id": prediction_id})

    async def delete_expired_keys(self, limit: int) -> int:
        """Delete up to `limit` idempotency keys past their 24 hours; how many went."""
        async with self._connection() as conn:
            cursor = await conn.execute(
                _DELETE_EXPIRED_KEYS, {"key_seconds": IDEMPOTENCY_KEY_SECONDS, "limit": limit}
            )
            return cursor.rowcount

    async def queue_load(self) -> QueueLoad:
        [row] = await self._rows(_QUEUE_LOAD, {"queue": PREDICT_QUEUE})
        return QueueLoad(waiting=int(row["waiting"]), runnable=int(row["runnable"]))

    async def unsettled(self, grace_seconds: float, limit: int) -> list[Prediction]:
        """Finished predictions whose hold is still unsettled after `grace_seconds`."""
        rows = await self._rows(_UNSETTLED, {"grace_seconds": grace_seconds, "limit": limit})
        return [_prediction(row) for row in rows]

    # --- webhook secrets --------------------------------------------------------------------

    async def webhook_secret(self, account_id: str) -> WebhookSecret:
        """The account's secret, created now if it has none."""
        params = {"account_id": account_id, "secret": new_webhook_secret()}
        await self._rows(_CREATE_SECRET_IF_NONE, params)
        [row] = await self._rows(_SECRET, params)
        return WebhookSecret(row["secret"], row["create_time"])

    async def rotate_webhook_secret(self, account_id: str) -> WebhookSecret:
        params = {"account_id": account_id, "secret": new_webhook_secret()}
        [row] = await self._rows(_ROTATE_SECRET, params)
        return WebhookSecret(row["secret"], row["create_time"])


class PostgresOutputs:
    """Audio as bytea rows of `predictions.outputs` (the default OutputStorage)."""

    def __init__(self, store: PredictionStore) -> None:
        self._store = store

    async def put(
        self, prediction_id: str, content_type: str, data: bytes, retention_seconds: int
    ) -> StoredOutput:
        params = {
            "id": prediction_id,
            "content_type": content_type,
            "size": len(data),
            "data": data,
            "retention_seconds": retention_seconds,
        }
        await self._store._rows(_PUT_OUTPUT, params)
        [row] = await self._store._rows(_OUTPUT_ANY_AGE, params)
        return StoredOutput(row["size"], row["content_type"], row["expire_time"])

    async def head(self, prediction_id: str) -> StoredOutput | None:
        rows = await self._store._rows(_OUTPUT_HEAD, {"id": prediction_id})
        if not rows:
            return None
        row = rows[0]
        return StoredOutput(row["size"], row["content_type"], row["expire_time"])

    async def read(self, prediction_id: str, offset: int, length: int) -> AsyncIterator[bytes]:
        end = offset + length
        position = offset
        while position < end:
            count = min(MAX_CHUNK_BYTES, end - position)
            # One statement per chunk: no transaction is held open while a slow client reads.
            rows = await self._store._rows(
                _OUTPUT_PIECE, {"id": prediction_id, "start": position + 1, "count": count}
            )
            if not rows:
                raise OutputExpired(prediction_id)
            piece = bytes(rows[0]["piece"])
            if not piece:
                return
            yield piece
            position += len(piece)

    async def delete_expired(self, limit: int) -> int:
        async with self._store._connection() as conn:
            cursor = await conn.execute(_DELETE_EXPIRED_OUTPUTS, {"limit": limit})
            return cursor.rowcount
