"""A hold's life: Reserve, then Capture or Release (each idempotent), or expiry by deadline."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from kokoropay.ledger.v1 import ledger_pb2

from services.cli.processes import ServiceProcess
from services.common.errors import error_info, error_reason
from tests.support.ledger import (
    ADMIN,
    Ledger,
    connected_ledger,
    ledger_process,
    spendable_per_journal,
)
from tests.support.postgres import create_database

E = ledger_pb2


async def _refusal(call: Awaitable[object]) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


def _kinds(entries: list[ledger_pb2.Entry]) -> list[int]:
    """Journal kinds, oldest first."""
    return [entry.kind for entry in reversed(entries)]


async def test_capture_spends_the_hold_once(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)
    assert hold.state == E.HOLD_STATE_HELD
    assert (await ledger.balance(account)).balance == 70

    first = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id))
    again = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id))

    assert first.hold.state == again.hold.state == E.HOLD_STATE_CAPTURED
    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (70, 0)
    entries = await ledger.entries(account)
    assert _kinds(entries) == [E.ENTRY_KIND_GRANT, E.ENTRY_KIND_HOLD, E.ENTRY_KIND_CAPTURE]
    assert [(e.amount, e.balance_after) for e in reversed(entries)] == [
        (100, 100),
        (-30, 70),
        (30, 70),  # CAPTURE reports the credits spent and moves nothing
    ]


async def test_partial_capture_spends_the_part_and_returns_the_rest_at_once(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)

    first = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=12))
    again = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=12))

    assert first.hold.state == again.hold.state == E.HOLD_STATE_CAPTURED
    assert first.hold.captured_amount == again.hold.captured_amount == 12
    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (88, 0)
    entries = await ledger.entries(account)
    assert [(e.kind, e.amount, e.balance_after) for e in reversed(entries)] == [
        (E.ENTRY_KIND_GRANT, 100, 100),
        (E.ENTRY_KIND_HOLD, -30, 70),
        (E.ENTRY_KIND_CAPTURE, 12, 70),
        (E.ENTRY_KIND_RELEASE, 18, 88),  # the unspent rest, in the same transaction
    ]
    assert spendable_per_journal(entries) == 88


async def test_capture_of_the_whole_amount_writes_no_release(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)

    first = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=30))
    # 0 means the whole hold: the same Capture.
    again = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id))

    assert first.hold.captured_amount == again.hold.captured_amount == 30
    assert _kinds(await ledger.entries(account))[-1] == E.ENTRY_KIND_CAPTURE
    assert (await ledger.balance(account)).balance == 70


async def test_capture_again_with_another_amount_is_refused_and_changes_nothing(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=10))

    for amount in (0, 11, 30):
        refusal = await _refusal(
            ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=amount))
        )
        assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert error_reason(refusal) == "HOLD_CAPTURED"

    assert (await ledger.balance(account)).balance == 90


async def test_capture_of_more_than_the_hold_is_refused_and_keeps_it_held(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)

    for amount in (31, -1):
        refusal = await _refusal(
            ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=amount))
        )
        assert refusal.code() == grpc.StatusCode.INVALID_ARGUMENT

    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (70, 30)
    captured = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=30))
    assert captured.hold.captured_amount == 30


async def test_partial_capture_on_an_unlimited_account_returns_nothing_drawn(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=5)
    await ledger.stub.SetUnlimited(
        E.SetUnlimitedRequest(account_id=account, unlimited=True), metadata=ADMIN
    )
    hold = await ledger.reserve(account, 500)

    captured = await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=200))

    assert captured.hold.captured_amount == 200
    after = await ledger.balance(account)
    assert (after.balance, after.held) == (5, 0)
    entries = await ledger.entries(account)
    assert [(e.kind, e.amount, e.balance_after) for e in reversed(entries)][-2:] == [
        (E.ENTRY_KIND_CAPTURE, 200, 5),
        (E.ENTRY_KIND_RELEASE, 0, 5),
    ]
    assert spendable_per_journal(entries) == 5


async def test_release_returns_the_credits_once(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)

    first = await ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id))
    again = await ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id))

    assert first.hold.state == again.hold.state == E.HOLD_STATE_RELEASED
    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (100, 0)
    entries = await ledger.entries(account)
    assert _kinds(entries) == [E.ENTRY_KIND_GRANT, E.ENTRY_KIND_HOLD, E.ENTRY_KIND_RELEASE]
    assert entries[0].amount == 30 and entries[0].hold_id == hold.id


async def test_release_after_capture_is_refused_and_changes_nothing(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id))

    refusal = await _refusal(ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id)))

    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refusal)
    assert info is not None
    assert (info.reason, info.domain) == ("HOLD_CAPTURED", "ledger.kokoropay")
    assert (await ledger.balance(account)).balance == 70
    assert len(await ledger.entries(account)) == 3


async def test_capture_after_release_is_refused(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)
    await ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id))

    refusal = await _refusal(ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id)))

    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refusal) == "HOLD_RELEASED"
    assert (await ledger.balance(account)).balance == 100
    assert len(await ledger.entries(account)) == 3


async def test_insufficient_credits_is_refused_with_its_reason(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=10)

    refusal = await _refusal(ledger.reserve(account, 11))

    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    info = error_info(refusal)
    assert info is not None
    assert info.reason == "INSUFFICIENT_CREDITS"
    assert dict(info.metadata) == {"balance": "10", "requested": "11"}
    assert len(await ledger.entries(account)) == 1


async def test_a_retried_reserve_returns_its_hold_even_once_the_balance_is_low(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=10)
    hold = await ledger.reserve(account, 7, key="request-1")

    retried = await ledger.reserve(account, 7, key="request-1")
    refused = await _refusal(ledger.reserve(account, 7, key="request-2"))

    assert retried == hold
    assert error_reason(refused) == "INSUFFICIENT_CREDITS"
    assert (await ledger.balance(account)).balance == 3


async def test_a_key_reused_with_another_amount_is_refused_and_writes_nothing(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=100)
    await ledger.reserve(account, 7, key="request-1")

    refusal = await _refusal(ledger.reserve(account, 8, key="request-1"))

    assert refusal.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(refusal) == "IDEMPOTENCY_KEY_REUSED"
    assert (await ledger.balance(account)).balance == 93
    assert len(await ledger.entries(account)) == 2


async def test_keys_are_unique_per_account_not_across_accounts(ledger: Ledger) -> None:
    first = await ledger.open_account(credits=10)
    second = await ledger.open_account(credits=10)

    a = await ledger.reserve(first, 7, key="shared-key")
    b = await ledger.reserve(second, 7, key="shared-key")

    assert a.id != b.id
    assert (await ledger.balance(second)).balance == 3


async def test_grant_key_reused_with_another_amount_is_refused(ledger: Ledger) -> None:
    account = await ledger.open_account()
    await ledger.grant(account, 100, key="topup-1")

    refusal = await _refusal(
        ledger.stub.Grant(
            E.GrantRequest(account_id=account, amount=200, idempotency_key="topup-1"),
            metadata=ADMIN,
        )
    )

    assert refusal.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(refusal) == "IDEMPOTENCY_KEY_REUSED"
    assert (await ledger.balance(account)).balance == 100


async def test_unlimited_account_is_never_refused_and_still_journaled(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=5)
    flagged = await ledger.stub.SetUnlimited(
        E.SetUnlimitedRequest(account_id=account, unlimited=True), metadata=ADMIN
    )
    assert flagged.balance.unlimited

    spent = await ledger.reserve(account, 5000)
    returned = await ledger.reserve(account, 300)
    during = await ledger.balance(account)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=spent.id))
    await ledger.stub.Release(E.ReleaseRequest(hold_id=returned.id))

    # Holds are counted while open; the prepaid balance is never drawn, so never negative.
    assert (during.balance, during.held, during.unlimited) == (5, 5300, True)
    after = await ledger.balance(account)
    assert (after.balance, after.held) == (5, 0)
    entries = await ledger.entries(account)
    assert [(e.kind, e.amount, e.balance_after) for e in reversed(entries)] == [
        (E.ENTRY_KIND_GRANT, 5, 5),
        (E.ENTRY_KIND_UNLIMITED, 0, 5),
        (E.ENTRY_KIND_HOLD, 0, 5),
        (E.ENTRY_KIND_HOLD, 0, 5),
        (E.ENTRY_KIND_CAPTURE, 5000, 5),
        (E.ENTRY_KIND_RELEASE, 0, 5),
    ]
    assert spendable_per_journal(entries) == 5


async def test_lifting_unlimited_restores_refusals_and_returns_only_what_was_drawn(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=10)
    drawn = await ledger.reserve(account, 4)  # placed while limited: draws 4
    await ledger.stub.SetUnlimited(
        E.SetUnlimitedRequest(account_id=account, unlimited=True), metadata=ADMIN
    )
    free = await ledger.reserve(account, 100)  # placed while unlimited: draws nothing
    # Setting the flag it already has writes nothing.
    await ledger.stub.SetUnlimited(
        E.SetUnlimitedRequest(account_id=account, unlimited=True), metadata=ADMIN
    )
    await ledger.stub.SetUnlimited(
        E.SetUnlimitedRequest(account_id=account, unlimited=False), metadata=ADMIN
    )

    refusal = await _refusal(ledger.reserve(account, 7))
    await ledger.stub.Release(E.ReleaseRequest(hold_id=free.id))
    await ledger.stub.Release(E.ReleaseRequest(hold_id=drawn.id))

    assert error_reason(refusal) == "INSUFFICIENT_CREDITS"
    balance = await ledger.balance(account)
    assert (balance.balance, balance.held, balance.unlimited) == (10, 0, False)
    kinds = _kinds(await ledger.entries(account))
    assert kinds.count(E.ENTRY_KIND_UNLIMITED) == 2


@dataclass(frozen=True)
class Overdue:
    account_id: str
    hold: ledger_pb2.Hold


@pytest.fixture(scope="module")
async def overdue(ledger: Ledger) -> dict[str, Overdue]:
    """Holds of one second on fresh accounts, past their deadline: one wait for all tests.

    This module's ledger sweeps hourly, so only the RPCs under test can expire them.
    """
    scenarios: dict[str, Overdue] = {}
    for name, credits, amount in [("release", 100, 30), ("read", 100, 30), ("reserve", 10, 10)]:
        account = await ledger.open_account(credits=credits)
        scenarios[name] = Overdue(account, await ledger.reserve(account, amount, ttl_seconds=1))
    await ledger.reserve(scenarios["read"].account_id, 20)  # stays open
    await asyncio.sleep(1.1)
    return scenarios


async def test_release_of_an_overdue_hold_reports_it_expired(
    ledger: Ledger, overdue: dict[str, Overdue]
) -> None:
    account, hold = overdue["release"].account_id, overdue["release"].hold

    released = await ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id))
    refusal = await _refusal(ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id)))

    assert released.hold.state == E.HOLD_STATE_EXPIRED
    assert refusal.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refusal) == "HOLD_EXPIRED"
    assert (await ledger.balance(account)).balance == 100
    assert _kinds(await ledger.entries(account))[-1] == E.ENTRY_KIND_EXPIRE


async def test_an_expired_hold_is_returned_as_soon_as_the_balance_is_read(
    ledger: Ledger, overdue: dict[str, Overdue]
) -> None:
    account, hold = overdue["read"].account_id, overdue["read"].hold

    balance = await ledger.balance(account)

    assert (balance.balance, balance.held) == (80, 20)
    latest = (await ledger.entries(account))[0]
    assert (latest.kind, latest.hold_id, latest.amount, latest.balance_after) == (
        E.ENTRY_KIND_EXPIRE,
        hold.id,
        30,
        80,
    )


async def test_an_expired_hold_frees_credits_for_the_next_reserve(
    ledger: Ledger, overdue: dict[str, Overdue]
) -> None:
    account = overdue["reserve"].account_id

    hold = await ledger.reserve(account, 10)

    assert hold.state == E.HOLD_STATE_HELD
    kinds = _kinds(await ledger.entries(account))
    assert kinds == [E.ENTRY_KIND_GRANT, E.ENTRY_KIND_HOLD, E.ENTRY_KIND_EXPIRE, E.ENTRY_KIND_HOLD]


@pytest.fixture(scope="module")
def sweeping_ledger(postgres_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    process = ledger_process(
        create_database(postgres_url, prefix="ledger"),
        log_dir,
        LEDGER_SWEEP_INTERVAL_SECONDS="0.2",
    ).start()
    yield process
    process.stop()


async def test_the_sweeper_expires_holds_nobody_touches(sweeping_ledger: ServiceProcess) -> None:
    async with connected_ledger(sweeping_ledger.address) as ledger:
        account = await ledger.open_account(credits=100)
        hold = await ledger.reserve(account, 30, ttl_seconds=1)

        # ListEntries expires nothing itself: an EXPIRE entry can only come from the sweeper.
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            entries = await ledger.entries(account)
            if entries[0].kind == E.ENTRY_KIND_EXPIRE:
                break
            await asyncio.sleep(0.1)

        assert (entries[0].kind, entries[0].hold_id, entries[0].balance_after) == (
            E.ENTRY_KIND_EXPIRE,
            hold.id,
            100,
        )
        balance = await ledger.balance(account)
        assert (balance.balance, balance.held) == (100, 0)
