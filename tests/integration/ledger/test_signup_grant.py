"""The sign-up bonus: the dashboard starts an account with credits, once, and mints nothing else."""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E
from kokoropay.ledger.v1 import ledger_pb2_grpc

from services.cli.processes import ServiceProcess
from tests.support.ledger import Ledger, connected_ledger, ledger_process
from tests.support.pki import channel


async def test_the_dashboard_grants_the_sign_up_credits_once_however_often_it_asks(
    ledger: Ledger, ledger_service: ServiceProcess
) -> None:
    account = await ledger.open_account()
    async with channel(ledger_service.address, "dashboard") as as_dashboard:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_dashboard)
        request = E.GrantSignupBonusRequest(account_id=account)
        responses = await asyncio.gather(*(stub.GrantSignupBonus(request) for _ in range(20)))

    assert {r.entry.id for r in responses} == {responses[0].entry.id}
    assert responses[0].entry.amount == 1000  # LEDGER_SIGNUP_GRANT_CREDITS' default
    assert (await ledger.balance(account)).balance == 1000
    grants = [e for e in await ledger.entries(account) if e.kind == E.ENTRY_KIND_GRANT]
    assert [g.amount for g in grants] == [1000]


@pytest.mark.parametrize("caller", ["gateway", "operator", "reports"])
async def test_no_one_but_the_dashboard_may_grant_the_bonus(
    ledger: Ledger, ledger_service: ServiceProcess, caller: str
) -> None:
    account = await ledger.open_account()
    async with channel(ledger_service.address, caller) as as_caller:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_caller)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GrantSignupBonus(E.GrantSignupBonusRequest(account_id=account))

    assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
    assert (await ledger.balance(account)).balance == 0


async def test_an_unknown_account_gets_nothing(ledger_service: ServiceProcess) -> None:
    async with channel(ledger_service.address, "dashboard") as as_dashboard:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_dashboard)
        with pytest.raises(grpc.aio.AioRpcError) as refused:
            await stub.GrantSignupBonus(E.GrantSignupBonusRequest(account_id="acct_never_opened"))
    assert refused.value.code() == grpc.StatusCode.NOT_FOUND


async def test_with_the_bonus_set_to_zero_nothing_is_granted(
    ledger_database_url: str, log_dir: Path
) -> None:
    process = ledger_process(ledger_database_url, log_dir, LEDGER_SIGNUP_GRANT_CREDITS="0")
    await asyncio.to_thread(process.start)
    try:
        async with (
            connected_ledger(process.address) as ledger,
            channel(process.address, "dashboard") as as_dashboard,
        ):
            account = await ledger.open_account()
            response = await ledger_pb2_grpc.LedgerServiceStub(as_dashboard).GrantSignupBonus(
                E.GrantSignupBonusRequest(account_id=account)
            )
            assert not response.HasField("entry") and response.balance.balance == 0
            assert [e.kind for e in await ledger.entries(account)] == []
    finally:
        process.stop()
