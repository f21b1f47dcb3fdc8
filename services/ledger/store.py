"""All of the ledger's SQL: balances, holds and the journal in the `ledger` schema, and the
pool it runs on.

Each write is one transaction sent as one batch (psycopg pipeline mode: one round trip). Its
first statement locks the account's row (`SELECT … FOR UPDATE`), so concurrent requests on
one account take turns inside PostgreSQL, never in this process, and the lock is held only while
the server runs the batch. The statements after the lock run in order, each on a fresh snapshot
(READ COMMITTED), so they see every write committed before the lock was granted and what the
statements before them wrote. Under that lock:

- holds past their deadline are expired first, so the balance read or spent is the true one;
- idempotency keys are looked up before the balance is looked at, so a retry of a successful
  Reserve or Grant returns the original even when the balance has since run low;
- the balance moves only through a conditional `UPDATE … WHERE balance >= amount`, backed by
  the table's `CHECK (balance >= 0)`; the hold and its journal entry are written by the same
  statement, so either all three happen or none does.

Keyed requests (a customer's Idempotency-Key): `reserve_keyed` places a hold that is one attempt
at the request, under the same account lock, after the same expiry, in one transaction of a few
round trips (its branches depend on what it reads). Attempts hold at most what the key may still
be charged, one at a time; once the price is paid the key earns at most `max_replays` free
replays. A trigger (migration 0003) refuses any capture that would take a key past its price.

Unlimited accounts: a hold is placed, counted in `held` and journaled as usual, but draws nothing
from the balance (`drawn = 0`, a HOLD entry of amount 0); its Capture is journaled with the
credits spent. Their prepaid balance is therefore never driven negative and is intact if the
flag is lifted. Each hold remembers what it drew, so a Release returns exactly that even if the
flag changed meanwhile.

Usage: each hold keeps the labels its Reserve gave (API key, voice, format, model; frozen like
the rest of it) and its close_time, so holds are the record of usage and a report built from
them cannot disagree with the money. `summarize_usage` and `list_holds` only read: one statement
each, no lock, on the index holds_by_account_newest (migration 0005).

Top-ups (`top_up`): a payment event grants once across all accounts. Under the lock of the
account it names, one statement writes the GRANT entry (keyed `topup:<event id>`) and the
event's row, which the event id keys (migration 0006), unless the event is known; then the
event's grant is read back, by a later statement, so it sees whatever stopped the write.
Deliveries of one event for one account take turns on its lock, and the later ones find the
event. Deliveries for two accounts hold two locks: one that wrote the event while the other was
writing it fails on the primary key once the other commits, and is run again: a replay.

Metrics (metrics.py): each operation records what its transaction wrote once it has committed,
so a repeated Reserve, Capture or Release and a rolled-back transaction count nothing new.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from pathlib import Path
from typing import Any, LiteralString

from psycopg import AsyncConnection, AsyncCursor, OperationalError
from psycopg.errors import UniqueViolation
from psycopg.rows import dict_row
from psycopg_pool import AsyncConnectionPool, PoolTimeout

from services.common.errors import InvalidArgument, NotFound, ServiceError, Unavailable
from services.common.postgres import open_database
from services.common.settings import DatabaseSettings
from services.ledger import metrics
from services.ledger.ids import new_hold_id

SCHEMA = "ledger"
MIGRATIONS_DIR = Path(__file__).with_name("migrations")
# A top-up's GRANT key is this and the payment event id; migration 0006's trigger checks it.
TOP_UP_KEY_PREFIX = "topup:"

_log = logging.getLogger("ledger.store")

Row = dict[str, Any]
Statement = tuple[LiteralString, dict[str, Any]]


@dataclass(frozen=True)
class Balance:
    """What an account can spend (`balance`), what open holds keep (`held`), and its flag."""

    balance: int
    held: int
    unlimited: bool


@dataclass(frozen=True)
class UsageLabels:
    """What a hold paid for, as its Reserve labelled it; None where not given."""

    key_id: str | None = None
    voice: str | None = None
    response_format: str | None = None
    model: str | None = None


NO_LABELS = UsageLabels()


@dataclass(frozen=True)
class Hold:
    id: str
    account_id: str
    amount: int
    # What the hold took from the balance: `amount`, or 0 on an unlimited account.
    drawn: int
    # held, captured, released or expired.
    state: str
    idempotency_key: str
    expire_time: datetime
    create_time: datetime
    # What Capture spent (1..amount) once captured; None in any other state.
    captured: int | None
    # Credits delivered as of the last Checkpoint: what expiry captures.
    checkpointed: int
    # When it was captured, released or expired; None while held.
    close_time: datetime | None
    labels: UsageLabels


@dataclass(frozen=True)
class DailyKeyUsage:
    """One UTC day's holds of one API key ('' for holds without one)."""

    day: date
    key_id: str
    # Credits the holds captured: by Capture, or by expiry (their last checkpoint).
    characters: int
    # Holds placed, whatever became of them.
    requests: int


@dataclass(frozen=True)
class UsageSummary:
    # The first UTC day the window covers (today, for a one-day window).
    first_day: date
    # By day, then key id; only days and keys with holds.
    usage: list[DailyKeyUsage]


@dataclass(frozen=True)
class Entry:
    id: int
    account_id: str
    # grant, hold, capture, release, expire or unlimited.
    kind: str
    amount: int
    balance_after: int
    hold_id: str | None
    idempotency_key: str | None
    create_time: datetime


@dataclass(frozen=True)
class Discrepancy:
    """One thing wrong with the books (see _VERIFY)."""

    kind: str
    account_id: str
    hold_id: str
    detail: str


@dataclass(frozen=True)
class Verification:
    expired_holds: int
    accounts: int
    holds: int
    discrepancies: list[Discrepancy]


