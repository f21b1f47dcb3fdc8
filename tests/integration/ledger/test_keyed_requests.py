"""Keyed requests: one customer Idempotency-Key, many attempts, never more than the price.

Each test drives the real ledger process the way the gateway does: a keyed Reserve per attempt
(its own attempt key), then Capture of what the attempt delivered, or Release.
"""

from __future__ import annotations

import asyncio
import random
import uuid

import grpc
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E

from services.common.errors import error_info, error_reason
from tests.support.ledger import Ledger, spendable_per_journal

PRICE = 1332


async def _attempt(
    ledger: Ledger,
    account: str,
    key: str = "retry-me",
    *,
    fingerprint: str = "input=abc,voice=af_sky",
    amount: int = PRICE,
    late_charge: bool = False,
    attempt_key: str | None = None,
    ttl_seconds: int = 0,
) -> E.ReserveResponse:
    return await ledger.stub.Reserve(
        E.ReserveRequest(
            account_id=account,
            amount=amount,
            idempotency_key=attempt_key or f"attempt:{uuid.uuid4().hex}",
            ttl_seconds=ttl_seconds,
            keyed=E.KeyedRequest(
                key=key, fingerprint=fingerprint, price=PRICE, late_charge=late_charge
            ),
        )
    )


async def _refused(call) -> grpc.aio.AioRpcError:  # type: ignore[no-untyped-def]
    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await call
    return caught.value


async def _captured_under_key(ledger: Ledger, account: str) -> int:
    entries = await ledger.entries(account)
    return sum(e.amount for e in entries if e.kind == E.ENTRY_KIND_CAPTURE)


async def test_hang_up_then_retry_costs_exactly_the_price_then_two_free_replays(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=5000)

    first = await _attempt(ledger, account)
    assert (first.hold.amount, first.keyed.charged_before, first.keyed.replay) == (PRICE, 0, False)
    # The client hung up after the first piece: 52 characters delivered, 52 charged.
    await ledger.stub.Capture(E.CaptureRequest(hold_id=first.hold.id, amount=52))

    second = await _attempt(ledger, account)
    # The retry may only be charged what the key has not paid yet.
    assert (second.hold.amount, second.keyed.charged_before) == (PRICE - 52, 52)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=second.hold.id))
    assert (await ledger.balance(account)).balance == 5000 - PRICE

    for replays_left in (1, 0):
        replay = await _attempt(ledger, account)
        assert replay.keyed.replay and not replay.HasField("hold")
        assert (replay.keyed.charged_before, replay.keyed.replays_left) == (PRICE, replays_left)
    third = await _refused(_attempt(ledger, account))
    assert third.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(third) == "REQUEST_COMPLETED"

    assert (await ledger.balance(account)).balance == 5000 - PRICE
    assert await _captured_under_key(ledger, account) == PRICE


async def test_a_refunded_attempt_costs_nothing_and_the_next_holds_the_whole_price(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=5000)
    for _ in range(3):
        attempt = await _attempt(ledger, account)
        assert attempt.hold.amount == PRICE
        await ledger.stub.Release(E.ReleaseRequest(hold_id=attempt.hold.id))
    assert (await ledger.balance(account)).balance == 5000


async def test_another_request_under_the_key_is_refused_and_names_what_is_stored(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=5000)
    first = await _attempt(ledger, account, fingerprint="voice=af_sky")
    await ledger.stub.Release(E.ReleaseRequest(hold_id=first.hold.id))
    before = await ledger.entries(account)

    refused = await _refused(_attempt(ledger, account, fingerprint="voice=am_adam"))

    assert refused.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(refused)
    assert info is not None and info.reason == "REQUEST_KEY_REUSED"
    assert info.metadata["fingerprint"] == "voice=af_sky"
    assert await ledger.entries(account) == before
    # Other keys are other requests.
    other = await _attempt(ledger, account, key="another", fingerprint="voice=am_adam")
    assert other.hold.amount == PRICE


async def test_an_attempt_in_progress_refuses_another_but_a_repeated_call_gets_its_hold(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=5000)
    first = await _attempt(ledger, account, attempt_key="attempt-1")

    again = await _attempt(ledger, account, attempt_key="attempt-1")
    refused = await _refused(_attempt(ledger, account))

    assert again.replayed and again.hold.id == first.hold.id
    assert error_reason(refused) == "ATTEMPT_IN_PROGRESS"
    assert (await ledger.balance(account)).balance == 5000 - PRICE


async def test_fifty_concurrent_attempts_place_one_hold(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=100_000)

    outcomes = await asyncio.gather(
        *(_attempt(ledger, account) for _ in range(50)), return_exceptions=True
    )

    holds = [o for o in outcomes if isinstance(o, E.ReserveResponse)]
    refusals = [error_reason(o) for o in outcomes if isinstance(o, grpc.aio.AioRpcError)]
    assert len(holds) == 1 and refusals == ["ATTEMPT_IN_PROGRESS"] * 49
    assert (await ledger.balance(account)).balance == 100_000 - PRICE


