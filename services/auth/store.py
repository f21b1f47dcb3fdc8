"""All of auth's SQL: accounts, keys, people, sessions, throttles and key limits in the `auth`
schema, and the pool it runs on.

Connections run in autocommit, and most operations are a single statement: VerifyKey,
ResolveSession and each throttled attempt cost exactly one round trip to PostgreSQL, with no
BEGIN/COMMIT around it. Where one statement reads a row and writes another (a session's use, a
key's use, an attempt's counters) it is a data-modifying CTE, so the decision and the write are
one atomic step. Only the operations that write several rows that must agree (sign-up; a
password change and the sessions it ends) open a transaction, and key creation, which must wait
its turn behind the account's other creations (below).

Decisions that concurrent callers race for are left to the database: a unique index picks the
one sign-up that gets an email, an upsert (`INSERT … ON CONFLICT DO UPDATE … RETURNING`) hands
each attempt its own count, a conditional `UPDATE … WHERE last_use_time < now() - …` makes
replicas write a key's use about once a minute between them, a row lock (`FOR SHARE`) makes a
sign-in wait for a password change in flight before it opens a session, an advisory lock per
account makes key creations count the account's live keys one after another, and the unique
key_hash makes concurrent mints of one session's playground key store it once.

A key's limits (limits.py) are counted in VerifyKey's one statement too: it calls
auth.admit_key_use() (migration 0005), a function whose window upsert locks the key's window row
to the end of the statement's transaction and whose slot statements, each with a fresh snapshot,
then see every slot committed by the admissions before. So one key's concurrent admissions take
turns and none can take the last request or slot twice; different keys never wait for each other.

A playground key (a row with a session_id) lives while its session does, judged in the very
statements that read the key (`_SESSION_LIVES`, ResolveSession's own test): VerifyKey refuses it
as revoked once the session has ended, and lists report it revoked from that moment. Nothing is
written to the key when its session ends.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager, suppress
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any, LiteralString

import psycopg
from psycopg import errors
from psycopg.rows import class_row
from psycopg_pool import AsyncConnectionPool

from services.auth import ids
from services.auth.keys import MAX_LISTED_KEYS
from services.auth.limits import LIMIT_FIELDS, Counted, KeyLimits, KeyUse
from services.auth.sessions import Lifetimes
from services.auth.throttle import FAILURE_WINDOW
from services.common.errors import NotFound, ServiceError, Unavailable
from services.common.postgres import open_database
from services.common.settings import DatabaseSettings

SCHEMA = "auth"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# How often a process asks the database to drop throttle rows that no longer count, sessions
# that ended or expired more than 30 days ago, expired stream slots and long-ended request
# windows.
FORGET_STALE_ROWS_EVERY = timedelta(minutes=10)

_log = logging.getLogger("auth.store")


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
    # When it stopped verifying: revoked, or, for a playground key, when its session ended.
    revoke_time: datetime | None
    last_use_time: datetime | None = None
    # A session's playground key (MintPlaygroundKey).
    playground: bool = False


@dataclass(frozen=True)
class KeyMatch:
    """What VerifyKey needs to know about the key a hash belongs to."""

    key_id: str
    account_id: str
    # Revoked, or a playground key whose session no longer lives.
    revoked: bool


@dataclass(frozen=True)
class KeyAdmission:
    """A key found for a request of some use, and, if it verifies, what its limits made of it."""

    match: KeyMatch
    # None when the key does not verify: nothing was counted.
    counted: Counted | None


@dataclass(frozen=True)
class User:
    id: str
    account_id: str
    email: str
    create_time: datetime


@dataclass(frozen=True)
class Credentials:
    """A person and the argon2id hash their password must match."""

    user: User
    password_hash: str


@dataclass(frozen=True)
class Session:
    """An open session: whose it is, and its deadlines as they now stand."""

    id: str
    user: User
    account: Account
    idle_expire_time: datetime
    expire_time: datetime


@dataclass(frozen=True)
class AttemptCount:
    """An attempt's place in its address's current window."""

    count: int
    retry_after_seconds: float


@dataclass(frozen=True)
class PasswordAttempt:
    """An attempt at an email's password (a sign-in, a password change), as counted."""

    # Its place in its window: the client address's (sign-in) or the session's (ChangePassword).
    window: AttemptCount
    # The email's failures before this attempt (within the window); None when the window was
    # already past its limit, so the attempt was not counted against the email.
    failures: int | None


class AccountNameTaken(ServiceError):
    def __init__(self, name: str) -> None:
        super().__init__(f"an account named {name!r} already exists")


class EmailTaken(ServiceError):
    def __init__(self) -> None:
        super().__init__("a person with this email already exists", reason="EMAIL_TAKEN")


class AccountHasUser(ServiceError):
    def __init__(self) -> None:
        super().__init__("the account already has its person", reason="ACCOUNT_HAS_USER")