@dataclass(frozen=True)
class KeyedRequest:
    """What a keyed Reserve says of the customer's request (see ledger.proto)."""

    key: str
    fingerprint: str
    price: int
    late_charge: bool = False


@dataclass(frozen=True)
class KeyedReservation:
    """What a keyed Reserve did: a hold (None for a replay or nothing left to charge)."""

    hold: Hold | None
    balance: Balance
    # The attempt key had placed this hold before (a repeated call): nothing held now.
    replayed: bool
    # No hold: the price was paid; serve the request again for free.
    replay: bool
    charged_before: int
    replays_left: int


class AccountNotFound(NotFound):
    def __init__(self, account_id: str) -> None:
        super().__init__(f"account {account_id!r} has no balance: it was never opened")


class HoldNotFound(NotFound):
    def __init__(self, hold_id: str) -> None:
        super().__init__(f"no hold {hold_id!r}")


class IdempotencyKeyReused(ServiceError):
    def __init__(self, key: str, original_amount: int, amount: int) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used for {original_amount} credits, not {amount}",
            reason="IDEMPOTENCY_KEY_REUSED",
        )


class TopUpKeyTaken(ServiceError):
    """Another grant holds the key a top-up would take (Grant refuses such keys since 0006)."""

    def __init__(self, key: str) -> None:
        super().__init__(
            f"idempotency key {key!r} was already used by a grant that is no top-up",
            reason="IDEMPOTENCY_KEY_REUSED",
        )


class InsufficientCredits(ServiceError):
    def __init__(self, balance: int, requested: int) -> None:
        super().__init__(
            f"insufficient credits: {requested} requested, {balance} available",
            reason="INSUFFICIENT_CREDITS",
            metadata={"balance": str(balance), "requested": str(requested)},
        )
        self.balance = balance
        self.requested = requested


class RequestKeyReused(ServiceError):
    def __init__(self, key: str, stored_fingerprint: str) -> None:
        super().__init__(
            f"idempotency key {key!r} already names another request",
            reason="REQUEST_KEY_REUSED",
            metadata={"fingerprint": stored_fingerprint},
        )


class AttemptInProgress(ServiceError):
    def __init__(self, key: str) -> None:
        super().__init__(
            f"an attempt at the request keyed {key!r} is still in progress",
            reason="ATTEMPT_IN_PROGRESS",
        )


class RequestCompleted(ServiceError):
    def __init__(self, key: str, replays: int) -> None:
        super().__init__(
            f"the request keyed {key!r} was paid in full and served again {replays} times",
            reason="REQUEST_COMPLETED",
        )


class HoldClosed(ServiceError):
    """The hold is already captured, released or expired, and the request needs otherwise."""

    def __init__(self, hold: Hold, action: str) -> None:
        super().__init__(
            f"cannot {action} hold {hold.id}: it is already {hold.state}",
            reason=f"HOLD_{hold.state.upper()}",
            metadata={"hold_id": hold.id},
        )
        self.hold = hold


class CaptureExceedsHold(InvalidArgument):
    def __init__(self, hold: Hold, amount: int) -> None:
        super().__init__(f"cannot capture {amount} credits of hold {hold.id}: it has {hold.amount}")


class LedgerUnavailable(Unavailable):
    """The database could not be reached, or no connection freed up in time; worth a retry."""


def _fields(row_type: type[Any]) -> tuple[str, ...]:
    return tuple(f.name for f in dataclasses.fields(row_type))


_HOLD_FIELDS = tuple(name for name in _fields(Hold) if name != "labels")
_LABEL_FIELDS = _fields(UsageLabels)
_ENTRY_FIELDS = _fields(Entry)
_BALANCE_FIELDS = _fields(Balance)


def _hold(row: Row) -> Hold:
    labels = UsageLabels(**{name: row[name] for name in _LABEL_FIELDS})
    return Hold(**{name: row[name] for name in _HOLD_FIELDS}, labels=labels)


def _entry(row: Row) -> Entry:
    return Entry(**{name: row[name] for name in _ENTRY_FIELDS})


def _balance(row: Row) -> Balance:
    return Balance(**{name: row[name] for name in _BALANCE_FIELDS})


def _only(rows: list[Row]) -> Row | None:
    return rows[0] if rows else None


_OPEN_ACCOUNT: LiteralString = """
INSERT INTO ledger.accounts (id) VALUES (%(account_id)s) ON CONFLICT (id) DO NOTHING
"""

_READ_BALANCE: LiteralString = """
SELECT a.balance, a.held, a.unlimited,
       EXISTS (SELECT 1 FROM ledger.holds h
               WHERE h.account_id = a.id AND h.state = 'held' AND h.expire_time <= now())
           AS has_overdue
FROM ledger.accounts a
WHERE a.id = %(account_id)s
"""

# Every write to an account starts here; concurrent writers to the same account queue on it.
_LOCK_ACCOUNT: LiteralString = """
SELECT id FROM ledger.accounts WHERE id = %(account_id)s FOR UPDATE
"""

# Capture and Release know only the hold; its account never changes.
_LOCK_ACCOUNT_OF_HOLD: LiteralString = """
SELECT id FROM ledger.accounts
WHERE id = (SELECT account_id FROM ledger.holds WHERE id = %(hold_id)s)
FOR UPDATE
"""

