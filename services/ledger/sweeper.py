"""The background task that returns the credits of holds nobody captured or released in time.

A gateway that crashes mid-request never sends Release; without this, its customer's credits
would stay held. Reserve and GetBalance also expire their own account's overdue holds, so this
only decides how soon other readers (the journal, operators) see the EXPIRE entries.

Each pass also refreshes the open holds gauge (metrics.py): one indexed count per interval per
replica, instead of a query per scrape that every replica would answer for every Prometheus.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from services.ledger import metrics
from services.ledger.store import LedgerStore

_log = logging.getLogger("ledger.sweeper")


class HoldSweeper:
    """Expires overdue holds every `interval` seconds until stopped. Safe with many replicas:
    each expiry takes the account's row lock and closes a hold only while it is still held."""

    def __init__(self, store: LedgerStore, interval: float, accounts_per_batch: int) -> None:
        self._store = store
        self._interval = interval
        self._accounts_per_batch = accounts_per_batch
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="hold-sweeper")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def sweep_once(self) -> int:
        """Expire every overdue hold now; how many."""
        total = 0
        while expired := await self._store.expire_overdue(self._accounts_per_batch):
            total += expired
        return total

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            try:
                expired = await self.sweep_once()
                metrics.set_open_holds(await self._store.count_open_holds())
            except Exception:
                # A database restart must not end the sweeping: try again next interval.
                _log.exception("sweeping expired holds failed")
                continue
            if expired:
                _log.info("swept %d expired holds", expired, extra={"expired": expired})