class KeyLimitReached(ServiceError):
    """The account holds as many live keys as it may; one must be revoked first."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the account has {limit} live keys, the most it may have; revoke one first",
            reason="KEY_LIMIT_REACHED",
            metadata={"limit": str(limit)},
        )
        self.limit = limit


class AccountNotFound(NotFound):
    def __init__(self, account: str) -> None:
        super().__init__("no such account")
        self.account = account


class KeyNotFound(NotFound):
    def __init__(self, key_id: str) -> None:
        super().__init__("no such key")
        self.key_id = key_id


class UserNotFound(NotFound):
    def __init__(self) -> None:
        super().__init__("no person with this email")


class DatabaseUnavailable(Unavailable):
    """PostgreSQL could not be reached, or no connection freed up in time."""

    def __init__(self) -> None:
        super().__init__("the auth database is unavailable")


class KeyUses:
    """Which keys this process stamped with their last use lately, so that VerifyKey writes a
    key's use at most once per `interval`. Keyed by the key's hash (known before the lookup, so
    the lookup and the write can be one statement); bounded: past `capacity` keys, the one
    stamped longest ago is forgotten (and merely written again at its next use)."""

    def __init__(self, interval: float = 60.0, capacity: int = 100_000) -> None:
        self._interval = interval
        self._capacity = capacity
        self._stamped: dict[bytes, float] = {}

    def due(self, key_hash: bytes, now: float) -> bool:
        stamped = self._stamped.get(key_hash)
        return stamped is None or now - stamped >= self._interval

    def stamped(self, key_hash: bytes, now: float) -> None:
        # Re-inserting moves the key to the end: insertion order is stamp order.
        self._stamped.pop(key_hash, None)
        self._stamped[key_hash] = now
        if len(self._stamped) > self._capacity:
            del self._stamped[next(iter(self._stamped))]

    def __len__(self) -> int:
        return len(self._stamped)


# Whether session `s` lives: not ended, before its absolute deadline, not idle past %(idle)s.
# ResolveSession finds only such a session, and VerifyKey and the key lists judge a playground
# key's session by the very same test.
_SESSION_LIVES: LiteralString = (
    "s.end_time IS NULL AND s.expire_time > now() AND s.last_seen_time > now() - %(idle)s"
)
# When session `s` stopped living (its end, its deadline or its idle deadline, whichever came
# first), or NULL while it lives.
_SESSION_STOP_TIME: LiteralString = f"""
CASE WHEN NOT coalesce({_SESSION_LIVES}, false)
    THEN least(s.end_time, s.expire_time, s.last_seen_time + %(idle)s) END
"""

# A key's row as stored, for the subqueries that pick keys before their sessions are joined.
_KEY_ROW: LiteralString = (
    "id, account_id, name, prefix, create_time, revoke_time, last_use_time, session_id"
)
# A key as ApiKey: key `k`, with its session `s` (LEFT JOINed; NULL for a key of no session),
# reported revoked from the earlier of its revocation and its session's end.
_KEY_COLUMNS: LiteralString = f"""
k.id, k.account_id, k.name, k.prefix, k.create_time,
least(k.revoke_time, CASE WHEN k.session_id IS NOT NULL THEN {_SESSION_STOP_TIME} END)
    AS revoke_time,
k.last_use_time, k.session_id IS NOT NULL AS playground
"""

# Whether key `k` verifies: unrevoked and, if a playground key, of a session that lives (one more
# lookup, by the session's primary key, in the same statement).
_KEY_LIVES: LiteralString = f"""
k.revoke_time IS NULL AND (k.session_id IS NULL OR EXISTS (
    SELECT FROM auth.sessions s WHERE s.id = k.session_id AND {_SESSION_LIVES}
))
"""
# The key stored under a hash, and whether it verifies.
_FOUND_KEY: LiteralString = f"""
SELECT k.id, k.account_id, {_KEY_LIVES} AS live FROM auth.api_keys k WHERE k.key_hash = %(hash)s
"""
_FIND_KEY: LiteralString = f"SELECT id, account_id, NOT live FROM ({_FOUND_KEY}) found"
# Stamps the found key's use unless it does not verify or any replica stamped it within the
# minute; a row lock taken by a concurrent stamp is waited for, then its stamp is seen.
_STAMP_FOUND_KEY: LiteralString = """
UPDATE auth.api_keys k SET last_use_time = now()
FROM found
WHERE k.id = found.id AND found.live AND k.revoke_time IS NULL
    AND (k.last_use_time IS NULL OR k.last_use_time < now() - interval '1 minute')
"""
# The same lookup, stamping the key's use.
_FIND_AND_STAMP_KEY: LiteralString = f"""
WITH found AS ({_FOUND_KEY}), stamped AS ({_STAMP_FOUND_KEY})
SELECT id, account_id, NOT live FROM found
"""

# The lookup for a request of %(use)s (limits.KeyUse), with the key's limits for that use: its
# account's override (LEFT JOINed, read afresh by every call), else the default passed in.
_FOUND_KEY_WITH_LIMITS: LiteralString = f"""
SELECT k.id, k.account_id, {_KEY_LIVES} AS live,
    coalesce(CASE %(use)s::smallint WHEN 1 THEN l.speech_requests_per_minute
                                    WHEN 2 THEN l.prediction_creates_per_minute END,
             %(default_requests)s) AS request_limit,
    coalesce(CASE %(use)s::smallint WHEN 1 THEN l.speech_concurrent_streams
                                    WHEN 2 THEN l.predictions_concurrent END,
             %(default_at_once)s) AS concurrency_limit
