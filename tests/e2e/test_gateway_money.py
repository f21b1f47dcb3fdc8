"""Money under pressure: parallel spending never overdraws; unlimited accounts are journaled."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from kokoropay.ledger.v1 import ledger_pb2

from services.cli.admin import AdminClient
from tests.e2e.conftest import NewCustomer, balance_becomes, balance_of, decode

pytestmark = [pytest.mark.model, pytest.mark.slow]


async def test_twenty_parallel_requests_on_55_credits_buy_exactly_five(
    http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=55)
    # All twenty at once, past the default 8 streams a key may have: credits are the limit here.
    await admin.set_account_limits(customer.account_id, speech_concurrent_streams=20)
    body = {"input": "Ten chars.", "voice": "af_sky"}
    assert len(body["input"]) == 10
    responses = await asyncio.gather(
        *(http.post("/audio/speech", headers=customer.headers, json=body) for _ in range(20))
    )
    succeeded = [r for r in responses if r.status_code == 200]
    assert sorted(r.status_code for r in responses) == [200] * 5 + [402] * 15
    for response in succeeded:
        assert decode(response.content).seconds > 0.3  # complete, decodable audio
    await balance_becomes(http, customer, 5)


async def test_an_unlimited_account_is_never_refused_and_its_usage_is_journaled(
    http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=0, unlimited=True)
    text = "Unlimited, yet counted."
    response = await http.post(
        "/audio/speech", headers=customer.headers, json={"input": text, "voice": "af_sky"}
    )
    assert response.status_code == 200
    assert (await http.get("/balance", headers=customer.headers)).json()["unlimited"] is True
    assert await balance_of(http, customer) == 0

    async def journal() -> list[ledger_pb2.Entry]:
        return await admin.recent_entries(customer.account_id)

    deadline = asyncio.get_running_loop().time() + 30
    while not any(e.kind == ledger_pb2.ENTRY_KIND_CAPTURE for e in await journal()):
        assert asyncio.get_running_loop().time() < deadline, "no capture journaled"
        await asyncio.sleep(0.1)
    entries = await journal()
    hold = next(e for e in entries if e.kind == ledger_pb2.ENTRY_KIND_HOLD)
    capture = next(e for e in entries if e.kind == ledger_pb2.ENTRY_KIND_CAPTURE)
    # The hold moves nothing on an unlimited balance, but the capture records the usage.
    assert capture.amount == len(text)
    assert capture.hold_id == hold.hold_id
    assert hold.idempotency_key == f"req:{response.headers['x-request-id']}"


async def test_a_retried_request_with_an_idempotency_key_costs_once(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=100)
    body = {"input": "Charge me once.", "voice": "af_sky"}
    headers = {**customer.headers, "Idempotency-Key": "e2e-retry-1"}
    first = await http.post("/audio/speech", headers=headers, json=body)
    await balance_becomes(http, customer, 100 - len(body["input"]))
    again = await http.post("/audio/speech", headers=headers, json=body)
    assert first.status_code == again.status_code == 200
    assert decode(again.content).seconds > 0.5
    await asyncio.sleep(0.5)  # give a wrong second charge time to land
    assert await balance_of(http, customer) == 100 - len(body["input"])
