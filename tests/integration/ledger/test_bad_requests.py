"""Bad input is refused with INVALID_ARGUMENT or NOT_FOUND and writes nothing; admin RPCs answer
the operator's certificate alone."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import grpc
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E
from kokoropay.ledger.v1 import ledger_pb2_grpc

from services.cli.processes import ServiceProcess
from tests.support.ledger import ADMIN, Ledger
from tests.support.pki import channel

INVALID = grpc.StatusCode.INVALID_ARGUMENT
NOT_FOUND = grpc.StatusCode.NOT_FOUND
LONG = "k" * 129
UNKNOWN = "acct_never_opened"


# Stands for the id of an account that is open, with credits and an open hold.
OPEN = "<open account>"


def _case(name: str, request: Any, code: grpc.StatusCode) -> Any:
    return pytest.param(request, code, id=name)


def _grant(**fields: Any) -> E.GrantRequest:
    """A good Grant but for `fields`."""
    return E.GrantRequest(**{"account_id": OPEN, "amount": 5, "idempotency_key": "g", **fields})


def _reserve(**fields: Any) -> E.ReserveRequest:
    """A good Reserve but for `fields`."""
    return E.ReserveRequest(**{"account_id": OPEN, "amount": 7, "idempotency_key": "k", **fields})


CASES = [
    _case("open: empty id", E.OpenAccountRequest(), INVALID),
    _case("open: id too long", E.OpenAccountRequest(account_id="a" * 129), INVALID),
    _case("open: NUL in id", E.OpenAccountRequest(account_id="a\x00b"), INVALID),
    _case("balance: empty id", E.GetBalanceRequest(), INVALID),
    _case("balance: unknown", E.GetBalanceRequest(account_id=UNKNOWN), NOT_FOUND),
    _case("grant: zero", _grant(amount=0), INVALID),
    _case("grant: negative", _grant(amount=-5), INVALID),
    _case("grant: too large", _grant(amount=10**12 + 1), INVALID),
    _case("grant: no key", _grant(idempotency_key=""), INVALID),
    _case("grant: key too long", _grant(idempotency_key=LONG), INVALID),
    _case("grant: no account", _grant(account_id=""), INVALID),
    _case("grant: unknown account", _grant(account_id=UNKNOWN), NOT_FOUND),
    _case("unlimited: no account", E.SetUnlimitedRequest(unlimited=True), INVALID),
    _case(
        "unlimited: unknown", E.SetUnlimitedRequest(account_id=UNKNOWN, unlimited=True), NOT_FOUND
    ),
    _case("reserve: zero", _reserve(amount=0), INVALID),
    _case("reserve: negative", _reserve(amount=-7), INVALID),
    _case("reserve: no key", _reserve(idempotency_key=""), INVALID),
    _case("reserve: key too long", _reserve(idempotency_key=LONG), INVALID),
    _case("reserve: newline in key", _reserve(idempotency_key="k\n"), INVALID),
    _case("reserve: ttl too large", _reserve(ttl_seconds=6 * 3600 + 1), INVALID),
    _case("reserve: no account", _reserve(account_id=""), INVALID),
    _case("reserve: unknown account", _reserve(account_id=UNKNOWN), NOT_FOUND),
    _case("capture: no hold", E.CaptureRequest(), INVALID),
    _case("capture: hold id too long", E.CaptureRequest(hold_id="h" * 129), INVALID),
    _case("capture: unknown hold", E.CaptureRequest(hold_id="hold_unknown"), NOT_FOUND),
    _case("release: no hold", E.ReleaseRequest(), INVALID),
    _case("release: unknown hold", E.ReleaseRequest(hold_id="hold_unknown"), NOT_FOUND),
    _case("entries: no account", E.ListEntriesRequest(), INVALID),
    _case("entries: unknown account", E.ListEntriesRequest(account_id=UNKNOWN), NOT_FOUND),
    _case("entries: forged token", E.ListEntriesRequest(account_id=OPEN, page_token="x"), INVALID),
    _case("reserve: long key label", _reserve(labels=E.UsageLabels(key_id="k" * 65)), INVALID),
    _case("reserve: long voice label", _reserve(labels=E.UsageLabels(voice="v" * 401)), INVALID),
    _case("reserve: control in label", _reserve(labels=E.UsageLabels(model="m\x07")), INVALID),
    _case("holds: no account", E.ListHoldsRequest(), INVALID),
    _case("holds: unknown account", E.ListHoldsRequest(account_id=UNKNOWN), NOT_FOUND),
    _case("holds: forged token", E.ListHoldsRequest(account_id=OPEN, page_token="x"), INVALID),
    _case("usage: no account", E.SummarizeUsageRequest(days=1), INVALID),
    _case("usage: unknown account", E.SummarizeUsageRequest(account_id=UNKNOWN), NOT_FOUND),
    _case("usage: 91 days", E.SummarizeUsageRequest(account_id=OPEN, days=91), INVALID),
]


async def _table_counts(database_url: str) -> tuple[int, ...]:
    async with await psycopg.AsyncConnection.connect(database_url) as conn:
        cursor = await conn.execute(
            "SELECT (SELECT count(*) FROM ledger.accounts), (SELECT count(*) FROM ledger.holds),"
            " (SELECT count(*) FROM ledger.entries)"
        )
        row = await cursor.fetchone()
        assert row is not None
        return tuple(row)


@pytest.mark.parametrize("request_template,code", CASES)
async def test_bad_input_is_refused_and_writes_nothing(
    ledger: Ledger, ledger_database_url: str, request_template: Any, code: grpc.StatusCode
) -> None:
    account = await ledger.open_account(credits=100)
    await ledger.reserve(account, 7)
    request = type(request_template)()
    request.CopyFrom(request_template)
    if getattr(request, "account_id", None) == OPEN:
        request.account_id = account
    method = getattr(ledger.stub, type(request).__name__.removesuffix("Request"))
    balance = await ledger.balance(account)
    entries = await ledger.entries(account)
    counts = await _table_counts(ledger_database_url)

    with pytest.raises(grpc.aio.AioRpcError) as caught:
        await method(request, metadata=ADMIN)

    assert caught.value.code() == code, caught.value.details()
    assert await ledger.balance(account) == balance
    assert await ledger.entries(account) == entries
    assert await _table_counts(ledger_database_url) == counts


async def test_the_longest_allowed_ids_and_keys_are_accepted(ledger: Ledger) -> None:
    account = "a" * 128
    await ledger.stub.OpenAccount(E.OpenAccountRequest(account_id=account), metadata=ADMIN)
    await ledger.grant(account, 10, key="g" * 128)

    hold = await ledger.reserve(account, 7, key="k" * 128, ttl_seconds=6 * 3600)

    assert hold.idempotency_key == "k" * 128
    assert hold.expire_time.seconds - hold.create_time.seconds == 6 * 3600


async def test_ttl_zero_means_the_default(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=10)

    hold = await ledger.reserve(account, 7, ttl_seconds=0)

    assert hold.expire_time.seconds - hold.create_time.seconds == 900


ADMIN_CALLS = [
    ("OpenAccount", lambda account: E.OpenAccountRequest(account_id=account + "-new")),
    ("Grant", lambda account: E.GrantRequest(account_id=account, amount=5, idempotency_key="x")),
    ("SetUnlimited", lambda account: E.SetUnlimitedRequest(account_id=account, unlimited=True)),
    # Reads of another account's journal and usage are the dashboard's and the operator's alone.
    ("ListEntries", lambda account: E.ListEntriesRequest(account_id=account)),
    ("ListHolds", lambda account: E.ListHoldsRequest(account_id=account)),
    ("SummarizeUsage", lambda account: E.SummarizeUsageRequest(account_id=account)),
]
# Callers that may not administer: the gateway (its key holders' money path only), an internal
# service, a certificate of our CA that names no caller of the mesh.
NOT_OPERATORS = {
    "gateway": grpc.StatusCode.PERMISSION_DENIED,
    "reports": grpc.StatusCode.PERMISSION_DENIED,
    "stranger": grpc.StatusCode.UNAUTHENTICATED,
}


@pytest.mark.parametrize("method,request_for", ADMIN_CALLS, ids=[m for m, _ in ADMIN_CALLS])
@pytest.mark.parametrize("caller", NOT_OPERATORS, ids=list(NOT_OPERATORS))
async def test_admin_rpcs_answer_only_the_operator(
    ledger: Ledger,
    ledger_service: ServiceProcess,
    ledger_database_url: str,
    method: str,
    request_for: Callable[[str], Any],
    caller: str,
) -> None:
    account = await ledger.open_account(credits=100)
    counts = await _table_counts(ledger_database_url)

    async with channel(ledger_service.address, caller) as as_caller:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_caller)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await getattr(stub, method)(request_for(account))

    assert caught.value.code() == NOT_OPERATORS[caller]
    balance = await ledger.balance(account)
    assert (balance.balance, balance.unlimited) == (100, False)
    assert await _table_counts(ledger_database_url) == counts


async def test_the_operator_may_not_spend_a_customers_credits(
    ledger: Ledger, ledger_service: ServiceProcess
) -> None:
    account = await ledger.open_account(credits=10)
    async with channel(ledger_service.address, "operator") as as_operator:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_operator)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await stub.Reserve(E.ReserveRequest(account_id=account, amount=7, idempotency_key="op"))
    assert caught.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await ledger.balance(account)).balance == 10


async def test_spending_rpcs_answer_the_gateway(ledger: Ledger) -> None:
    account = await ledger.open_account(credits=10)

    hold = await ledger.reserve(account, 7)  # no metadata at all
    await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id))

    assert (await ledger.balance(account)).balance == 3
