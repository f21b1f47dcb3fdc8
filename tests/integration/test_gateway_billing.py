"""The gateway's billing against the real ledger: holds that really lapse, and late charges.

A hold's deadline covers the whole request, so a capture finding it expired is a last resort;
these tests make it happen for real (a one-second hold on a real ledger process) instead of
flipping a flag in a fake, including when the balance no longer covers the late charge.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
from kokoropay.ledger.v1 import ledger_pb2

from services.cli.processes import ServiceProcess
from services.gateway.billing import Billing, Charge, Outcome, SpeechOrder
from services.gateway.clients import GrpcLedgerClient, Principal
from tests.support.ledger import Ledger, connected_ledger, ledger_process
from tests.support.postgres import create_database

TEXT = "seven!!"  # 7 characters, 7 credits
HOLD_SECONDS = 1


@pytest.fixture(scope="module")
def ledger_service(postgres_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    database = create_database(postgres_url, prefix="billing")
    process = ledger_process(database, log_dir, LEDGER_SWEEP_INTERVAL_SECONDS="3600").start()
    yield process
    process.stop()


@pytest.fixture
async def ledger(ledger_service: ServiceProcess) -> AsyncIterator[Ledger]:
    async with connected_ledger(ledger_service.address) as ledger:
        yield ledger


@pytest.fixture
def billing(ledger: Ledger) -> Billing:
    # Billing runs in the gateway: it calls the ledger with the gateway's certificate.
    client = GrpcLedgerClient(ledger.gateway_channel, timeout=5, ready_timeout=1)
    return Billing(client, settle_retry_delays=(0.05, 0.1))


def _order(text: str = TEXT) -> SpeechOrder:
    return SpeechOrder(text, "af_sky", "kokoro", 1.0, "mp3", "audio")


async def _lapsed_hold(
    billing: Billing, account: str, idempotency_key: str | None = None
) -> Charge:
    charge = await billing.hold(
        Principal(account, "key_test"),
        _order(),
        f"req:{uuid.uuid4().hex}",
        HOLD_SECONDS,
        idempotency_key,
    )
    await asyncio.sleep(HOLD_SECONDS + 1.5)  # the deadline passes while "streaming"
    return charge


@pytest.mark.parametrize("keyed", [False, True], ids=["plain", "idempotency-key"])
async def test_a_completed_stream_whose_hold_lapsed_is_charged_anew(
    billing: Billing, ledger: Ledger, keyed: bool
) -> None:
    account = await ledger.open_account(credits=10)
    charge = await _lapsed_hold(billing, account, "retry-1" if keyed else None)

    await billing.settle(charge, Outcome.COMPLETED, delivered_characters=len(TEXT))

    # The lapsed hold returned its 7 credits; the late charge took them again, once.
    assert (await ledger.balance(account)).balance == 10 - len(TEXT)
    # Both holds say what they paid for: the key auth verified, the voice, format and model.
    listed = await ledger.stub.ListHolds(ledger_pb2.ListHoldsRequest(account_id=account))
    labels = ledger_pb2.UsageLabels(
        key_id="key_test", voice="af_sky", response_format="mp3", model="kokoro"
    )
    assert [(h.state, h.labels) for h in listed.holds] == [
        (ledger_pb2.HOLD_STATE_CAPTURED, labels),  # the late charge
        (ledger_pb2.HOLD_STATE_EXPIRED, labels),
    ]
    if keyed:  # and the key counts the late charge: a retry owes nothing more
        again = await billing.hold(
            Principal(account, "key_test"), _order(), f"req:{uuid.uuid4().hex}", 60, "retry-1"
        )
        assert again.replay


async def test_a_late_charge_the_balance_no_longer_covers_takes_what_is_left(
    billing: Billing,
    ledger: Ledger,
    caplog: pytest.LogCaptureFixture,
) -> None:
    account = await ledger.open_account(credits=10)
    charge = await _lapsed_hold(billing, account)
    # Meanwhile the customer spent elsewhere: only 2 credits are left when the charge comes.
    other = await ledger.reserve(account, 8)
    await ledger.stub.Capture(ledger_pb2.CaptureRequest(hold_id=other.id))

    with caplog.at_level(logging.ERROR, logger="gateway.billing"):
        await billing.settle(charge, Outcome.COMPLETED, delivered_characters=len(TEXT))

    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (0, 0)  # never below zero, nothing left held
    assert "late charge short: 5 of 7 credits unpaid" in caplog.text