FROM auth.api_keys k LEFT JOIN auth.account_limits l ON l.account_id = k.account_id
WHERE k.key_hash = %(hash)s
"""
# ...and, if it verifies, the request admitted under them (migration 0005's auth.admit_key_use:
# counted in the key's window, a slot taken for %(holder)s when one is given). The function's
# own statements wait their turn on the key's window row and then see every slot committed
# before; it is called once (a CTE with a volatile call is never inlined), and only for a live
# key, the filter on `found` being applied before the call.
_ADMITTED: LiteralString = """
SELECT a.request_count, a.window_end_time - now() AS reset, a.slot_taken
FROM found, auth.admit_key_use(
    found.id, %(use)s::smallint, found.request_limit, found.concurrency_limit,
    %(holder)s, %(slot_id)s, %(lease)s
) a
WHERE found.live
"""
_ADMIT_KEY_COLUMNS: LiteralString = """
SELECT found.id, found.account_id, NOT found.live, found.request_limit, found.concurrency_limit,
    admitted.request_count, admitted.reset, admitted.slot_taken
FROM found LEFT JOIN admitted ON true
"""
_ADMIT_KEY: LiteralString = f"""
WITH found AS ({_FOUND_KEY_WITH_LIMITS}), admitted AS ({_ADMITTED})
{_ADMIT_KEY_COLUMNS}
"""
# The same, stamping the key's use. The stamp waits for the admission (it reads `admitted`), so
# every transaction locks the window row before the key's row: two admissions of one key, one of
# them stamping, cannot each hold the lock the other waits for.
_ADMIT_AND_STAMP_KEY: LiteralString = f"""
WITH found AS ({_FOUND_KEY_WITH_LIMITS}), admitted AS ({_ADMITTED}),
stamped AS ({_STAMP_FOUND_KEY} AND EXISTS (SELECT FROM admitted))
{_ADMIT_KEY_COLUMNS}
"""

# A holder's unexpired slots, extended to a full lease from now. An expired slot stays expired:
# an admission may have counted it free already.
_RENEW_SLOTS: LiteralString = """
UPDATE auth.stream_slots SET expire_time = now() + %(lease)s
WHERE holder = %(holder)s AND expire_time > now()
"""

# An account's overrides (NULL: the default), or no row for an unknown account.
_ACCOUNT_LIMITS: LiteralString = """
SELECT l.speech_requests_per_minute, l.speech_concurrent_streams,
    l.prediction_creates_per_minute, l.predictions_concurrent
FROM auth.accounts a LEFT JOIN auth.account_limits l ON l.account_id = a.id
WHERE a.id = %(account)s
"""
# Sets all of an account's overrides at once (NULL: back to the default); no row for an unknown
# account.
_SET_ACCOUNT_LIMITS: LiteralString = """
INSERT INTO auth.account_limits AS l (account_id, speech_requests_per_minute,
    speech_concurrent_streams, prediction_creates_per_minute, predictions_concurrent)
SELECT a.id, %(speech_requests_per_minute)s, %(speech_concurrent_streams)s,
    %(prediction_creates_per_minute)s, %(predictions_concurrent)s
FROM auth.accounts a WHERE a.id = %(account)s
ON CONFLICT (account_id) DO UPDATE SET
    speech_requests_per_minute = excluded.speech_requests_per_minute,
    speech_concurrent_streams = excluded.speech_concurrent_streams,
    prediction_creates_per_minute = excluded.prediction_creates_per_minute,
    predictions_concurrent = excluded.predictions_concurrent,
    update_time = now()
RETURNING l.speech_requests_per_minute, l.speech_concurrent_streams,
    l.prediction_creates_per_minute, l.predictions_concurrent