async def test_rounds_of_concurrent_attempts_and_partial_captures_never_pass_the_price(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=100_000)
    chooser = random.Random(7)

    for _ in range(12):
        outcomes = await asyncio.gather(
            *(_attempt(ledger, account) for _ in range(8)), return_exceptions=True
        )
        for outcome in outcomes:
            if isinstance(outcome, E.ReserveResponse) and outcome.HasField("hold"):
                delivered = chooser.randint(1, PRICE)  # each attempt delivers from the start
                amount = min(delivered, outcome.hold.amount)
                await ledger.stub.Capture(E.CaptureRequest(hold_id=outcome.hold.id, amount=amount))

    captured = await _captured_under_key(ledger, account)
    assert captured == PRICE  # twelve rounds of up-to-1332 deliveries pay the price, no more
    balance = await ledger.balance(account)
    assert balance.balance == 100_000 - PRICE
    assert spendable_per_journal(await ledger.entries(account)) == balance.balance


async def test_a_late_charge_is_capped_at_what_the_key_has_left(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=5000)
    first = await _attempt(ledger, account)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=first.hold.id, amount=1000))
    second = await _attempt(ledger, account)
    # While an attempt is held, a late charge waits like any attempt: one open hold per key.
    refused = await _refused(_attempt(ledger, account, amount=900, late_charge=True))
    assert error_reason(refused) == "ATTEMPT_IN_PROGRESS"
    await ledger.stub.Release(E.ReleaseRequest(hold_id=second.hold.id))

    late = await _attempt(ledger, account, amount=900, late_charge=True)

    # Only what the key has left to pay (332), though 900 characters were delivered.
    assert late.hold.amount == PRICE - 1000
    await ledger.stub.Capture(E.CaptureRequest(hold_id=late.hold.id))
    nothing_left = await _attempt(ledger, account, amount=5, late_charge=True)
    assert not nothing_left.HasField("hold") and not nothing_left.keyed.replay
    assert nothing_left.keyed.replays_left == 2  # a late charge is not a replay
    assert await _captured_under_key(ledger, account) == PRICE


async def test_the_database_refuses_a_capture_past_the_price(
    ledger: Ledger, ledger_database_url: str
) -> None:
    account = await ledger.open_account(credits=5000)
    first = await _attempt(ledger, account)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=first.hold.id, amount=PRICE))

    async with await psycopg.AsyncConnection.connect(ledger_database_url) as conn:
        # A second hold on the same request, written by hand, past what any Reserve would place.
        await conn.execute(
            "INSERT INTO ledger.holds (id, account_id, amount, drawn, idempotency_key,"
            " expire_time, keyed_request_id)"
            " SELECT 'hold_forged', account_id, 10, 0, 'forged', now() + interval '1 hour',"
            " keyed_request_id FROM ledger.holds WHERE id = %s",
            [first.hold.id],
        )
        with pytest.raises(psycopg.errors.CheckViolation, match="would capture"):
            await conn.execute(
                "UPDATE ledger.holds SET state = 'captured', close_time = now(), captured = 10"
                " WHERE id = 'hold_forged'"
            )


async def test_after_the_window_the_key_may_name_another_request(
    ledger: Ledger, ledger_database_url: str
) -> None:
    account = await ledger.open_account(credits=5000)
    first = await _attempt(ledger, account, fingerprint="voice=af_sky")
    await ledger.stub.Capture(E.CaptureRequest(hold_id=first.hold.id))
    async with await psycopg.AsyncConnection.connect(ledger_database_url) as conn:
        # A day passes for this key.
        await conn.execute(
            "UPDATE ledger.keyed_requests SET create_time = now() - interval '25 hours',"
            " expire_time = now() - interval '1 hour' WHERE account_id = %s",
            [account],
        )

    renewed = await _attempt(ledger, account, fingerprint="voice=am_adam")

    assert (renewed.hold.amount, renewed.keyed.charged_before) == (PRICE, 0)


@pytest.mark.parametrize(
    ("keyed", "amount", "complaint"),
    [
        (E.KeyedRequest(key="", fingerprint="f", price=5), 5, "keyed.key"),
        (E.KeyedRequest(key="k" * 129, fingerprint="f", price=5), 5, "keyed.key"),
        (E.KeyedRequest(key="k", fingerprint="", price=5), 5, "keyed.fingerprint"),
        (E.KeyedRequest(key="k", fingerprint="f" * 1025, price=5), 5, "keyed.fingerprint"),
        (E.KeyedRequest(key="k", fingerprint="f\x00", price=5), 5, "keyed.fingerprint"),
        (E.KeyedRequest(key="k", fingerprint="f", price=0), 5, "amount must be positive"),
        (E.KeyedRequest(key="k", fingerprint="f", price=5), 6, "exceeds keyed.price"),
    ],
)
async def test_bad_keyed_requests_are_refused_and_write_nothing(
    ledger: Ledger, keyed: E.KeyedRequest, amount: int, complaint: str
) -> None:
    account = await ledger.open_account(credits=100)

    refused = await _refused(
        ledger.stub.Reserve(
            E.ReserveRequest(account_id=account, amount=amount, idempotency_key="a", keyed=keyed)
        )
    )

    assert refused.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (refused.details() or "")
    assert [e.kind for e in await ledger.entries(account)] == [E.ENTRY_KIND_GRANT]
