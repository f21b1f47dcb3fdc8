"""Usage: holds keep the labels their Reserve gave, ListHolds lists them, SummarizeUsage adds
them up per UTC day and key, in the database, from what each hold really captured.

Holds are placed on earlier days by moving them as the schema's owner with the holds trigger
off, in one transaction (as migration 0002 backfilled): no RPC can backdate a hold, and the
last tests check the trigger still refuses to change what a closed hold says.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable
from datetime import UTC, date, datetime, time, timedelta

import grpc
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E
from kokoropay.ledger.v1 import ledger_pb2_grpc

from services.cli.processes import ServiceProcess
from services.ledger.paging import encode_page_token
from tests.support.ledger import Ledger
from tests.support.pki import channel

LABELS = E.UsageLabels(
    key_id="key_01JTESTKEY0000000000000000", voice="af_sky", response_format="mp3", model="kokoro"
)


async def _reserve(
    ledger: Ledger,
    account: str,
    amount: int,
    labels: E.UsageLabels | None = None,
    *,
    key: str | None = None,
    ttl_seconds: int = 0,
    keyed: E.KeyedRequest | None = None,
) -> E.ReserveResponse:
    return await ledger.stub.Reserve(
        E.ReserveRequest(
            account_id=account,
            amount=amount,
            idempotency_key=key or uuid.uuid4().hex,
            ttl_seconds=ttl_seconds,
            labels=labels,
            keyed=keyed,
        )
    )


async def _hold(ledger: Ledger, account: str, amount: int, key_id: str = "") -> E.Hold:
    labels = E.UsageLabels(key_id=key_id, voice="af_sky", response_format="mp3", model="kokoro")
    return (await _reserve(ledger, account, amount, labels)).hold


async def _capture(ledger: Ledger, hold: E.Hold, amount: int = 0) -> E.Hold:
    return (await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=amount))).hold


async def _release(ledger: Ledger, hold: E.Hold) -> E.Hold:
    return (await ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id))).hold


async def _all_holds(ledger: Ledger, account: str, page_size: int = 0) -> list[E.Hold]:
    holds: list[E.Hold] = []
    token = ""
    while True:
        page = await ledger.stub.ListHolds(
            E.ListHoldsRequest(account_id=account, page_size=page_size, page_token=token)
        )
        holds.extend(page.holds)
        token = page.next_page_token
        if not token:
            return holds


async def _usage(ledger: Ledger, account: str, days: int = 0) -> E.SummarizeUsageResponse:
    return await ledger.stub.SummarizeUsage(E.SummarizeUsageRequest(account_id=account, days=days))


def _rows(summary: E.SummarizeUsageResponse) -> list[tuple[str, str, int, int]]:
    return [(u.day, u.key_id, u.characters, u.requests) for u in summary.usage]


async def _move(database_url: str, hold_ids: list[str], to: datetime) -> None:
    """Place holds as if created at `to`: their deadline and close move with them."""
    async with await psycopg.AsyncConnection.connect(database_url) as owner:
        await owner.execute("ALTER TABLE ledger.holds DISABLE TRIGGER holds_close_once")
        await owner.execute(
            "UPDATE ledger.holds SET create_time = %(to)s,"
            " expire_time = expire_time + (%(to)s - create_time),"
            " close_time = close_time + (%(to)s - create_time)"
            " WHERE id = ANY(%(ids)s)",
            {"to": to, "ids": hold_ids},
        )
        await owner.execute("ALTER TABLE ledger.holds ENABLE TRIGGER holds_close_once")


def _day(value: date, days_back: int) -> str:
    return (value - timedelta(days=days_back)).isoformat()


def _noon(day: date) -> datetime:
    return datetime.combine(day, time(12), UTC)


# --- labels ---------------------------------------------------------------------------------


async def test_labels_and_close_time_round_trip_through_reserve_and_list_holds(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=100)
    reserved = await _reserve(ledger, account, 10, LABELS, key="first")
    unlabelled = (await _reserve(ledger, account, 5)).hold
    keyed = await _reserve(
        ledger,
        account,
        7,
        E.UsageLabels(key_id="key_b", voice="af_sky(1)+am_adam(1)", response_format="opus"),
        keyed=E.KeyedRequest(key="customer-key", fingerprint="input=abc", price=7),
    )
    held = await ledger.stub.ListHolds(E.ListHoldsRequest(account_id=account))
    captured = await _capture(ledger, reserved.hold)
    # A repeat returns the hold as it was placed, whatever labels the repeat carries.
    repeat = await _reserve(ledger, account, 10, E.UsageLabels(key_id="key_other"), key="first")

    assert reserved.hold.labels == LABELS
    assert repeat.replayed and repeat.hold.labels == LABELS
    [listed_keyed, listed_plain, listed_first] = await _all_holds(ledger, account)
    assert [h.id for h in held.holds] == [keyed.hold.id, unlabelled.id, reserved.hold.id]
    assert listed_first.labels == LABELS
    assert listed_first.state == E.HOLD_STATE_CAPTURED
    assert listed_first.close_time == captured.close_time
    assert listed_first.close_time.ToDatetime() >= listed_first.create_time.ToDatetime()
    assert listed_plain.labels == E.UsageLabels()
    assert (listed_keyed.labels.key_id, listed_keyed.labels.voice) == (
        "key_b",
        "af_sky(1)+am_adam(1)",
    )
    assert (listed_keyed.labels.response_format, listed_keyed.labels.model) == ("opus", "")
    # Unset while held.
    assert not any(h.HasField("close_time") for h in held.holds)
    assert not listed_plain.HasField("close_time")


async def test_the_longest_labels_are_stored_whole(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=10)
    longest = E.UsageLabels(
        key_id="k" * 64, voice="v" * 399 + "🔊", response_format="f" * 16, model="m" * 64
    )

    hold = (await _reserve(ledger, account, 1, longest)).hold

    [listed] = await _all_holds(ledger, account)
    assert hold.labels == listed.labels == longest


@pytest.mark.parametrize(
    "field,value,complaint",
    [
        ("key_id", "k" * 65, "labels.key_id is longer than 64"),
        ("voice", "v" * 401, "labels.voice is longer than 400"),
        ("response_format", "f" * 17, "labels.response_format is longer than 16"),
        ("model", "m" * 65, "labels.model is longer than 64"),
        ("voice", "af_sky\n", "labels.voice contains control characters"),
        ("key_id", "key\x00", "labels.key_id contains control characters"),
    ],
)
async def test_a_bad_label_is_refused_naming_it_and_writes_nothing(
    ledger: Ledger, field: str, value: str, complaint: str
) -> None:
    account = await ledger.open_account(credits=10)
    labels = E.UsageLabels(**{field: value})

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await _reserve(ledger, account, 5, labels)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert complaint in (caught.value.details() or "")
    assert await _all_holds(ledger, account) == []
    assert (await ledger.balance(account)).balance == 10


# --- SummarizeUsage -------------------------------------------------------------------------


async def test_usage_is_grouped_by_utc_day_and_key(
    ledger: Ledger, ledger_database_url: str
) -> None:
    account = await ledger.open_account(credits=1000)
    today = date.fromisoformat((await _usage(ledger, account)).first_day) + timedelta(days=29)
    a_today = [await _hold(ledger, account, n, "key_a") for n in (3, 4)]
    b_today = await _hold(ledger, account, 5, "key_b")
    none_today = await _hold(ledger, account, 6)
    a_yesterday = [await _hold(ledger, account, n, "key_a") for n in (10, 20)]
    b_ten_days_ago = await _hold(ledger, account, 30, "key_b")
    for hold in [*a_today, b_today, none_today, *a_yesterday, b_ten_days_ago]:
        await _capture(ledger, hold)
    await _move(ledger_database_url, [h.id for h in a_yesterday], _noon(today) - timedelta(days=1))
    await _move(ledger_database_url, [b_ten_days_ago.id], _noon(today) - timedelta(days=10))
    # The last microsecond of yesterday is yesterday; midnight UTC is today.
    late = await _hold(ledger, account, 1, "key_a")
    early = await _hold(ledger, account, 2, "key_a")
    await _capture(ledger, late)
    await _capture(ledger, early)
    midnight = datetime.combine(today, time(0), UTC)
    await _move(ledger_database_url, [late.id], midnight - timedelta(microseconds=1))
    await _move(ledger_database_url, [early.id], midnight)

    summary = await _usage(ledger, account)

    assert summary.first_day == _day(today, 29)
    assert _rows(summary) == [
        (_day(today, 10), "key_b", 30, 1),
        (_day(today, 1), "key_a", 10 + 20 + 1, 3),
        (_day(today, 0), "", 6, 1),  # holds placed without a key
        (_day(today, 0), "key_a", 3 + 4 + 2, 3),
        (_day(today, 0), "key_b", 5, 1),
    ]
    one_day = await _usage(ledger, account, days=1)
    assert one_day.first_day == today.isoformat()
    assert [row[:2] for row in _rows(one_day)] == [
        (today.isoformat(), ""),
        (today.isoformat(), "key_a"),
        (today.isoformat(), "key_b"),
    ]


async def test_characters_are_what_each_hold_captured_and_every_hold_is_a_request(
    ledger: Ledger,
) -> None:
    account = await ledger.open_account(credits=1000)
    whole = await _hold(ledger, account, 10, "key_a")
    partial = await _hold(ledger, account, 30, "key_a")
    released = await _hold(ledger, account, 50, "key_a")
    still_held = await _hold(ledger, account, 70, "key_a")
    lapsing = await _reserve(ledger, account, 40, E.UsageLabels(key_id="key_a"), ttl_seconds=1)
    lapsing_unread = await _reserve(
        ledger, account, 80, E.UsageLabels(key_id="key_a"), ttl_seconds=1
    )
    await ledger.stub.Checkpoint(E.CheckpointRequest(hold_id=lapsing.hold.id, delivered=12))
    await _capture(ledger, whole)
    await _capture(ledger, partial, amount=11)
    await _release(ledger, released)
    await asyncio.sleep(1.2)
    await ledger.balance(account)  # expires the two lapsed holds

    summary = await _usage(ledger, account)

    # 10 whole + 11 of 30 + 12 checkpointed of 40; released, held, lapsed unread: 0 each.
    assert [(u.key_id, u.characters, u.requests) for u in summary.usage] == [("key_a", 33, 6)]
    states = {h.id: h for h in await _all_holds(ledger, account)}
    # Expiry with a checkpoint captures it: the hold reads CAPTURED, with the checkpoint.
    assert states[lapsing.hold.id].state == E.HOLD_STATE_CAPTURED
    assert states[lapsing.hold.id].captured_amount == 12
    assert states[lapsing_unread.hold.id].state == E.HOLD_STATE_EXPIRED
    assert states[released.id].state == E.HOLD_STATE_RELEASED
    assert not states[still_held.id].HasField("close_time")
    assert all(
        h.HasField("close_time") and h.close_time.ToDatetime() >= h.create_time.ToDatetime()
        for h in states.values()
        if h.id != still_held.id
    )
    # The journal agrees: the CAPTURE entries add up to the same characters.
    entries = await ledger.entries(account)
    assert sum(e.amount for e in entries if e.kind == E.ENTRY_KIND_CAPTURE) == 33


async def test_holds_before_the_window_are_left_out(
    ledger: Ledger, ledger_database_url: str
) -> None:
    account = await ledger.open_account(credits=1000)
    first_day = date.fromisoformat((await _usage(ledger, account)).first_day)
    holds = [await _hold(ledger, account, n, "key_a") for n in (1, 2, 4, 8)]
    for hold in holds:
        await _capture(ledger, hold)
    on_first_day, before_it, thirty_one_days_ago, today = holds
    await _move(ledger_database_url, [on_first_day.id], datetime.combine(first_day, time(0), UTC))
    await _move(
        ledger_database_url,
        [before_it.id],
        datetime.combine(first_day, time(0), UTC) - timedelta(microseconds=1),
    )
    await _move(
        ledger_database_url, [thirty_one_days_ago.id], datetime.now(UTC) - timedelta(days=31)
    )

    default = await _usage(ledger, account)
    widest = await _usage(ledger, account, days=90)

    assert [(u.day, u.characters) for u in default.usage] == [
        (first_day.isoformat(), 1),
        (_day(first_day, -29), 8),
    ]
    assert sum(u.characters for u in widest.usage) == 1 + 2 + 4 + 8
    assert sum(u.requests for u in widest.usage) == 4


async def test_an_account_sees_only_its_own_holds(ledger: Ledger) -> None:
    mine = await ledger.open_account(credits=100)
    theirs = await ledger.open_account(credits=100)
    await _capture(ledger, await _hold(ledger, theirs, 9, "key_theirs"))
    hold = await _hold(ledger, mine, 3, "key_mine")
    await _capture(ledger, hold)
    empty = await ledger.open_account()

    assert [(u.key_id, u.characters) for u in (await _usage(ledger, mine)).usage] == [
        ("key_mine", 3)
    ]
    assert [h.id for h in await _all_holds(ledger, mine)] == [hold.id]
    assert list((await _usage(ledger, empty)).usage) == []
    assert (await _usage(ledger, empty)).first_day != ""
    assert await _all_holds(ledger, empty) == []


# --- ListHolds ------------------------------------------------------------------------------


async def test_pages_return_every_hold_once_while_reserves_run(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=10_000)
    before = await asyncio.gather(*(_hold(ledger, account, 1) for _ in range(120)))

    async def reserve_meanwhile() -> list[E.Hold]:
        placed = []
        for _ in range(60):
            placed.append(await _hold(ledger, account, 1))
        return placed

    during_task = asyncio.ensure_future(reserve_meanwhile())
    listed = await _all_holds(ledger, account, page_size=7)
    during = await during_task

    ids = [h.id for h in listed]
    assert len(ids) == len(set(ids))  # none twice
    assert {h.id for h in before} <= set(ids)  # every hold placed before the listing
    assert set(ids) <= {h.id for h in [*before, *during]}
    times = [h.create_time.ToDatetime() for h in listed]
    assert times == sorted(times, reverse=True)  # newest first
    assert len(await _all_holds(ledger, account)) == 180


async def test_page_size_defaults_to_50_and_is_lowered_to_200(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=1000)
    await asyncio.gather(*(_hold(ledger, account, 1) for _ in range(205)))

    default = await ledger.stub.ListHolds(E.ListHoldsRequest(account_id=account))
    widest = await ledger.stub.ListHolds(E.ListHoldsRequest(account_id=account, page_size=1000))
    rest = await ledger.stub.ListHolds(
        E.ListHoldsRequest(account_id=account, page_size=1000, page_token=widest.next_page_token)
    )

    assert len(default.holds) == 50 and default.next_page_token
    assert len(widest.holds) == 200 and widest.next_page_token
    assert len(rest.holds) == 5 and rest.next_page_token == ""


@pytest.mark.parametrize(
    "token_for",
    [
        lambda account, others: "nonsense",
        lambda account, others: others,
        # The journal's tokens are not the holds' (nor the other way round).
        lambda account, others: encode_page_token(account, 1),
    ],
    ids=["garbage", "another account's", "a journal token"],
)
async def test_a_page_token_not_issued_for_the_listing_is_refused(
    ledger: Ledger, token_for: Callable[[str, str], str]
) -> None:
    account = await ledger.open_account(credits=10)
    other = await ledger.open_account(credits=10)
    for owner in (account, other):
        await _hold(ledger, owner, 1)
        await _hold(ledger, owner, 1)
    others = await ledger.stub.ListHolds(E.ListHoldsRequest(account_id=other, page_size=1))
    request = E.ListHoldsRequest(
        account_id=account, page_token=token_for(account, others.next_page_token)
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.stub.ListHolds(request)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "page_token" in (caught.value.details() or "")


# --- who may read ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "caller,code",
    [("dashboard", grpc.StatusCode.OK), ("gateway", grpc.StatusCode.PERMISSION_DENIED)],
)
async def test_the_dashboard_may_read_usage_and_the_gateway_may_not(
    ledger: Ledger, ledger_service: ServiceProcess, caller: str, code: grpc.StatusCode
) -> None:
    account = await ledger.open_account(credits=10)
    await _capture(ledger, await _hold(ledger, account, 4, "key_a"))

    async with channel(ledger_service.address, caller) as as_caller:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_caller)
        calls = [
            stub.SummarizeUsage(E.SummarizeUsageRequest(account_id=account)),
            stub.ListHolds(E.ListHoldsRequest(account_id=account)),
        ]
        outcomes = await asyncio.gather(*calls, return_exceptions=True)

    if code == grpc.StatusCode.OK:
        summary, listing = outcomes
        assert isinstance(summary, E.SummarizeUsageResponse)
        assert isinstance(listing, E.ListHoldsResponse)
        assert [u.characters for u in summary.usage] == [4]
        assert [h.labels.key_id for h in listing.holds] == ["key_a"]
    else:
        assert [o.code() for o in outcomes if isinstance(o, grpc.aio.AioRpcError)] == [code] * 2


# --- what a closed hold says stays said -----------------------------------------------------


@pytest.mark.parametrize(
    "change",
    [
        "key_id = 'key_someone_else'",
        "voice = 'am_adam'",
        "response_format = NULL",
        "model = 'other'",
        "close_time = close_time - interval '1 day'",
    ],
)
async def test_the_owner_cannot_rewrite_a_closed_hold_with_the_trigger_on(
    ledger: Ledger, ledger_database_url: str, change: str
) -> None:
    account = await ledger.open_account(credits=10)
    hold = await _capture(ledger, await _hold(ledger, account, 4, "key_a"))

    async with await psycopg.AsyncConnection.connect(ledger_database_url) as owner:
        with pytest.raises(psycopg.errors.CheckViolation, match="can only close once"):
            await owner.execute(
                f"UPDATE ledger.holds SET {change} WHERE id = %s".encode(), [hold.id]
            )

    [listed] = await _all_holds(ledger, account)
    assert listed == hold


async def test_labels_never_change_and_a_close_is_never_backdated_while_held(
    ledger: Ledger, ledger_database_url: str
) -> None:
    account = await ledger.open_account(credits=10)
    hold = await _hold(ledger, account, 4, "key_a")

    async with await psycopg.AsyncConnection.connect(ledger_database_url) as owner:
        with pytest.raises(psycopg.errors.CheckViolation, match="can only close once"):
            await owner.execute("UPDATE ledger.holds SET key_id = 'key_b' WHERE id = %s", [hold.id])
        await owner.rollback()
        with pytest.raises(psycopg.errors.CheckViolation, match="closes now"):
            await owner.execute(
                "UPDATE ledger.holds SET state = 'released',"
                " close_time = now() - interval '1 day' WHERE id = %s",
                [hold.id],
            )

    [listed] = await _all_holds(ledger, account)
    assert listed == hold