"""

_USER_COLUMNS: LiteralString = "u.id, u.account_id, u.email, u.create_time"
_SESSION_COLUMNS: LiteralString = (
    f"{_USER_COLUMNS}, a.id, a.name, a.create_time,"
    " s.id, s.last_seen_time + %(idle)s, s.expire_time"
)

# A session by its token's digest, if open, not idle and not too old; its use is written when
# the last write is older than the touch interval. One statement, one round trip.
_RESOLVE_SESSION: LiteralString = f"""
WITH found AS (
    SELECT s.id, s.user_id, s.last_seen_time, s.expire_time FROM auth.sessions s
    WHERE s.token_hash = %(digest)s AND {_SESSION_LIVES}
), touched AS (
    UPDATE auth.sessions t SET last_seen_time = now()
    FROM found
    WHERE t.id = found.id AND t.end_time IS NULL AND t.last_seen_time <= now() - %(touch)s
    RETURNING t.id, t.last_seen_time
), s AS (
    SELECT found.id, found.user_id, found.expire_time,
        coalesce(touched.last_seen_time, found.last_seen_time) AS last_seen_time
    FROM found LEFT JOIN touched ON touched.id = found.id
)
SELECT {_SESSION_COLUMNS}
FROM s JOIN auth.users u ON u.id = s.user_id JOIN auth.accounts a ON a.id = u.account_id
"""

# A session for a person whose password was just checked against `checked_hash`: opened only if
# that is still their hash (a password changed meanwhile must not let the old one in), and the
# email's failures go back to zero with it. The person's row is locked FOR SHARE: a password
# change or reset not yet committed holds it, so this waits for that transaction (which ends the
# sessions open when it ran), then re-reads the row and, the hash being new, opens nothing. A
# plain read would see the old hash and open a session the change never ended. Concurrent
# sign-ins share the lock and do not wait for each other.
_OPEN_SESSION: LiteralString = f"""
WITH checked AS (
    SELECT id FROM auth.users
    WHERE id = %(user_id)s AND password_hash = %(checked_hash)s
    FOR SHARE
), s AS (
    INSERT INTO auth.sessions (id, token_hash, user_id, expire_time)
    SELECT %(id)s, %(digest)s, id, now() + %(max)s FROM checked
    RETURNING id, user_id, last_seen_time, expire_time
), cleared AS (
    UPDATE auth.sign_in_failures SET failures = 0
    WHERE email = %(email)s AND failures > 0 AND EXISTS (SELECT FROM s)
)
SELECT {_SESSION_COLUMNS}
FROM s JOIN auth.users u ON u.id = s.user_id JOIN auth.accounts a ON a.id = u.account_id
"""

# One attempt on an address's counter: the current fixed window gains one, or the next window
# starts at one. `window_start` is now() rounded down to the window, so every replica agrees.
_COUNT_ATTEMPT: LiteralString = """
INSERT INTO auth.throttle_windows AS w (key, window_start, count)
VALUES (%(key)s, to_timestamp(floor(extract(epoch FROM now()) / %(window)s) * %(window)s), 1)
ON CONFLICT (key) DO UPDATE
    SET count = CASE WHEN w.window_start = excluded.window_start THEN w.count + 1 ELSE 1 END,
        window_start = excluded.window_start
RETURNING count, extract(epoch FROM window_start + make_interval(secs => %(window)s) - now())
"""

# An attempt at an email's password: its window's counter (the address's, the session's) and,
# unless that is past its limit, the email's, counted as a failure until the attempt succeeds;
# returns the window's count and the email's failures before this attempt.
_PASSWORD_ATTEMPT: LiteralString = (
    "WITH attempt AS (" + _COUNT_ATTEMPT + "), failure AS ("
    " INSERT INTO auth.sign_in_failures AS f (email, failures, last_failure_time)"
    " SELECT %(email)s, 1, now() FROM attempt WHERE attempt.count <= %(limit)s"
    """
    ON CONFLICT (email) DO UPDATE
        SET failures = CASE WHEN f.last_failure_time > now() - %(failure_window)s
                            THEN f.failures + 1 ELSE 1 END,
            last_failure_time = now()
    RETURNING failures - 1 AS failures_before
    """
    ") SELECT attempt.*, (SELECT failures_before FROM failure) FROM attempt"
)

# A new key, unless the account is unknown or already holds `limit` live keys (then no row);
# playground keys do not count. Run after the account's advisory lock (create_key), so the count
# sees every key committed by the creations before it. A new key has no session and is live.
_CREATE_KEY: LiteralString = """
INSERT INTO auth.api_keys (id, account_id, name, prefix, key_hash)
SELECT %(id)s, a.id, %(name)s, %(prefix)s, %(hash)s FROM auth.accounts a
WHERE a.id = %(account)s
    AND (SELECT count(*) FROM auth.api_keys k
         WHERE k.account_id = a.id AND k.revoke_time IS NULL AND k.session_id IS NULL)
        < %(limit)s
