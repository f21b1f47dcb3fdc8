"""Top-ups: credits a customer paid for, granted once per payment event however often, for
whichever account, and however many at once the provider (or the dashboard) delivers it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E
from kokoropay.ledger.v1 import ledger_pb2_grpc
from psycopg import errors

from services.cli.embedded_database import DatabaseUrls
from services.cli.processes import ServiceProcess
from services.common.errors import error_reason
from tests.integration.test_database_roles import roles  # noqa: F401 (a fixture)
from tests.support.ledger import Ledger, connected_ledger, ledger_process
from tests.support.pki import channel

# LEDGER_MAX_TOP_UP_CREDITS' default.
MAX_TOP_UP = 10_000_000


def new_event_id() -> str:
    return f"evt_{uuid.uuid4().hex}"


@pytest.fixture(scope="module")
async def dashboard(
    ledger_service: ServiceProcess,
) -> AsyncIterator[ledger_pb2_grpc.LedgerServiceStub]:
    """The ledger as the dashboard calls it: the one caller GrantTopUp admits."""
    async with channel(ledger_service.address, "dashboard") as as_dashboard:
        yield ledger_pb2_grpc.LedgerServiceStub(as_dashboard)


def top_up(account_id: str, credits: int, event_id: str) -> E.GrantTopUpRequest:
    return E.GrantTopUpRequest(account_id=account_id, credits=credits, payment_event_id=event_id)


async def grants_of(ledger: Ledger, account_id: str) -> list[E.Entry]:
    return [e for e in await ledger.entries(account_id) if e.kind == E.ENTRY_KIND_GRANT]


async def test_a_paid_event_grants_its_credits_under_a_key_naming_it(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    account = await ledger.open_account(credits=1000)
    event = new_event_id()

    response = await dashboard.GrantTopUp(top_up(account, 50_000, event))

    assert not response.replayed
    assert response.entry.kind == E.ENTRY_KIND_GRANT
    assert response.entry.account_id == account
    assert response.entry.amount == 50_000
    assert response.entry.balance_after == 51_000
    assert response.entry.idempotency_key == f"topup:{event}"
    assert response.balance.balance == 51_000
    assert (await ledger.balance(account)).balance == 51_000
    assert [g.id for g in await grants_of(ledger, account)][0] == response.entry.id


async def test_the_same_event_again_is_the_first_grant_replayed(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    account = await ledger.open_account()
    event = new_event_id()
    first = await dashboard.GrantTopUp(top_up(account, 10_000, event))

    again = await dashboard.GrantTopUp(top_up(account, 10_000, event))
    # A delivery that says otherwise changes nothing either: the first grant stands.
    other_amount = await dashboard.GrantTopUp(top_up(account, 99_000, event))

    for replay in (again, other_amount):
        assert replay.replayed
        assert replay.entry == first.entry
        assert replay.balance.balance == 10_000
    assert (await ledger.balance(account)).balance == 10_000
    assert [g.amount for g in await grants_of(ledger, account)] == [10_000]


async def test_20_deliveries_at_once_grant_once(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    account = await ledger.open_account()
    event = new_event_id()

    responses = await asyncio.gather(
        *(dashboard.GrantTopUp(top_up(account, 10_000, event)) for _ in range(20))
    )

    assert sorted(r.replayed for r in responses) == [False] + [True] * 19
    assert {r.entry.id for r in responses} == {responses[0].entry.id}
    assert (await ledger.balance(account)).balance == 10_000
    assert [g.amount for g in await grants_of(ledger, account)] == [10_000]


async def test_an_event_granted_to_one_account_grants_nothing_to_another(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    paid, other = await ledger.open_account(), await ledger.open_account(credits=7)
    event = new_event_id()
    first = await dashboard.GrantTopUp(top_up(paid, 10_000, event))

    replay = await dashboard.GrantTopUp(top_up(other, 10_000, event))

    assert replay.replayed
    assert replay.entry == first.entry  # the grant, which credited the account that paid
    assert replay.balance.balance == 7  # the asking account's balance, untouched
    assert (await ledger.balance(other)).balance == 7
    assert [g.amount for g in await grants_of(ledger, other)] == [7]
    assert (await ledger.balance(paid)).balance == 10_000


async def test_one_event_delivered_for_many_accounts_at_once_grants_once(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    # Each delivery holds only its own account's lock: the event's primary key decides.
    accounts = [await ledger.open_account() for _ in range(10)]
    event = new_event_id()

    responses = await asyncio.gather(
        *(dashboard.GrantTopUp(top_up(a, 10_000, event)) for a in accounts for _ in range(2))
    )

    assert sorted(r.replayed for r in responses) == [False] + [True] * 19
    [granted] = [r.entry for r in responses if not r.replayed]
    assert {r.entry.id for r in responses} == {granted.id}
    balances = {a: (await ledger.balance(a)).balance for a in accounts}
    assert balances == {a: 10_000 if a == granted.account_id else 0 for a in accounts}


async def test_above_the_cap_is_refused_and_records_nothing(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    account = await ledger.open_account()
    event = new_event_id()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dashboard.GrantTopUp(top_up(account, MAX_TOP_UP + 1, event))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "at most 10000000" in str(refused.value.details())
    assert (await ledger.balance(account)).balance == 0
    assert await ledger.entries(account) == []
    # The event was not recorded: a good delivery of it still grants, the cap itself included.
    granted = await dashboard.GrantTopUp(top_up(account, MAX_TOP_UP, event))
    assert not granted.replayed and granted.balance.balance == MAX_TOP_UP


@pytest.mark.parametrize(
    ("credits", "event_id"),
    [
        pytest.param(0, "evt_zero", id="no credits"),
        pytest.param(-5, "evt_negative", id="negative credits"),
        pytest.param(5, "", id="no event id"),
        pytest.param(5, "e" * 129, id="event id too long"),
        pytest.param(5, "evt\n1", id="control character"),
        pytest.param(5, "evt\u200b1", id="invisible character"),
    ],
)
async def test_bad_top_ups_are_refused_and_write_nothing(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub, credits: int, event_id: str
) -> None:
    account = await ledger.open_account()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dashboard.GrantTopUp(top_up(account, credits, event_id))

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert await ledger.entries(account) == []


async def test_an_account_never_opened_is_not_found_and_the_event_stays_unused(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    event = new_event_id()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dashboard.GrantTopUp(top_up("acct_never_opened", 10_000, event))

    assert refused.value.code() == grpc.StatusCode.NOT_FOUND
    account = await ledger.open_account()
    assert not (await dashboard.GrantTopUp(top_up(account, 10_000, event))).replayed


async def test_an_event_id_of_128_characters_fits_its_key(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    account = await ledger.open_account()
    event = "evt_" + uuid.uuid4().hex + "x" * 92

    response = await dashboard.GrantTopUp(top_up(account, 1, event))

    assert len(event) == 128
    assert response.entry.idempotency_key == f"topup:{event}"


async def test_an_operator_grant_cannot_take_a_top_ups_key(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    account = await ledger.open_account()
    event = new_event_id()

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await ledger.grant(account, 5, key=f"topup:{event}")

    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert not (await dashboard.GrantTopUp(top_up(account, 10_000, event))).replayed


async def test_a_key_taken_before_the_rule_refuses_the_top_up_and_writes_nothing(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub, ledger_database_url: str
) -> None:
    account = await ledger.open_account()
    event = new_event_id()
    # A grant by hand under the key, as only SQL can write one now.
    async with await psycopg.AsyncConnection.connect(ledger_database_url) as sql:
        await sql.execute(
            "WITH credited AS (UPDATE ledger.accounts SET balance = balance + 5 WHERE id = %s"
            " RETURNING id, balance)"
            " INSERT INTO ledger.entries (account_id, kind, amount, balance_after, idempotency_key)"
            " SELECT id, 'grant', 5, balance, %s FROM credited",
            [account, f"topup:{event}"],
        )

    with pytest.raises(grpc.aio.AioRpcError) as refused:
        await dashboard.GrantTopUp(top_up(account, 10_000, event))

    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    assert error_reason(refused.value) == "IDEMPOTENCY_KEY_REUSED"
    assert (await ledger.balance(account)).balance == 5


@pytest.mark.parametrize("caller", ["gateway", "operator", "predictions", "reports"])
async def test_no_one_but_the_dashboard_may_grant_a_top_up(
    ledger: Ledger, ledger_service: ServiceProcess, caller: str
) -> None:
    account = await ledger.open_account()
    async with channel(ledger_service.address, caller) as as_caller:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_caller)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GrantTopUp(top_up(account, 10_000, new_event_id()))

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await ledger.balance(account)).balance == 0


async def test_payment_events_cannot_be_edited_deleted_or_forged(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub, ledger_database_url: str
) -> None:
    """Even SQL that bypasses the service, as the schema's owner."""
    account = await ledger.open_account()
    event = new_event_id()
    await dashboard.GrantTopUp(top_up(account, 10_000, event))
    await ledger.grant(account, 3, key="by-hand")
    [by_hand, *_] = await ledger.entries(account)

    async with await psycopg.AsyncConnection.connect(ledger_database_url, autocommit=True) as sql:
        for statement, params in (
            ("UPDATE ledger.payment_events SET account_id = account_id WHERE id = %s", [event]),
            ("DELETE FROM ledger.payment_events WHERE id = %s", [event]),
            ("TRUNCATE ledger.payment_events", None),
        ):
            with pytest.raises(errors.CheckViolation, match="payment_events is append-only"):
                await sql.execute(statement.encode(), params)
        # An event recorded with a grant that is not its own (a grant by hand, not keyed by it).
        with pytest.raises(errors.CheckViolation, match="does not record the grant"):
            await sql.execute(
                "INSERT INTO ledger.payment_events (id, account_id, credits, entry_id)"
                " VALUES (%s, %s, 3, %s)",
                [new_event_id(), account, by_hand.id],
            )
        cursor = await sql.execute(
            "SELECT id FROM ledger.payment_events WHERE account_id = %s", [account]
        )
        assert await cursor.fetchall() == [(event,)]