# Returns the credits of the account's holds past their deadline, one EXPIRE entry each, in
# deadline order with a running balance_after. The account is given directly, or as the owner
# of `hold_id`. The account must already be locked.
# Closes the account's holds past their deadline. A hold with a checkpoint captures it (state
# captured, a CAPTURE entry) and returns the rest; one without returns everything (state
# expired); either way an EXPIRE entry records what went back. Entries are written in deadline
# order with a running balance_after, each hold's CAPTURE before its EXPIRE. The account is
# given directly, or as the owner of `hold_id`; it must already be locked.
_EXPIRE_OVERDUE: LiteralString = """
WITH account AS (
    SELECT coalesce(%(account_id)s::text,
                    (SELECT account_id FROM ledger.holds WHERE id = %(hold_id)s::text)) AS id
), expired AS (
    UPDATE ledger.holds h
    SET state = CASE WHEN h.checkpointed > 0 THEN 'captured' ELSE 'expired' END,
        captured = nullif(h.checkpointed, 0),
        close_time = now()
    FROM account
    WHERE h.account_id = account.id AND h.state = 'held' AND h.expire_time <= now()
    RETURNING h.id, h.account_id, h.amount, h.checkpointed AS spent,
              CASE WHEN h.drawn = 0 THEN 0 ELSE h.amount - h.checkpointed END AS refund,
              h.expire_time
), returned AS (
    UPDATE ledger.accounts a
    SET balance = a.balance + total.refund, held = a.held - total.amount
    FROM (SELECT sum(refund) AS refund, sum(amount) AS amount FROM expired) total, account
    WHERE a.id = account.id AND total.amount IS NOT NULL
    RETURNING a.balance - total.refund AS balance_before
), running AS (
    SELECT e.*, r.balance_before + sum(e.refund) OVER (ORDER BY e.expire_time, e.id) AS after
    FROM expired e, returned r
)
INSERT INTO ledger.entries (account_id, kind, amount, balance_after, hold_id)
SELECT account_id, kind, amount, balance_after, hold_id FROM (
    SELECT expire_time, id AS hold_id, 1 AS step, account_id, 'capture' AS kind, spent AS amount,
           after - refund AS balance_after
    FROM running WHERE spent > 0
    UNION ALL
    SELECT expire_time, id, 2, account_id, 'expire', refund, after
    FROM running
) written
ORDER BY expire_time, hold_id, step
RETURNING hold_id, kind, amount
"""

# A checkpoint on a held hold: it only grows, and the deadline only moves later. Anything else
# (a closed hold, more than the hold) matches nothing and writes nothing.
_CHECKPOINT_IF_HELD: LiteralString = """
UPDATE ledger.holds
SET checkpointed = greatest(checkpointed, %(delivered)s),
    expire_time = greatest(expire_time, now() + %(extend_seconds)s * interval '1 second')
WHERE id = %(hold_id)s AND state = 'held' AND %(delivered)s <= amount
"""

# For the open holds gauge; served by the partial index holds_open_by_deadline, so it reads only
# the open holds, however many closed ones the table keeps.
_COUNT_OPEN_HOLDS: LiteralString = "SELECT count(*) FROM ledger.holds WHERE state = 'held'"

_ACCOUNTS_WITH_OVERDUE_HOLDS: LiteralString = """
SELECT DISTINCT account_id FROM ledger.holds
WHERE state = 'held' AND expire_time <= now()
LIMIT %(limit)s
"""

_HOLD_BY_KEY: LiteralString = """
SELECT * FROM ledger.holds WHERE account_id = %(account_id)s AND idempotency_key = %(key)s
"""

_HOLD_BY_ID: LiteralString = "SELECT * FROM ledger.holds WHERE id = %(hold_id)s"

_GRANT_BY_KEY: LiteralString = """
SELECT * FROM ledger.entries
WHERE account_id = %(account_id)s AND kind = 'grant' AND idempotency_key = %(key)s
"""

_GRANT_IF_NEW_KEY: LiteralString = """
WITH credited AS (
    UPDATE ledger.accounts SET balance = balance + %(amount)s
    WHERE id = %(account_id)s
        AND NOT EXISTS (SELECT 1 FROM ledger.entries
                        WHERE account_id = %(account_id)s AND kind = 'grant'
                            AND idempotency_key = %(key)s)
    RETURNING balance
)
INSERT INTO ledger.entries (account_id, kind, amount, balance_after, idempotency_key)
SELECT %(account_id)s, 'grant', %(amount)s, credited.balance, %(key)s FROM credited
RETURNING *
"""

# A payment event's grant, whichever account it credited.
_TOP_UP_BY_EVENT: LiteralString = """
SELECT e.* FROM ledger.payment_events p JOIN ledger.entries e ON e.id = p.entry_id
WHERE p.id = %(event_id)s
"""

# Credits the account, journals the GRANT and records the event, all or nothing: nothing when
# the event was granted before, or when another grant holds its key. The primary key of
# ledger.payment_events refuses an event another account's transaction recorded meanwhile.
_TOP_UP_IF_NEW_EVENT: LiteralString = """
WITH credited AS (
    UPDATE ledger.accounts SET balance = balance + %(credits)s
    WHERE id = %(account_id)s
        AND NOT EXISTS (SELECT 1 FROM ledger.payment_events WHERE id = %(event_id)s)
        AND NOT EXISTS (SELECT 1 FROM ledger.entries
                        WHERE account_id = %(account_id)s AND kind = 'grant'
                            AND idempotency_key = %(key)s)
    RETURNING balance
), granted AS (
    INSERT INTO ledger.entries (account_id, kind, amount, balance_after, idempotency_key)
    SELECT %(account_id)s, 'grant', %(credits)s, credited.balance, %(key)s FROM credited
    RETURNING *
), recorded AS (
    INSERT INTO ledger.payment_events (id, account_id, credits, entry_id)
    SELECT %(event_id)s, granted.account_id, granted.amount, granted.id FROM granted
)
SELECT * FROM granted
"""