RETURNING id, account_id, name, prefix, create_time, revoke_time, last_use_time
"""
# Creations of one account's keys take turns on this lock, held to the end of the transaction.
# Advisory locks need no grant, and they leave the account's row alone (locking it would need
# UPDATE on accounts, which the serving role must not have).
_LOCK_ACCOUNTS_KEYS: LiteralString = (
    "SELECT pg_advisory_xact_lock(hashtextextended('kokoropay.auth.keys:' || %(account)s, 0))"
)

# An account's keys, newest first: every live one that is not a playground key (there are at
# most AUTH_MAX_KEYS_PER_ACCOUNT), then as many of the newest others (revoked keys and, with
# %(playground)s, playground keys, live or not) as fit in `most`, so no live key is crowded out
# by newer revoked ones. Each half reads an index in order and stops at `most`; the sessions of
# the keys kept are joined last, to report when each playground key stopped.
_LIST_KEYS: LiteralString = f"""
SELECT {_KEY_COLUMNS} FROM (
    SELECT {_KEY_ROW} FROM (
        (SELECT {_KEY_ROW} FROM auth.api_keys
         WHERE account_id = %(account)s AND revoke_time IS NULL AND session_id IS NULL
         ORDER BY create_time DESC, id DESC LIMIT %(most)s)
        UNION ALL
        (SELECT {_KEY_ROW} FROM auth.api_keys
         WHERE account_id = %(account)s
            AND (revoke_time IS NOT NULL OR session_id IS NOT NULL)
            AND (session_id IS NULL OR %(playground)s)
         ORDER BY create_time DESC, id DESC LIMIT %(most)s)
    ) candidates
    ORDER BY (revoke_time IS NULL AND session_id IS NULL) DESC, create_time DESC, id DESC
    LIMIT %(most)s
) k LEFT JOIN auth.sessions s ON s.id = k.session_id
ORDER BY k.create_time DESC, k.id DESC
"""

# Revoke a key, keeping the first revoke time; with %(account)s, only a key of that account and
# never a playground key (its person cannot revoke it: it ends with the session).
_REVOKE_KEY: LiteralString = f"""
WITH k AS (
    UPDATE auth.api_keys SET revoke_time = coalesce(revoke_time, now())
    WHERE id = %(key)s
        AND (%(account)s::text IS NULL OR (account_id = %(account)s AND session_id IS NULL))
    RETURNING {_KEY_ROW}
)
SELECT {_KEY_COLUMNS} FROM k LEFT JOIN auth.sessions s ON s.id = k.session_id
"""

# The session's playground key, stored on first use: found by its hash (the common case, no
# write), else inserted for the session's own account; on a concurrent mint's conflict nothing is
# returned and the caller asks again. A key of that hash bound to another session is not
# returned (it cannot happen short of an HMAC collision).
_PLAYGROUND_KEY: LiteralString = f"""
WITH existing AS (
    SELECT {_KEY_ROW} FROM auth.api_keys WHERE key_hash = %(hash)s
), inserted AS (
    INSERT INTO auth.api_keys (id, account_id, name, prefix, key_hash, session_id)
    SELECT %(id)s, u.account_id, %(name)s, %(prefix)s, %(hash)s, s.id
    FROM auth.sessions s JOIN auth.users u ON u.id = s.user_id
    WHERE s.id = %(session)s AND NOT EXISTS (SELECT FROM existing)
    ON CONFLICT (key_hash) DO NOTHING
    RETURNING {_KEY_ROW}
), k AS (
    SELECT * FROM existing UNION ALL SELECT * FROM inserted
)
SELECT {_KEY_COLUMNS} FROM k LEFT JOIN auth.sessions s ON s.id = k.session_id
WHERE k.session_id = %(session)s
"""


class AuthStore:
    """Nothing connects until `open`, so the service listens (NOT_SERVING) before the database."""

    def __init__(self) -> None:
        self._pool: AsyncConnectionPool | None = None
        self._key_uses = KeyUses()
        self._forgetting: asyncio.Task[None] | None = None

    async def open(self, database: DatabaseSettings) -> None:
        """Migrate the schema, then fill the pool; fails fast when the database is unreachable."""
        self._pool = await open_database(
            database,
            schema=SCHEMA,
            migrations=MIGRATIONS_DIR,
            application_name="kokoropay-auth",
            autocommit=True,
        )
        self._forgetting = asyncio.create_task(self._forget_stale_rows())

    async def close(self) -> None:
        if self._forgetting is not None:
            self._forgetting.cancel()
            with suppress(asyncio.CancelledError):
                await self._forgetting
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

    async def _one(self, query: LiteralString, params: dict[str, Any]) -> tuple[Any, ...] | None:
        async with self._connection() as conn:
            cursor = await conn.execute(query, params)
            return await cursor.fetchone()

    # --- accounts and keys ------------------------------------------------------------------

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

    async def create_key(
        self, account_id: str, name: str, prefix: str, key_hash: bytes, *, limit: int
    ) -> ApiKey:
        """Store a new key for an existing account holding fewer than `limit` live keys;
        AccountNotFound and KeyLimitReached write nothing. Concurrent creations for one account
        take turns, so together they never pass the limit."""
        params = {
            "id": ids.new_id(ids.KEY),
            "account": account_id,
            "name": name,
            "prefix": prefix,
            "hash": key_hash,
            "limit": limit,
        }
        async with self._connection() as conn, conn.transaction():
            await conn.execute(_LOCK_ACCOUNTS_KEYS, params)
            cursor = conn.cursor(row_factory=class_row(ApiKey))
            await cursor.execute(_CREATE_KEY, params)
            key = await cursor.fetchone()
            if key is None:
                exists = await conn.execute(
                    "SELECT 1 FROM auth.accounts WHERE id = %s", [account_id]
                )
                if await exists.fetchone() is None:
                    raise AccountNotFound(account_id)
                raise KeyLimitReached(limit)
        return key

    async def list_keys(
        self,
        account_id: str,
        *,
        playground: bool,
        session_idle: timedelta,
        most: int = MAX_LISTED_KEYS,
    ) -> list[ApiKey]:
        """The account's keys, newest first: every live one but playground keys, then as many
        of the newest others (revoked ones; playground keys if `playground`) as fit in `most`.
        A playground key is reported revoked from when its session stopped living (its end, its
        deadline, or `session_idle` after its last use)."""
        async with self._connection() as conn:
            exists = await conn.execute("SELECT 1 FROM auth.accounts WHERE id = %s", [account_id])
            if await exists.fetchone() is None:
                raise AccountNotFound(account_id)
            cursor = conn.cursor(row_factory=class_row(ApiKey))
            await cursor.execute(
                _LIST_KEYS,
                {
                    "account": account_id,
                    "most": most,
                    "playground": playground,
                    "idle": session_idle,
                },
            )
            return await cursor.fetchall()

    async def revoke_key(
        self, key_id: str, account_id: str | None = None, *, session_idle: timedelta
    ) -> ApiKey:
        """Revoke a key; revoking it again keeps the first revoke time. With `account_id`, a
        key of another account, or a playground key, is KeyNotFound, exactly like one that does
        not exist."""
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(ApiKey))
            await cursor.execute(
                _REVOKE_KEY, {"key": key_id, "account": account_id, "idle": session_idle}
            )
            key = await cursor.fetchone()
        if key is None:
            raise KeyNotFound(key_id)
        return key

    async def playground_key(
        self, session_id: str, prefix: str, key_hash: bytes, *, name: str, session_idle: timedelta
    ) -> ApiKey:
        """The playground key of session `session_id`, stored under `key_hash` the first time
        (for the account of the session's person; it counts towards no limit), found by it
        every time after. One statement; a second only when a concurrent mint stored it first."""
        params = {
            "id": ids.new_id(ids.KEY),
            "session": session_id,
            "name": name,
            "prefix": prefix,
            "hash": key_hash,
            "idle": session_idle,
        }
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(ApiKey))
            for _ in range(2):
                await cursor.execute(_PLAYGROUND_KEY, params)
                key = await cursor.fetchone()
                if key is not None:
                    return key
        # Not there, and not inserted: the session is gone (forgotten), or the hash is bound to
        # another session.
        raise AssertionError(f"no playground key could be stored for session {session_id}")

    async def find_key(self, key_hash: bytes, *, session_idle: timedelta) -> KeyMatch | None:
        """The key stored under `key_hash`: one lookup on its unique index, never cached, so a
        revocation committed by any replica is seen by the very next call. A playground key's
        session is judged in the same statement (`session_idle` as ResolveSession judges it),
        so its end is seen as soon. The same statement stamps the key's use when this process
        has not done so within the minute."""
        now = asyncio.get_running_loop().time()
        stamp = self._key_uses.due(key_hash, now)
        row = await self._one(
            _FIND_AND_STAMP_KEY if stamp else _FIND_KEY,
            {"hash": key_hash, "idle": session_idle},
        )
        if row is None:
            return None
        match = KeyMatch(key_id=row[0], account_id=row[1], revoked=row[2])
        if stamp and not match.revoked:
            self._key_uses.stamped(key_hash, now)
        return match

    async def admit_key(
        self,
        key_hash: bytes,
        *,
        session_idle: timedelta,
        use: KeyUse,
        defaults: KeyLimits,
        holder: str | None,
        slot_id: str,
        lease: timedelta,
    ) -> KeyAdmission | None:
        """find_key, and in the same statement, if the key verifies, its request of `use`
        counted under its limits (its account's overrides, else `defaults`) and, with a
        `holder` (speech), a slot `slot_id` taken for `lease` if one is free. Concurrent
        admissions of one key are counted one after another (migration 0005)."""
        now = asyncio.get_running_loop().time()
        stamp = self._key_uses.due(key_hash, now)
        row = await self._one(
            _ADMIT_AND_STAMP_KEY if stamp else _ADMIT_KEY,
            {
                "hash": key_hash,
                "idle": session_idle,
                "use": int(use),
                "default_requests": defaults.requests_per_minute(use),
                "default_at_once": defaults.at_once(use),
                "holder": holder,
                "slot_id": slot_id,
                "lease": lease,
            },
        )
        if row is None:
            return None
        match = KeyMatch(key_id=row[0], account_id=row[1], revoked=row[2])
        if stamp and not match.revoked:
            self._key_uses.stamped(key_hash, now)
        counted = None
        if not match.revoked:
            counted = Counted(
                request_limit=row[3],
                concurrency_limit=row[4],
                request_count=row[5],
                requests_reset=row[6],
                slot_taken=row[7],
            )
        return KeyAdmission(match, counted)

    async def release_slots(self, holder: str, slot_ids: list[str]) -> int:
        """Delete `holder`'s live slots among `slot_ids` (through auth.release_slots, the
        serving role deleting nothing itself); how many."""
        row = await self._one(
            "SELECT auth.release_slots(%(holder)s, %(ids)s)", {"holder": holder, "ids": slot_ids}
        )
        return 0 if row is None else int(row[0])

    async def renew_slots(self, holder: str, lease: timedelta) -> int:
        """Extend `holder`'s unexpired slots to `lease` from now; how many."""
        async with self._connection() as conn:
            renewed = await conn.execute(_RENEW_SLOTS, {"holder": holder, "lease": lease})
        return renewed.rowcount

    async def account_limits(self, account_id: str) -> KeyLimits:
        """The account's overrides (0: the default); AccountNotFound for an unknown account."""
        row = await self._one(_ACCOUNT_LIMITS, {"account": account_id})
        if row is None:
            raise AccountNotFound(account_id)
        return _overrides(row)

    async def set_account_limits(self, account_id: str, overrides: KeyLimits) -> KeyLimits:
        """Replace the account's overrides (0: back to the default); AccountNotFound for an
        unknown account, which writes nothing."""
        params: dict[str, Any] = {name: getattr(overrides, name) or None for name in LIMIT_FIELDS}
        row = await self._one(_SET_ACCOUNT_LIMITS, {**params, "account": account_id})
        if row is None:
            raise AccountNotFound(account_id)
        return _overrides(row)

    # --- people -----------------------------------------------------------------------------

    async def create_user(self, account_id: str, email: str, password_hash: str) -> User:
        """Give an existing account its person: AccountNotFound, AccountHasUser or EmailTaken
        write nothing."""
        async with self._connection() as conn:
            cursor = conn.cursor(row_factory=class_row(User))
            try:
                await cursor.execute(
                    "INSERT INTO auth.users AS u (id, account_id, email, password_hash)"
                    " SELECT %s, a.id, %s, %s FROM auth.accounts a WHERE a.id = %s"
                    f" RETURNING {_USER_COLUMNS}",
                    [ids.new_id(ids.USER), email, password_hash, account_id],
                )
            except errors.UniqueViolation as exc:
                raise (_taken(exc) or exc) from exc
            user = await cursor.fetchone()
        if user is None:
            raise AccountNotFound(account_id)
        return user

    async def sign_up(
        self, email: str, password_hash: str, token_digest: bytes, lifetimes: Lifetimes
    ) -> Session:
        """A new account, its person and their first session, in one transaction. The account
        is named after the email when that fits and is free, else after the person's id. Of
        concurrent sign-ups with one email, the first to commit wins; the others wait for it
        on the unique index, then fail with EmailTaken and keep nothing."""
        user_id = ids.new_id(ids.USER)
        names = [email, user_id] if len(email) <= 64 else [user_id]
        try:
            async with self._connection() as conn, conn.transaction():
                account: Account | None = None
                for name in names:
                    cursor = conn.cursor(row_factory=class_row(Account))
                    await cursor.execute(
                        "INSERT INTO auth.accounts (id, name) VALUES (%s, %s)"
                        " ON CONFLICT (name) DO NOTHING RETURNING id, name, create_time",
                        [ids.new_id(ids.ACCOUNT), name],
                    )
                    account = await cursor.fetchone()
                    if account is not None:
                        break
                if account is None:
                    raise AssertionError("an account named after a new user id exists")
                await conn.execute(
                    "INSERT INTO auth.users (id, account_id, email, password_hash)"
                    " VALUES (%s, %s, %s, %s)",
                    [user_id, account.id, email, password_hash],
                )
                row = await self._fetch_one(
                    conn,
                    _OPEN_SESSION,
                    {
                        "id": ids.new_id(ids.SESSION),
                        "digest": token_digest,
                        "max": lifetimes.max,
                        "idle": lifetimes.idle,
                        "user_id": user_id,
                        "checked_hash": password_hash,
                        "email": email,
                    },
                )
        except errors.UniqueViolation as exc:
            raise (_taken(exc) or exc) from exc
        if row is None:
            raise AssertionError("the new person's session was not opened")
        return _session(row)

    async def credentials(self, email: str) -> Credentials | None:
        row = await self._one(
            f"SELECT {_USER_COLUMNS}, u.password_hash FROM auth.users u WHERE u.email = %(email)s",
            {"email": email},
        )
        return None if row is None else Credentials(User(*row[:4]), row[4])

    async def open_session(
        self, credentials: Credentials, token_digest: bytes, lifetimes: Lifetimes
    ) -> Session | None:
        """A session for a person whose password matched `credentials`; None when their
        password changed since it was read. Their email's failures go back to zero."""
        row = await self._one(
            _OPEN_SESSION,
            {
                "id": ids.new_id(ids.SESSION),
                "digest": token_digest,
                "max": lifetimes.max,
                "idle": lifetimes.idle,
                "user_id": credentials.user.id,
                "checked_hash": credentials.password_hash,
                "email": credentials.user.email,
            },
        )
        return None if row is None else _session(row)

    async def rehash(self, credentials: Credentials, new_hash: str) -> None:
        """Store the same password under new parameters, unless it changed meanwhile."""
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE auth.users SET password_hash = %s WHERE id = %s AND password_hash = %s",
                [new_hash, credentials.user.id, credentials.password_hash],
            )

    async def resolve_session(self, token_digest: bytes, lifetimes: Lifetimes) -> Session | None:
        row = await self._one(
            _RESOLVE_SESSION,
            {"digest": token_digest, "idle": lifetimes.idle, "touch": lifetimes.touch_interval},
        )
        return None if row is None else _session(row)

    async def end_session(self, token_digest: bytes) -> None:
        async with self._connection() as conn:
            await conn.execute(
                "UPDATE auth.sessions SET end_time = now()"
                " WHERE token_hash = %s AND end_time IS NULL",
                [token_digest],
            )

    async def change_password(
        self, credentials: Credentials, new_hash: str, keep_session_id: str
    ) -> int | None:
        """Set a new password hash if `credentials` still holds the current one, and end the
        person's other sessions: how many, or None when the password changed meanwhile."""
        async with self._connection() as conn, conn.transaction():
            changed = await conn.execute(
                "UPDATE auth.users SET password_hash = %s, password_change_time = now()"
                " WHERE id = %s AND password_hash = %s",
                [new_hash, credentials.user.id, credentials.password_hash],
            )
            if changed.rowcount != 1:
                return None
            ended = await self._end_sessions(conn, credentials.user, keep_session_id)
        return ended

    async def reset_password(self, email: str, new_hash: str) -> tuple[User, int]:
        """Set the password of the person with `email` and end all their sessions."""
        async with self._connection() as conn, conn.transaction():
            cursor = conn.cursor(row_factory=class_row(User))
            await cursor.execute(
                "UPDATE auth.users u SET password_hash = %s, password_change_time = now()"
                f" WHERE u.email = %s RETURNING {_USER_COLUMNS}",
                [new_hash, email],
            )
            user = await cursor.fetchone()
            if user is None:
                raise UserNotFound()
            ended = await self._end_sessions(conn, user, keep_session_id=None)
        return user, ended

    async def _end_sessions(
        self, conn: psycopg.AsyncConnection[Any], user: User, keep_session_id: str | None
    ) -> int:
        """End the person's open sessions but `keep_session_id`; their failures are forgiven."""
        ended = await conn.execute(
            "UPDATE auth.sessions SET end_time = now()"
            " WHERE user_id = %s AND end_time IS NULL AND id IS DISTINCT FROM %s",
            [user.id, keep_session_id],
        )
        await conn.execute(
            "UPDATE auth.sign_in_failures SET failures = 0 WHERE email = %s AND failures > 0",
            [user.email],
        )
        return ended.rowcount

    # --- throttles --------------------------------------------------------------------------

    async def count_attempt(self, key: str, window: timedelta) -> AttemptCount:
        """Count one attempt in `key`'s current fixed window of `window`."""
        row = await self._one(_COUNT_ATTEMPT, {"key": key, "window": window.total_seconds()})
        if row is None:
            raise AssertionError("INSERT … RETURNING returned no row")
        return AttemptCount(row[0], float(row[1]))

    async def password_attempt(
        self, key: str, window: timedelta, limit: int, email: str
    ) -> PasswordAttempt:
        """Count an attempt at `email`'s password in `key`'s window and, within the limit,
        as a failure of the email until it succeeds."""
        row = await self._one(
            _PASSWORD_ATTEMPT,
            {
                "key": key,
                "window": window.total_seconds(),
                "limit": limit,
                "email": email,
                "failure_window": FAILURE_WINDOW,
            },
        )
        if row is None:
            raise AssertionError("INSERT … RETURNING returned no row")
        return PasswordAttempt(AttemptCount(row[0], float(row[1])), row[2])

    async def _forget_stale_rows(self) -> None:
        while True:
            try:
                forgotten = await self._one(
                    "SELECT auth.forget_stale_throttles(), auth.forget_old_sessions(),"
                    " auth.forget_spent_limits()",
                    {},
                )
            except Exception:
                # Only housekeeping: the next round tries again.
                _log.warning(
                    "could not forget stale throttle rows, sessions and limits", exc_info=True
                )
            else:
                if forgotten and any(forgotten):
                    _log.info(
                        "forgot %d stale throttle rows, %d old sessions"
                        " and %d expired slots and windows",
                        *forgotten,
                    )
            await asyncio.sleep(FORGET_STALE_ROWS_EVERY.total_seconds())

    @staticmethod
    async def _fetch_one(
        conn: psycopg.AsyncConnection[Any], query: LiteralString, params: dict[str, Any]
    ) -> tuple[Any, ...] | None:
        cursor = await conn.execute(query, params)
        return await cursor.fetchone()


def _taken(exc: errors.UniqueViolation) -> ServiceError | None:
    """What a unique violation on a person means to the caller; None for any other."""
    constraint = exc.diag.constraint_name
    if constraint == "users_email_key":
        return EmailTaken()
    if constraint == "users_account_id_key":
        return AccountHasUser()
    return None


def _overrides(row: tuple[Any, ...]) -> KeyLimits:
    """A row of an account's four overrides, NULL meaning the default (0)."""
    return KeyLimits(*(value or 0 for value in row))


def _session(row: tuple[Any, ...]) -> Session:
    """A row of `_SESSION_COLUMNS`."""
    user = User(*row[0:4])
    account = Account(*row[4:7])
    return Session(
        id=row[7], user=user, account=account, idle_expire_time=row[8], expire_time=row[9]
    )
