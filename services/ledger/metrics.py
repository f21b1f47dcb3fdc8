"""The ledger's own metrics: what becomes of holds and credits, each event counted once.

The store records an event after the transaction that made it commits, from what that
transaction wrote (its journal entries), never from what was asked: a repeated Reserve is a
`replayed` outcome, not a second hold; a repeated Capture or Release wrote nothing and counts
nothing; an expiry counts once, whichever replica, account write or sweeper made it. Counters
are per replica (sum them); `kokoropay_ledger_open_holds` is the database's count, the same on
every replica (take the max).

No label carries an account, hold or key: outcomes and kinds are the fixed sets below.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from prometheus_client import Counter, Gauge

# What a Reserve came to. held: a hold placed; replayed: the same Reserve again (idempotency
# key), answered with its first hold; insufficient: the balance was too low; free_replay: a
# keyed request already paid, served again for nothing; nothing_due: a late charge for a
# request already paid; refused: a key reused for another amount or request, an attempt still
# in progress, or a request replayed its allowance.
RESERVE_OUTCOMES = ("held", "replayed", "insufficient", "free_replay", "nothing_due", "refused")
# How a hold was captured. full / partial: by Capture, of all or part of it; expiry: at its
# deadline, the credits its last Checkpoint recorded as delivered.
CAPTURE_KINDS = ("full", "partial", "expiry")
# How credits went back to the balance. release: a Release; capture: the part of a hold a
# partial Capture did not spend; expiry: what a hold past its deadline did not spend.
RETURN_PATHS = ("release", "capture", "expiry")

RESERVES = Counter("kokoropay_ledger_reserves", "Reserve calls, by what they came to.", ["outcome"])
CAPTURES = Counter("kokoropay_ledger_captures", "Holds captured, by how.", ["kind"])
RELEASES = Counter("kokoropay_ledger_releases", "Holds released by Release.")
EXPIRIES = Counter(
    "kokoropay_ledger_expiries",
    "Holds closed at their deadline (nobody captured or released them in time).",
)
CREDITS_CAPTURED = Counter(
    "kokoropay_ledger_credits_captured", "Credits spent by captures, by how.", ["kind"]
)
CREDITS_RELEASED = Counter(
    "kokoropay_ledger_credits_released",
    "Credits returned to customers' balances from holds, by how (0 for unlimited accounts,"
    " whose holds draw nothing).",
    ["via"],
)
OPEN_HOLDS = Gauge(
    "kokoropay_ledger_open_holds",
    "Holds still held, across the ledger, as of the sweeper's last pass.",
)

# Labelled once: recording is an increment, and every series reads 0 from the start.
_RESERVES = {outcome: RESERVES.labels(outcome) for outcome in RESERVE_OUTCOMES}
_CAPTURES = {kind: CAPTURES.labels(kind) for kind in CAPTURE_KINDS}
_CREDITS_CAPTURED = {kind: CREDITS_CAPTURED.labels(kind) for kind in CAPTURE_KINDS}
_CREDITS_RELEASED = {path: CREDITS_RELEASED.labels(path) for path in RETURN_PATHS}

Written = Iterable[Mapping[str, Any]]


def record_reserve(outcome: str) -> None:
    _RESERVES[outcome].inc()


def record_capture(written: Written) -> None:
    """A Capture's journal entries: its CAPTURE, and a RELEASE of the rest when partial."""
    kinds = {row["kind"]: row["amount"] for row in written}
    if "capture" not in kinds:
        return  # captured before (a repeat), or not captured at all
    kind = "partial" if "release" in kinds else "full"
    _CAPTURES[kind].inc()
    _CREDITS_CAPTURED[kind].inc(kinds["capture"])
    if kind == "partial":
        _CREDITS_RELEASED["capture"].inc(kinds["release"])


def record_release(written: Written) -> None:
    """A Release's journal entries: one RELEASE, or none when the hold was closed before."""
    for row in written:
        if row["kind"] == "release":
            RELEASES.inc()
            _CREDITS_RELEASED["release"].inc(row["amount"])


def record_expiries(written: Written) -> None:
    """An expiry's journal entries: per hold, an EXPIRE of what went back, after a CAPTURE of
    its checkpoint when it had one."""
    for row in written:
        if row["kind"] == "expire":
            EXPIRIES.inc()
            _CREDITS_RELEASED["expiry"].inc(row["amount"])
        elif row["kind"] == "capture":
            _CAPTURES["expiry"].inc()
            _CREDITS_CAPTURED["expiry"].inc(row["amount"])


def set_open_holds(count: int) -> None:
    OPEN_HOLDS.set(count)