# The conditional debit is the rule "never below zero" (unlimited accounts draw nothing); when
# it matches no row, because the key is taken or the balance too low, nothing is written.
_PLACE_HOLD_IF_NEW_KEY: LiteralString = """
WITH debited AS (
    UPDATE ledger.accounts
    SET balance = balance - CASE WHEN unlimited THEN 0 ELSE %(amount)s END,
        held = held + %(amount)s
    WHERE id = %(account_id)s
        AND (unlimited OR balance >= %(amount)s)
        AND NOT EXISTS (SELECT 1 FROM ledger.holds
                        WHERE account_id = %(account_id)s AND idempotency_key = %(key)s)
    RETURNING balance, unlimited
), hold AS (
    INSERT INTO ledger.holds
        (id, account_id, amount, drawn, idempotency_key, expire_time, keyed_request_id,
         key_id, voice, response_format, model)
    SELECT %(hold_id)s, %(account_id)s, %(amount)s,
           CASE WHEN debited.unlimited THEN 0 ELSE %(amount)s END, %(key)s,
           now() + %(ttl_seconds)s * interval '1 second', %(keyed_request_id)s,
           %(key_id)s, %(voice)s, %(response_format)s, %(model)s
    FROM debited
    RETURNING *
), entry AS (
    INSERT INTO ledger.entries (account_id, kind, amount, balance_after, hold_id, idempotency_key)
    SELECT hold.account_id, 'hold', -hold.drawn, debited.balance, hold.id, hold.idempotency_key
    FROM hold, debited
)
SELECT * FROM hold
"""

# `state = 'held'` closes a hold once even without the account lock (and the holds trigger
# refuses any other transition). Release gives back what the hold drew. It returns the entry it
# wrote, none when the hold was not held: what the metrics count.
_RELEASE_IF_HELD: LiteralString = """
WITH closed AS (
    UPDATE ledger.holds SET state = 'released', close_time = now()
    WHERE id = %(hold_id)s AND state = 'held'
    RETURNING id, account_id, amount, drawn AS refund
), credited AS (
    UPDATE ledger.accounts a SET balance = a.balance + closed.refund, held = a.held - closed.amount
    FROM closed
    WHERE a.id = closed.account_id
    RETURNING a.balance
)
INSERT INTO ledger.entries (account_id, kind, amount, balance_after, hold_id)
SELECT closed.account_id, 'release', closed.refund, credited.balance, closed.id
FROM closed, credited
RETURNING kind, amount
"""

# Capture of `amount` credits (NULL: all of them). The part not spent goes back to the balance
# (if the hold drew it) with a RELEASE entry after the CAPTURE one, so the balance stays the sum
# of the non-CAPTURE entries. An amount above the hold's matches nothing and writes nothing.
# Returns the entries written, for the metrics.
_CAPTURE_IF_HELD: LiteralString = """
WITH closed AS (
    UPDATE ledger.holds
    SET state = 'captured', close_time = now(), captured = coalesce(%(amount)s, amount)
    WHERE id = %(hold_id)s AND state = 'held' AND coalesce(%(amount)s, amount) <= amount
    RETURNING id, account_id, amount, captured,
              CASE WHEN drawn = 0 THEN 0 ELSE amount - captured END AS refund
), credited AS (
    UPDATE ledger.accounts a SET balance = a.balance + closed.refund, held = a.held - closed.amount
    FROM closed
    WHERE a.id = closed.account_id
    RETURNING a.balance
)
INSERT INTO ledger.entries (account_id, kind, amount, balance_after, hold_id)
SELECT account_id, kind, amount, balance_after, hold_id FROM (
    SELECT 1 AS step, closed.account_id, 'capture' AS kind, closed.captured AS amount,
           credited.balance - closed.refund AS balance_after, closed.id AS hold_id
    FROM closed, credited
    UNION ALL
    SELECT 2, closed.account_id, 'release', closed.refund, credited.balance, closed.id
    FROM closed, credited
    WHERE closed.captured < closed.amount
) written
ORDER BY step
RETURNING kind, amount
"""

_LIVE_KEYED_REQUEST: LiteralString = """
SELECT * FROM ledger.keyed_requests
WHERE account_id = %(account_id)s AND key = %(request_key)s AND expire_time > now()
ORDER BY create_time DESC
LIMIT 1
"""

_NEW_KEYED_REQUEST: LiteralString = """
INSERT INTO ledger.keyed_requests (account_id, key, fingerprint, price, expire_time)
VALUES (%(account_id)s, %(request_key)s, %(fingerprint)s, %(price)s,
        now() + %(window_seconds)s * interval '1 second')
RETURNING *
"""

# What the request's attempts captured so far, and whether one is still held.
_KEYED_ATTEMPTS: LiteralString = """
SELECT coalesce(sum(captured) FILTER (WHERE state = 'captured'), 0)::bigint AS charged,
       coalesce(bool_or(state = 'held'), false) AS in_progress
FROM ledger.holds WHERE keyed_request_id = %(keyed_request_id)s
"""

_COUNT_REPLAY: LiteralString = """
UPDATE ledger.keyed_requests SET replays = replays + 1 WHERE id = %(keyed_request_id)s
"""

