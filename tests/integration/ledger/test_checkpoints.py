"""Holds that follow the stream: checkpoints, expiry that captures the last one, and Verify.

A caller that dies mid-stream must neither keep the customer's credits nor give the delivered
part away: the hold expires into a capture of its last checkpoint and a return of the rest,
exactly once, however expiry, Capture and Release race.
"""

from __future__ import annotations

import asyncio

import grpc
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E

from services.common.errors import error_reason
from tests.support.ledger import Ledger, spendable_per_journal


async def _checkpoint(
    ledger: Ledger, hold_id: str, delivered: int, extend_seconds: int = 0
) -> E.Hold:
    response = await ledger.stub.Checkpoint(
        E.CheckpointRequest(hold_id=hold_id, delivered=delivered, extend_seconds=extend_seconds)
    )
    return response.hold


async def _refused(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def test_a_checkpoint_only_grows_and_the_deadline_only_moves_later(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30, ttl_seconds=60)

    first = await _checkpoint(ledger, hold.id, 10, extend_seconds=600)
    lower = await _checkpoint(ledger, hold.id, 4, extend_seconds=5)

    assert first.checkpointed == lower.checkpointed == 10
    assert first.expire_time.seconds >= hold.create_time.seconds + 600
    assert lower.expire_time == first.expire_time  # 5 s from now is earlier: unchanged
    refused = await _refused(_checkpoint(ledger, hold.id, 31))
    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (await ledger.balance(account)).balance == 70


async def test_an_expired_hold_captures_its_last_checkpoint_and_returns_the_rest(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30, ttl_seconds=1)
    await _checkpoint(ledger, hold.id, 12)
    await asyncio.sleep(1.2)

    balance = await ledger.balance(account)  # expires the account's overdue holds first

    assert (balance.balance, balance.held) == (100 - 12, 0)
    entries = await ledger.entries(account)
    closing = [(e.kind, e.amount) for e in entries if e.hold_id == hold.id]
    assert sorted(closing) == sorted(
        [(E.ENTRY_KIND_HOLD, -30), (E.ENTRY_KIND_CAPTURE, 12), (E.ENTRY_KIND_EXPIRE, 18)]
    )
    assert spendable_per_journal(entries) == balance.balance
    # Closed: a late checkpoint or capture changes nothing.
    late = await _refused(_checkpoint(ledger, hold.id, 20))
    assert error_reason(late) == "HOLD_CAPTURED"
    again = await _refused(ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id)))
    assert error_reason(again) == "HOLD_CAPTURED"
    assert (await ledger.balance(account)).balance == 100 - 12


async def test_without_a_checkpoint_expiry_still_returns_everything(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30, ttl_seconds=1)
    await asyncio.sleep(1.2)

    assert (await ledger.balance(account)).balance == 100
    refused = await _refused(ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id)))
    assert error_reason(refused) == "HOLD_EXPIRED"


async def test_checkpoints_keep_a_hold_alive_past_its_first_deadline(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30, ttl_seconds=1)
    for delivered in (5, 10, 15):
        await _checkpoint(ledger, hold.id, delivered, extend_seconds=2)
        await asyncio.sleep(0.6)  # 1.8 s in all: past the first deadline

    captured = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id))

    assert captured.hold.captured_amount == 30
    assert (await ledger.balance(account)).balance == 70


@pytest.mark.parametrize("closer", ["capture", "release"])
async def test_checkpoint_expiry_and_settlement_racing_close_the_hold_once(
    ledger: Ledger, closer: str
) -> None:
    account = await ledger.open_account(credits=1000)
    holds = [await ledger.reserve(account, 10, ttl_seconds=1) for _ in range(10)]
    for hold in holds:
        await _checkpoint(ledger, hold.id, 4)
    await asyncio.sleep(0.9)

    def close(hold_id: str):  # type: ignore[no-untyped-def]
        if closer == "capture":
            return ledger.stub.Capture(E.CaptureRequest(hold_id=hold_id, amount=6))
        return ledger.stub.Release(E.ReleaseRequest(hold_id=hold_id))

    calls = [close(h.id) for h in holds for _ in range(3)]
    calls += [ledger.stub.Checkpoint(E.CheckpointRequest(hold_id=h.id, delivered=5)) for h in holds]
    await asyncio.sleep(0.2)  # some of them land after the deadline
    await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0.3)

    balance = await ledger.balance(account)
    entries = await ledger.entries(account)
    for hold in holds:
        kinds = [e.kind for e in entries if e.hold_id == hold.id]
        # At most one spend and exactly one return, whoever won.
        assert kinds.count(E.ENTRY_KIND_CAPTURE) <= 1
        assert kinds.count(E.ENTRY_KIND_RELEASE) + kinds.count(E.ENTRY_KIND_EXPIRE) == 1
    assert balance.held == 0
    assert spendable_per_journal(entries) == balance.balance
    verified = await ledger.stub.Verify(E.VerifyRequest())
    assert list(verified.discrepancies) == []


async def test_verify_expires_what_is_overdue_and_finds_a_tampered_balance(
    ledger: Ledger, ledger_database_url: str
) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30, ttl_seconds=1)
    await _checkpoint(ledger, hold.id, 7)
    await asyncio.sleep(1.2)

    sound = await ledger.stub.Verify(E.VerifyRequest())

    assert sound.expired_holds >= 1 and list(sound.discrepancies) == []
    assert (await ledger.balance(account)).balance == 93
    async with await psycopg.AsyncConnection.connect(ledger_database_url) as owner:
        # What no RPC can do: money appearing without a journal entry.
        await owner.execute(
            "UPDATE ledger.accounts SET balance = balance + 5 WHERE id = %s", [account]
        )
    tampered = await ledger.stub.Verify(E.VerifyRequest())
    assert [(d.kind, d.account_id) for d in tampered.discrepancies] == [
        ("BALANCE_NOT_JOURNAL", account)
    ]
    assert "balance 98, journal sums to 93" in tampered.discrepancies[0].detail
    async with await psycopg.AsyncConnection.connect(ledger_database_url) as owner:
        await owner.execute(
            "UPDATE ledger.accounts SET balance = balance - 5 WHERE id = %s", [account]
        )
