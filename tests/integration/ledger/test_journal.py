"""The journal reads newest first in pages, and PostgreSQL itself keeps the money rules: even SQL
that bypasses the service cannot edit the journal, overdraw a balance or close a hold twice."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E
from psycopg import errors

from tests.support.ledger import ADMIN, Ledger


async def test_entries_come_newest_first_in_pages(ledger: Ledger) -> None:
    account = await ledger.open_account()
    for amount in range(1, 6):
        await ledger.grant(account, amount)

    pages: list[list[int]] = []
    token = ""
    while True:
        page = await ledger.stub.ListEntries(
            E.ListEntriesRequest(account_id=account, page_size=2, page_token=token), metadata=ADMIN
        )
        pages.append([entry.amount for entry in page.entries])
        token = page.next_page_token
        if not token:
            break

    assert pages == [[5, 4], [3, 2], [1]]
    entries = await ledger.entries(account)
    ids = [entry.id for entry in entries]
    assert ids == sorted(ids, reverse=True)
    assert entries[0].balance_after == 15


async def test_default_page_is_fifty_entries(ledger: Ledger) -> None:
    account = await ledger.open_account()
    for _ in range(51):
        await ledger.grant(account, 1)

    page = await ledger.stub.ListEntries(E.ListEntriesRequest(account_id=account), metadata=ADMIN)

    assert len(page.entries) == 50
    assert page.next_page_token


@pytest.fixture
async def sql(ledger_database_url: str) -> AsyncIterator[psycopg.AsyncConnection]:
    """A direct connection, as an operator with psql would have; each statement commits."""
    async with await psycopg.AsyncConnection.connect(ledger_database_url, autocommit=True) as conn:
        yield conn


async def test_journal_rows_cannot_be_edited_or_deleted(
    ledger: Ledger, sql: psycopg.AsyncConnection
) -> None:
    account = await ledger.open_account(credits=100)

    for statement in (
        "UPDATE ledger.entries SET amount = 1000 WHERE account_id = %s",
        "DELETE FROM ledger.entries WHERE account_id = %s",
    ):
        with pytest.raises(errors.CheckViolation, match="append-only"):
            await sql.execute(statement.encode(), [account])
    with pytest.raises(errors.CheckViolation, match="append-only"):
        await sql.execute("TRUNCATE ledger.entries")

    assert [e.amount for e in await ledger.entries(account)] == [100]


async def test_a_balance_cannot_go_negative(ledger: Ledger, sql: psycopg.AsyncConnection) -> None:
    account = await ledger.open_account(credits=5)

    with pytest.raises(errors.CheckViolation):
        await sql.execute(
            "UPDATE ledger.accounts SET balance = balance - 6 WHERE id = %s", [account]
        )

    assert (await ledger.balance(account)).balance == 5


async def test_a_closed_hold_cannot_be_reopened_or_refunded_twice(
    ledger: Ledger, sql: psycopg.AsyncConnection
) -> None:
    account = await ledger.open_account(credits=100)
    hold = await ledger.reserve(account, 30)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id))

    with pytest.raises(errors.CheckViolation, match="only close once"):
        await sql.execute(
            "UPDATE ledger.holds SET state = 'released', close_time = now() WHERE id = %s",
            [hold.id],
        )
    with pytest.raises(errors.UniqueViolation):
        await sql.execute(
            "INSERT INTO ledger.entries (account_id, kind, amount, balance_after, hold_id)"
            " VALUES (%s, 'capture', 30, 70, %s)",
            [account, hold.id],
        )

    assert (await ledger.balance(account)).balance == 70


async def test_a_database_failure_answers_internal_without_sql_and_writes_nothing(
    ledger: Ledger, sql: psycopg.AsyncConnection
) -> None:
    account = await ledger.open_account(credits=1)
    # Only reachable by editing the row: one more grant overflows BIGINT inside PostgreSQL.
    await sql.execute(
        "UPDATE ledger.accounts SET balance = 9223372036854775000 WHERE id = %s", [account]
    )

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await ledger.grant(account, 10**12)

    assert caught.value.code() == grpc.StatusCode.INTERNAL
    assert "bigint" not in (caught.value.details() or "")
    assert len(await ledger.entries(account)) == 1
