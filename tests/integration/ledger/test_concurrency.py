"""Concurrent requests against one account: no overspend, no double hold, no double refund."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Awaitable

import grpc
import pytest
from kokoropay.ledger.v1 import ledger_pb2

from services.common.errors import error_reason
from tests.support.ledger import ADMIN, Ledger, spendable_per_journal


def _assert_journal_chains(entries: list[ledger_pb2.Entry], balance: int) -> None:
    """Oldest to newest, each entry's balance_after follows from the one before it."""
    running = 0
    for entry in reversed(entries):
        if entry.kind != ledger_pb2.ENTRY_KIND_CAPTURE:
            running += entry.amount
        assert entry.balance_after == running, entry
    assert running == balance


async def test_200_concurrent_reserves_never_overspend(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=1000)

    results = await asyncio.gather(
        *(ledger.reserve(account, 7) for _ in range(200)), return_exceptions=True
    )

    holds = [r for r in results if isinstance(r, ledger_pb2.Hold)]
    refusals = [r for r in results if isinstance(r, grpc.aio.AioRpcError)]
    assert len(holds) == 142
    assert len({hold.id for hold in holds}) == 142
    assert len(refusals) == 58
    for refusal in refusals:
        assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refusal) == "INSUFFICIENT_CREDITS"

    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (6, 994)
    entries = await ledger.entries(account)
    kinds = [entry.kind for entry in entries]
    assert kinds.count(ledger_pb2.ENTRY_KIND_HOLD) == 142
    assert kinds.count(ledger_pb2.ENTRY_KIND_GRANT) == 1
    assert len(entries) == 143
    assert spendable_per_journal(entries) == 6
    assert {e.hold_id for e in entries if e.kind == ledger_pb2.ENTRY_KIND_HOLD} == {
        hold.id for hold in holds
    }
    _assert_journal_chains(entries, 6)


async def test_one_key_sent_50_times_at_once_holds_once(ledger: Ledger) -> None:
    # Room for one hold only: a second one, or a balance check before the key lookup, would
    # turn some of the repeats into INSUFFICIENT_CREDITS.
    account = await ledger.open_account(credits=10)
    key = f"req_{uuid.uuid4().hex}"

    holds = await asyncio.gather(*(ledger.reserve(account, 7, key=key) for _ in range(50)))

    assert len({hold.id for hold in holds}) == 1
    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (3, 7)
    entries = await ledger.entries(account)
    hold_entries = [e for e in entries if e.kind == ledger_pb2.ENTRY_KIND_HOLD]
    assert len(hold_entries) == 1
    assert hold_entries[0].idempotency_key == key


async def _outcome(call: Awaitable[object]) -> str:
    try:
        await call
    except grpc.aio.AioRpcError as error:
        assert error.code() == grpc.StatusCode.FAILED_PRECONDITION
        return str(error_reason(error))
    return "OK"


@pytest.mark.parametrize(
    "capture_amount", [0, 4], ids=["whole capture", "partial capture of 4 credits"]
)
async def test_capture_and_release_racing_on_a_hold_one_wins(
    ledger: Ledger, capture_amount: int
) -> None:
    account = await ledger.open_account(credits=1000)
    holds = [await ledger.reserve(account, 10) for _ in range(20)]
    # A captured hold spends what was captured (all 10 when no amount is named), returning the
    # rest; a released one returns all 10.
    spent_per_capture = capture_amount or 10

    # Three Captures and three Releases of every hold, all 120 calls at once.
    calls: list[tuple[str, str, Awaitable[object]]] = []
    for hold in holds:
        for _ in range(3):
            capture = ledger.stub.Capture(
                ledger_pb2.CaptureRequest(hold_id=hold.id, amount=capture_amount)
            )
            release = ledger.stub.Release(ledger_pb2.ReleaseRequest(hold_id=hold.id))
            calls += [(hold.id, "capture", capture), (hold.id, "release", release)]
    outcomes = await asyncio.gather(*(_outcome(call) for _, _, call in calls))

    captured = 0
    for hold in holds:
        results = {
            (action, outcome)
            for (hold_id, action, _), outcome in zip(calls, outcomes, strict=True)
            if hold_id == hold.id
        }
        # Either every Capture succeeded and every Release was refused, or the reverse.
        assert results in (
            {("capture", "OK"), ("release", "HOLD_CAPTURED")},
            {("release", "OK"), ("capture", "HOLD_RELEASED")},
        )
        captured += ("capture", "OK") in results

    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (1000 - spent_per_capture * captured, 0)
    entries = await ledger.entries(account)
    spends = [e.amount for e in entries if e.kind == ledger_pb2.ENTRY_KIND_CAPTURE]
    assert spends == [spent_per_capture] * captured
    closed = {
        e.hold_id
        for e in entries
        if e.kind in (ledger_pb2.ENTRY_KIND_CAPTURE, ledger_pb2.ENTRY_KIND_RELEASE)
    }
    assert closed == {hold.id for hold in holds}
    assert spendable_per_journal(entries) == balance.balance
    _assert_journal_chains(entries, balance.balance)


async def test_grant_repeated_20_times_at_once_credits_once(ledger: Ledger) -> None:
    account = await ledger.open_account()
    request = ledger_pb2.GrantRequest(account_id=account, amount=100, idempotency_key="topup-1")

    responses = await asyncio.gather(
        *(ledger.stub.Grant(request, metadata=ADMIN) for _ in range(20))
    )

    assert len({response.entry.id for response in responses}) == 1
    assert all(response.balance.balance == 100 for response in responses)
    assert (await ledger.balance(account)).balance == 100
    entries = await ledger.entries(account)
    assert [(e.kind, e.amount) for e in entries] == [(ledger_pb2.ENTRY_KIND_GRANT, 100)]