# The books' invariants, each row one violation: a balance that is not the sum of its journal
# (CAPTURE entries move nothing), held credits that are not the open holds', a hold past its
# deadline still held (run after expiry), a hold that captured more than it held, a keyed
# request whose attempts captured more than its price.
_VERIFY: LiteralString = """
SELECT 'BALANCE_NOT_JOURNAL' AS kind, a.id AS account_id, '' AS hold_id,
       concat('balance ', a.balance, ', journal sums to ', j.total) AS detail
FROM ledger.accounts a
JOIN (SELECT a2.id, coalesce(sum(e.amount) FILTER (WHERE e.kind <> 'capture'), 0) AS total
      FROM ledger.accounts a2 LEFT JOIN ledger.entries e ON e.account_id = a2.id
      GROUP BY a2.id) j ON j.id = a.id
WHERE a.balance <> j.total
UNION ALL
SELECT 'HELD_NOT_OPEN_HOLDS', a.id, '',
       concat('held ', a.held, ', open holds total ', o.total)
FROM ledger.accounts a
JOIN (SELECT a2.id, coalesce(sum(h.amount) FILTER (WHERE h.state = 'held'), 0) AS total
      FROM ledger.accounts a2 LEFT JOIN ledger.holds h ON h.account_id = a2.id
      GROUP BY a2.id) o ON o.id = a.id
WHERE a.held <> o.total
UNION ALL
SELECT 'HOLD_OVERDUE', h.account_id, h.id,
       concat('held past its deadline ', h.expire_time)
FROM ledger.holds h WHERE h.state = 'held' AND h.expire_time <= now()
UNION ALL
SELECT 'CAPTURED_MORE_THAN_HELD', h.account_id, h.id,
       concat('captured ', h.captured, ' of ', h.amount, ' (journal ', c.total, ')')
FROM ledger.holds h
JOIN (SELECT hold_id, sum(amount) AS total FROM ledger.entries
      WHERE kind = 'capture' GROUP BY hold_id) c ON c.hold_id = h.id
WHERE c.total > h.amount OR h.captured > h.amount OR c.total <> coalesce(h.captured, 0)
UNION ALL
SELECT 'KEYED_REQUEST_OVER_PRICE', r.account_id, '',
       concat('key ', r.key, ' captured ', k.total, ' of its price ', r.price)
FROM ledger.keyed_requests r
JOIN (SELECT keyed_request_id, sum(captured) AS total FROM ledger.holds
      WHERE state = 'captured' AND keyed_request_id IS NOT NULL
      GROUP BY keyed_request_id) k ON k.keyed_request_id = r.id
WHERE k.total > r.price
ORDER BY 1, 2, 3
"""

_COUNTS: LiteralString = """
SELECT (SELECT count(*) FROM ledger.accounts) AS accounts,
       (SELECT count(*) FROM ledger.holds) AS holds
"""

_SET_UNLIMITED_IF_CHANGED: LiteralString = """
WITH flagged AS (
    UPDATE ledger.accounts SET unlimited = %(unlimited)s
    WHERE id = %(account_id)s AND unlimited <> %(unlimited)s
    RETURNING balance
)
INSERT INTO ledger.entries (account_id, kind, amount, balance_after)
SELECT %(account_id)s, 'unlimited', 0, flagged.balance FROM flagged
"""

_ENTRIES_PAGE: LiteralString = """
SELECT * FROM ledger.entries
WHERE account_id = %(account_id)s AND (%(before_id)s::bigint IS NULL OR id < %(before_id)s)
ORDER BY id DESC
LIMIT %(limit)s
"""

_ACCOUNT_EXISTS: LiteralString = "SELECT id FROM ledger.accounts WHERE id = %(account_id)s"

# Keyset pagination on (create_time, id), newest first: a page resumes strictly below the last
# hold it showed, so holds placed meanwhile never shift a page and none is shown twice. No token
# starts above every hold. Served by holds_by_account_newest.
_HOLDS_PAGE: LiteralString = """
SELECT * FROM ledger.holds
WHERE account_id = %(account_id)s
    AND (create_time, id) < (coalesce(%(before_time)s::timestamptz, 'infinity'),
                             coalesce(%(before_id)s::text, ''))
ORDER BY create_time DESC, id DESC
LIMIT %(limit)s
"""

# An account's usage per UTC day (of create_time) and key, from the first day of the window
# (`days` UTC days, today included) on, added up by the database in one statement. A hold's
# characters are what it captured, whoever captured it: Capture (in whole or in part), or the
# expiry of a hold with a checkpoint, which captures the checkpoint (state 'captured'). Released
# holds, holds expired with nothing delivered and holds still held add 0; every hold is one
# request. The window starts at a UTC midnight, so holds_by_account_newest serves it.
# One row per (day, key); for an account with no hold in the window, one row of NULLs that
# still carries first_day; no row at all for an account never opened.
_USAGE: LiteralString = """
WITH since AS (
    SELECT (now() AT TIME ZONE 'UTC')::date - (%(days)s::integer - 1) AS first_day
)
SELECT since.first_day, used.day, used.key_id, used.characters, used.requests
FROM ledger.accounts a
CROSS JOIN since
LEFT JOIN LATERAL (
    SELECT (h.create_time AT TIME ZONE 'UTC')::date AS day,
           coalesce(h.key_id, '') AS key_id,
           coalesce(sum(h.captured) FILTER (WHERE h.state = 'captured'), 0)::bigint AS characters,
           count(*) AS requests
    FROM ledger.holds h
    WHERE h.account_id = a.id
        AND h.create_time >= since.first_day::timestamp AT TIME ZONE 'UTC'
    GROUP BY 1, 2
) used ON true
WHERE a.id = %(account_id)s
ORDER BY used.day, used.key_id COLLATE "C"
"""


async def _send(conn: AsyncConnection[Any], statement: Statement) -> AsyncCursor[Row]:
    """Queue a statement on a pipelined connection; its rows arrive at the next sync."""
    cursor = conn.cursor(row_factory=dict_row)
    await cursor.execute(*statement)
    return cursor


def _keyed_outcome(repeated: bool, free_replay: bool, hold: Hold | None) -> str:
    """What a keyed Reserve that raised nothing came to (metrics.RESERVE_OUTCOMES)."""
    if repeated:
        return "replayed"
    if free_replay:
        return "free_replay"
    return "held" if hold is not None else "nothing_due"


def _expire_overdue(*, account_id: str | None = None, hold_id: str | None = None) -> Statement:
    return _EXPIRE_OVERDUE, {"account_id": account_id, "hold_id": hold_id}