async def test_the_books_stay_sound(
    ledger: Ledger, dashboard: ledger_pb2_grpc.LedgerServiceStub
) -> None:
    """What `kokoro-pay ledger verify` asks, after this module's top-ups and one more of each."""
    paid, other = await ledger.open_account(), await ledger.open_account(credits=100)
    event = new_event_id()
    await asyncio.gather(
        *(dashboard.GrantTopUp(top_up(a, 500, event)) for a in (paid, other) for _ in range(5))
    )
    hold = await ledger.reserve(other, 60)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=40))

    verification = await ledger.stub.Verify(E.VerifyRequest())

    assert list(verification.discrepancies) == []
    assert verification.accounts > 2


# --- as the serving role ------------------------------------------------------------------


@pytest.fixture(scope="module")
def serving_ledger(roles: DatabaseUrls, log_dir: Path) -> Iterator[ServiceProcess]:  # noqa: F811
    """A ledger that migrates as the schema's owner and serves as its own role (grants.sql)."""
    process = ledger_process(roles.ledger, log_dir, migration_url=roles.owner).start()
    yield process
    process.stop()


async def test_the_serving_role_may_top_up_and_nothing_more(
    serving_ledger: ServiceProcess,
    roles: DatabaseUrls,  # noqa: F811
) -> None:
    async with (
        connected_ledger(serving_ledger.address) as ledger,
        channel(serving_ledger.address, "dashboard") as as_dashboard,
    ):
        dashboard = ledger_pb2_grpc.LedgerServiceStub(as_dashboard)
        paid, other = await ledger.open_account(), await ledger.open_account()
        event = new_event_id()
        responses = await asyncio.gather(
            *(dashboard.GrantTopUp(top_up(a, 500, event)) for a in (paid, other) for _ in range(5))
        )
        assert sorted(r.replayed for r in responses) == [False] + [True] * 9
        assert (await ledger.balance(paid)).balance + (await ledger.balance(other)).balance == 500

    with psycopg.connect(roles.ledger, autocommit=True) as sql:
        for statement in (
            "UPDATE ledger.payment_events SET credits = 1",
            "DELETE FROM ledger.payment_events",
            "TRUNCATE ledger.payment_events",
            "ALTER TABLE ledger.payment_events DISABLE TRIGGER payment_events_append_only",
            "INSERT INTO ledger.payment_events (id, account_id, credits, entry_id, create_time)"
            " VALUES ('evt_backdated', 'a', 1, 1, now() - interval '1 year')",
        ):
            with pytest.raises(errors.InsufficientPrivilege):
                sql.execute(statement.encode())