class LedgerStore:
    """The ledger's operations, each one transaction and one round trip to PostgreSQL.

    Nothing connects until `open`, so the service listens (NOT_SERVING) before the database.
    """

    def __init__(self) -> None:
        self._pool: AsyncConnectionPool[Any] | None = None

    async def open(self, database: DatabaseSettings) -> None:
        """Migrate the schema, then fill the pool; fails fast when the database is unreachable."""
        self._pool = await open_database(
            database, schema=SCHEMA, migrations=MIGRATIONS_DIR, application_name="kokoropay-ledger"
        )

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()

    @asynccontextmanager
    async def _connection(self) -> AsyncIterator[AsyncConnection[Any]]:
        """A pooled connection; an unreachable or saturated database is LedgerUnavailable."""
        if self._pool is None:
            raise RuntimeError("LedgerStore.open() has not run")
        try:
            async with self._pool.connection() as conn:
                yield conn
        except PoolTimeout as exc:
            raise LedgerUnavailable("the ledger database is busy: no free connection") from exc
        except OperationalError as exc:
            raise LedgerUnavailable(f"the ledger database is unreachable: {exc}") from exc

    async def _run(self, *statements: Statement) -> list[list[Row]]:
        """Run `statements` in order as one transaction in one round trip; each one's rows."""
        async with self._connection() as conn, conn.pipeline():
            async with conn.transaction():
                cursors = [await _send(conn, statement) for statement in statements]
            # Committed; the commit's sync brought every result back.
            return [await c.fetchall() if c.description else [] for c in cursors]

    @asynccontextmanager
    async def _transaction(self) -> AsyncIterator[Callable[..., Awaitable[list[list[Row]]]]]:
        """One transaction whose next statements may depend on earlier results: `run(*stmts)`
        sends a batch in one round trip and returns each one's rows."""
        async with self._connection() as conn, conn.transaction():

            async def run(*statements: Statement) -> list[list[Row]]:
                async with conn.pipeline():
                    cursors = [await _send(conn, statement) for statement in statements]
                return [await c.fetchall() if c.description else [] for c in cursors]

            yield run

    async def open_account(self, account_id: str) -> Balance:
        await self._run((_OPEN_ACCOUNT, {"account_id": account_id}))
        return await self.balance(account_id)

    async def balance(self, account_id: str) -> Balance:
        account = {"account_id": account_id}
        [rows] = await self._run((_READ_BALANCE, account))
        row = _only(rows)
        if row is None:
            raise AccountNotFound(account_id)
        if row["has_overdue"]:
            # Rare: a hold passed its deadline since the sweeper last ran.
            _, expired, rows = await self._run(
                (_LOCK_ACCOUNT, account),
                _expire_overdue(account_id=account_id),
                (_READ_BALANCE, account),
            )
            self._log_expired(account_id, expired)
            row = rows[0]
        return _balance(row)

    async def grant(self, account_id: str, amount: int, key: str) -> tuple[Entry, Balance]:
        params = {"account_id": account_id, "amount": amount, "key": key}
        locked, earlier, granted, balance = await self._run(
            (_LOCK_ACCOUNT, params),
            (_GRANT_BY_KEY, params),
            (_GRANT_IF_NEW_KEY, params),
            (_READ_BALANCE, params),
        )
        if not locked:
            raise AccountNotFound(account_id)
        if earlier:
            original = _entry(earlier[0])
            if original.amount != amount:
                raise IdempotencyKeyReused(key, original.amount, amount)
            return original, _balance(balance[0])
        return _entry(granted[0]), _balance(balance[0])

    async def grant_once(self, account_id: str, amount: int, key: str) -> tuple[Entry, Balance]:
        """Grant under `key` unless the key already granted, whatever amount it granted then
        (a setting changed since does not make a second grant)."""
        try:
            return await self.grant(account_id, amount, key)
        except IdempotencyKeyReused:
            [earlier, balance] = await self._run(
                (_GRANT_BY_KEY, {"account_id": account_id, "key": key}),
                (_READ_BALANCE, {"account_id": account_id}),
            )
            return _entry(earlier[0]), _balance(balance[0])

    async def top_up(
        self, account_id: str, credits: int, event_id: str
    ) -> tuple[Entry, Balance, bool]:
        """The grant of payment event `event_id`: made now for `account_id`, or found (then
        True) whichever account it credited and however many credits it gave; the balance of
        `account_id` after."""
        key = TOP_UP_KEY_PREFIX + event_id
        params = {"account_id": account_id, "credits": credits, "event_id": event_id, "key": key}
        # The lookup comes after the write, so it sees what stopped it: another account's
        # delivery may commit the event between any two of these statements.
        batch = (
            (_LOCK_ACCOUNT, params),
            (_TOP_UP_IF_NEW_EVENT, params),
            (_TOP_UP_BY_EVENT, params),
            (_READ_BALANCE, params),
        )
        try:
            locked, granted, found, balance = await self._run(*batch)
        except UniqueViolation as exc:
            if exc.diag.constraint_name != "payment_events_pkey":
                raise
            # Another account's delivery of the event committed first, and this one wrote
            # nothing; run again, it finds the event.
            locked, granted, found, balance = await self._run(*batch)
        if not locked:
            raise AccountNotFound(account_id)
        if granted:
            return _entry(granted[0]), _balance(balance[0]), False
        if found:
            original = _entry(found[0])
            if (original.account_id, original.amount) != (account_id, credits):
                _log.warning(
                    "payment event %s came again for %s, %d credits; its grant to %s, "
                    "%d credits, stands",
                    event_id,
                    account_id,
                    credits,
                    original.account_id,
                    original.amount,
                    extra={"account_id": account_id, "payment_event_id": event_id},
                )
            return original, _balance(balance[0]), True
        # The account is open and the event new: only a grant holding its key stops the write.
        raise TopUpKeyTaken(key)

    async def set_unlimited(self, account_id: str, unlimited: bool) -> Balance:
        params = {"account_id": account_id, "unlimited": unlimited}
        locked, _, balance = await self._run(
            (_LOCK_ACCOUNT, params),
            (_SET_UNLIMITED_IF_CHANGED, params),
            (_READ_BALANCE, params),
        )
        if not locked:
            raise AccountNotFound(account_id)
        return _balance(balance[0])

    async def reserve(
        self,
        account_id: str,
        amount: int,
        key: str,
        ttl_seconds: int,
        labels: UsageLabels = NO_LABELS,
    ) -> tuple[Hold, Balance, bool]:
        """The hold placed, or found for a repeated key (then True, with the labels it was
        placed with), and the balance after."""
        params = {
            "account_id": account_id,
            "amount": amount,
            "key": key,
            "ttl_seconds": ttl_seconds,
            "hold_id": new_hold_id(),
            "keyed_request_id": None,
            **dataclasses.asdict(labels),
        }
        locked, expired, earlier, placed, balance = await self._run(
            (_LOCK_ACCOUNT, params),
            _expire_overdue(account_id=account_id),
            (_HOLD_BY_KEY, params),
            (_PLACE_HOLD_IF_NEW_KEY, params),
            (_READ_BALANCE, params),
        )
        if not locked:
            raise AccountNotFound(account_id)
        self._log_expired(account_id, expired)
        after = _balance(balance[0])
        if earlier:
            original = _hold(earlier[0])
            if original.amount != amount:
                metrics.record_reserve("refused")
                raise IdempotencyKeyReused(key, original.amount, amount)
            metrics.record_reserve("replayed")
            return original, after, True
        if not placed:
            metrics.record_reserve("insufficient")
            raise InsufficientCredits(after.balance, amount)
        metrics.record_reserve("held")
        return _hold(placed[0]), after, False

    async def reserve_keyed(
        self,
        account_id: str,
        amount: int,
        key: str,
        ttl_seconds: int,
        request: KeyedRequest,
        *,
        window_seconds: int,
        max_replays: int,
        labels: UsageLabels = NO_LABELS,
    ) -> KeyedReservation:
        """A hold for one attempt at `request`, capped at what its key may still be charged.

        RequestKeyReused, AttemptInProgress, RequestCompleted and InsufficientCredits are raised
        after the transaction commits (it may have expired overdue holds, and nothing else).
        """
        params: dict[str, Any] = {
            "account_id": account_id,
            "key": key,
            "ttl_seconds": ttl_seconds,
            "hold_id": new_hold_id(),
            "request_key": request.key,
            "fingerprint": request.fingerprint,
            "price": request.price,
            "window_seconds": window_seconds,
            **dataclasses.asdict(labels),
        }
        refusal: ServiceError | None = None
        async with self._transaction() as run:
            [locked], expired, earlier, live = await run(
                (_LOCK_ACCOUNT, params),
                _expire_overdue(account_id=account_id),
                (_HOLD_BY_KEY, params),
                (_LIVE_KEYED_REQUEST, params),
            )
            if not locked:
                raise AccountNotFound(account_id)
            [record] = live or (await run((_NEW_KEYED_REQUEST, params)))[0]
            params["keyed_request_id"] = record["id"]
            [attempts] = (await run((_KEYED_ATTEMPTS, params)))[0]
            charged, remaining = attempts["charged"], record["price"] - attempts["charged"]
            replays_left = max(max_replays - record["replays"], 0)
            hold: Hold | None = None
            replay = False
            if earlier:
                hold = _hold(earlier[0])  # this very attempt, asked again
            elif record["fingerprint"] != request.fingerprint:
                refusal = RequestKeyReused(request.key, record["fingerprint"])
            elif attempts["in_progress"]:
                # One open hold per key at a time: each holds at most what is left, and nothing
                # else can capture meanwhile, so no capture takes the key past its price.
                refusal = AttemptInProgress(request.key)
            elif remaining <= 0 and request.late_charge:
                pass  # the key has paid its price: the lapsed attempt's audio is paid for
            elif remaining <= 0 and replays_left == 0:
                refusal = RequestCompleted(request.key, record["replays"])
            elif remaining <= 0:
                await run((_COUNT_REPLAY, params))
                replay, replays_left = True, replays_left - 1
            else:
                params["amount"] = min(amount, remaining)
                [placed] = await run((_PLACE_HOLD_IF_NEW_KEY, params))
                if placed:
                    hold = _hold(placed[0])
            [balance_rows] = await run((_READ_BALANCE, params))
        # Committed: only now is any of it true.
        self._log_expired(account_id, expired)
        balance = _balance(balance_rows[0])
        if refusal is not None:
            metrics.record_reserve("refused")
            raise refusal
        if hold is None and not replay and remaining > 0 and not earlier:
            metrics.record_reserve("insufficient")
            raise InsufficientCredits(balance.balance, min(amount, remaining))
        metrics.record_reserve(_keyed_outcome(bool(earlier), replay, hold))
        return KeyedReservation(
            hold=hold,
            balance=balance,
            replayed=bool(earlier),
            replay=replay,
            charged_before=charged,
            replays_left=replays_left,
        )

    async def checkpoint(self, hold_id: str, delivered: int, extend_seconds: int) -> Hold:
        """Record `delivered` on the open hold and keep it alive `extend_seconds` from now.

        HoldClosed once it is captured, released or expired (its last checkpoint was captured
        at expiry); CaptureExceedsHold if `delivered` is more than it holds.
        """
        params = {"hold_id": hold_id, "delivered": delivered, "extend_seconds": extend_seconds}
        hold, _ = await self._settle(hold_id, (_CHECKPOINT_IF_HELD, params))
        if hold.state != "held":
            raise HoldClosed(hold, "checkpoint")
        if delivered > hold.amount:
            raise CaptureExceedsHold(hold, delivered)
        return hold

    async def verify(self, batch_size: int) -> Verification:
        """Expire what is overdue, as the sweeper would, then check the books (see _VERIFY)."""
        expired = 0
        while closed := await self.expire_overdue(batch_size):
            expired += closed
        [rows, [counts]] = await self._run((_VERIFY, {}), (_COUNTS, {}))
        problems = [Discrepancy(**row) for row in rows]
        return Verification(expired, counts["accounts"], counts["holds"], problems)

    async def capture(self, hold_id: str, amount: int | None = None) -> Hold:
        """The hold, captured now or before for `amount` (None: all of it), the rest returned.

        HoldClosed if it was released or expired, or captured for another amount;
        CaptureExceedsHold if `amount` is more than it holds.
        """
        capture = (_CAPTURE_IF_HELD, {"hold_id": hold_id, "amount": amount})
        hold, written = await self._settle(hold_id, capture)
        metrics.record_capture(written)
        wanted = hold.amount if amount is None else amount
        if hold.state == "held":
            raise CaptureExceedsHold(hold, wanted)
        if hold.state != "captured" or hold.captured != wanted:
            raise HoldClosed(hold, "capture")
        return hold

    async def release(self, hold_id: str) -> Hold:
        """The hold, released now or before, or expired; HoldClosed if it was captured.

        A hold past its deadline is expired first, never released.
        """
        hold, written = await self._settle(hold_id, (_RELEASE_IF_HELD, {"hold_id": hold_id}))
        metrics.record_release(written)
        if hold.state == "captured":
            raise HoldClosed(hold, "release")
        return hold

    async def entries(self, account_id: str, limit: int, before_id: int | None) -> list[Entry]:
        """Up to `limit` journal entries, newest first, older than `before_id` when given."""
        params = {"account_id": account_id, "before_id": before_id, "limit": limit}
        account, page = await self._run((_ACCOUNT_EXISTS, params), (_ENTRIES_PAGE, params))
        if not account:
            raise AccountNotFound(account_id)
        return [_entry(row) for row in page]

    async def list_holds(
        self, account_id: str, limit: int, before: tuple[datetime, str] | None
    ) -> list[Hold]:
        """Up to `limit` holds, newest first, below `before` (create_time, id) when given.

        Read as they stand: a hold past its deadline reads HELD until the sweeper or the
        account's next write expires it (within LEDGER_SWEEP_INTERVAL_SECONDS).
        """
        before_time, before_id = before or (None, None)
        params = {
            "account_id": account_id,
            "before_time": before_time,
            "before_id": before_id,
            "limit": limit,
        }
        account, page = await self._run((_ACCOUNT_EXISTS, params), (_HOLDS_PAGE, params))
        if not account:
            raise AccountNotFound(account_id)
        return [_hold(row) for row in page]

    async def summarize_usage(self, account_id: str, days: int) -> UsageSummary:
        """What the account's holds of the last `days` UTC days (today included) charged and
        how many there were, per day and key (see _USAGE)."""
        [rows] = await self._run((_USAGE, {"account_id": account_id, "days": days}))
        if not rows:
            raise AccountNotFound(account_id)
        usage = [
            DailyKeyUsage(row["day"], row["key_id"], row["characters"], row["requests"])
            for row in rows
            if row["day"] is not None
        ]
        return UsageSummary(first_day=rows[0]["first_day"], usage=usage)

    async def expire_overdue(self, max_accounts: int) -> int:
        """Expire the holds past their deadline of up to `max_accounts` accounts; how many."""
        [accounts] = await self._run((_ACCOUNTS_WITH_OVERDUE_HOLDS, {"limit": max_accounts}))
        count = 0
        for row in accounts:
            # One account per transaction: an account's lock is never held across others.
            account_id = row["account_id"]
            _, expired = await self._run(
                (_LOCK_ACCOUNT, {"account_id": account_id}),
                _expire_overdue(account_id=account_id),
            )
            count += self._log_expired(account_id, expired)
        return count

    async def _settle(self, hold_id: str, close: Statement) -> tuple[Hold, list[Row]]:
        """Run `close` on a hold under its account's lock, overdue holds expired first.

        The hold as it then stands, whatever its state, and the rows `close` returned: it only
        acts on a held hold, and callers judge the outcome from the state.
        """
        params = {"hold_id": hold_id}
        _, expired, closed, current = await self._run(
            (_LOCK_ACCOUNT_OF_HOLD, params),
            _expire_overdue(hold_id=hold_id),
            close,
            (_HOLD_BY_ID, params),
        )
        if not current:
            raise HoldNotFound(hold_id)
        hold = _hold(current[0])
        self._log_expired(hold.account_id, expired)
        return hold, closed

    async def count_open_holds(self) -> int:
        """Holds still held, across all accounts: one count on the open holds' partial index."""
        [[row]] = await self._run((_COUNT_OPEN_HOLDS, {}))
        return int(row["count"])

    @staticmethod
    def _log_expired(account_id: str, written: list[Row]) -> int:
        """Log and count what a committed expiry wrote (its EXPIRE and CAPTURE entries); how
        many holds closed."""
        metrics.record_expiries(written)
        closed = [row["hold_id"] for row in written if row["kind"] == "expire"]
        captured = sum(row["amount"] for row in written if row["kind"] == "capture")
        if closed:
            _log.info(
                "expired %d holds, capturing %d checkpointed credits",
                len(closed),
                captured,
                extra={"account_id": account_id, "hold_ids": closed},
            )
        return len(closed)
