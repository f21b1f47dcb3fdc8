"""An abusive customer against the mesh as real processes: free audio through Idempotency-Key
replays, a voice string built to freeze the gateway, a body too large to read.

Each attack was measured working before its fix (see the issue's closing note); here each must
fail, and the books must show exactly what was delivered.
"""

from __future__ import annotations

import asyncio
import uuid

import httpx
import pytest

from services.cli.admin import AdminClient
from tests.e2e.conftest import Customer, NewCustomer, balance_of

pytestmark = [pytest.mark.model, pytest.mark.slow]

# Several model chunks (the first is at most 50 phonemes), so a client can hang up midway.
TEXT = (
    "Retries are safe here. A client that hangs up pays for what it heard, "
    "and then it simply asks again."
)
# Kokoro speaks in frames of 600 samples (25 ms at 24 kHz); a replay may differ by one.
FRAME_BYTES = 600 * 2
BODY = {"input": TEXT, "voice": "af_sky", "response_format": "pcm"}


async def _settled(admin: AdminClient, customer: Customer) -> int:
    """The balance once no credits are held any more (settlement follows the response)."""
    for _ in range(300):
        balance = await admin.balance(customer.account_id)
        if balance.held == 0:
            return int(balance.balance)
        await asyncio.sleep(0.1)
    raise AssertionError("credits still held after 30 s")


async def _hang_up_after_first_piece(http: httpx.AsyncClient, customer: Customer, key: str) -> int:
    headers = {**customer.headers, "Idempotency-Key": key}
    async with http.stream("POST", "/audio/speech", headers=headers, json=BODY) as response:
        if response.status_code != 200:
            return response.status_code
        await response.aiter_raw().__anext__()
    return 200  # leaving the block closes the connection mid-stream


async def test_hang_up_then_retry_costs_the_input_once_then_two_free_replays_then_409(
    http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=1_000)
    key = {"Idempotency-Key": f"order-{uuid.uuid4().hex}"}

    assert await _hang_up_after_first_piece(http, customer, key["Idempotency-Key"]) == 200
    partly = 1_000 - await _settled(admin, customer)
    assert 0 < partly < len(TEXT)  # charged for the first piece only

    whole = await http.post("/audio/speech", headers={**customer.headers, **key}, json=BODY)
    assert whole.status_code == 200
    assert whole.headers["x-billed-characters"] == str(len(TEXT) - partly)  # only the rest
    assert await _settled(admin, customer) == 1_000 - len(TEXT)  # exactly len(input) in all

    for _ in range(2):
        replay = await http.post("/audio/speech", headers={**customer.headers, **key}, json=BODY)
        assert replay.status_code == 200
        assert replay.headers["x-billed-characters"] == "0"
        assert abs(len(replay.content) - len(whole.content)) <= FRAME_BYTES
    third = await http.post("/audio/speech", headers={**customer.headers, **key}, json=BODY)
    assert third.status_code == 409
    assert "already completed" in third.json()["detail"]
    assert third.headers["x-should-retry"] == "false"
    assert await _settled(admin, customer) == 1_000 - len(TEXT)


async def test_the_same_key_on_another_request_is_400_and_changes_nothing(
    http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=1_000)
    headers = {**customer.headers, "Idempotency-Key": f"order-{uuid.uuid4().hex}"}
    short = {"input": "Just this.", "voice": "af_sky", "response_format": "pcm"}
    assert (await http.post("/audio/speech", headers=headers, json=short)).status_code == 200
    paid = await _settled(admin, customer)

    other = await http.post("/audio/speech", headers=headers, json={**short, "voice": "am_adam"})

    assert other.status_code == 400
    assert "differs in: voice" in other.json()["detail"]
    assert await _settled(admin, customer) == paid == 1_000 - len(short["input"])


async def test_fifty_concurrent_retries_of_one_key_never_pay_more_than_the_input(
    http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=1_000)
    # All fifty at once, past the default 8 streams a key may have: the Idempotency-Key is the
    # subject here, not the key's share of the mesh.
    await admin.set_account_limits(customer.account_id, speech_concurrent_streams=50)
    key = f"order-{uuid.uuid4().hex}"
    headers = {**customer.headers, "Idempotency-Key": key}

    async def retry(n: int) -> int:
        if n % 2:
            return await _hang_up_after_first_piece(http, customer, key)
        return (await http.post("/audio/speech", headers=headers, json=BODY)).status_code

    statuses = await asyncio.gather(*(retry(n) for n in range(50)))

    assert set(statuses) <= {200, 409} and 200 in statuses
    charged = 1_000 - await _settled(admin, customer)
    assert 0 < charged <= len(TEXT)
    # One more retry, alone: it pays whatever is left, or is a free replay; never more.
    finished = await http.post("/audio/speech", headers=headers, json=BODY)
    assert finished.status_code in (200, 409)
    assert 1_000 - await _settled(admin, customer) <= len(TEXT)


@pytest.mark.parametrize("as_object", [False, True], ids=["string", "object"])
async def test_a_pathological_voice_is_400_at_once_while_the_gateway_keeps_answering(
    http: httpx.AsyncClient, new_customer: NewCustomer, as_object: bool
) -> None:
    customer = await new_customer(credits=0)
    voice = "a(" + "1" * 50_000 + "!"
    body = {"input": "hello", "voice": {"id": voice} if as_object else voice}

    async def balance_meanwhile() -> httpx.Response:
        await asyncio.sleep(0.05)  # the voice request is in the gateway's hands by now
        # Generous for a loaded CPU; the unfixed parser held the event loop for 45 s.
        return await http.get("/balance", headers=customer.headers, timeout=10)

    refused, *balances = await asyncio.gather(
        http.post("/audio/speech", headers=customer.headers, json=body),
        *(balance_meanwhile() for _ in range(20)),
    )

    assert refused.status_code == 400
    assert "voice" in refused.json()["detail"]
    assert [b.status_code for b in balances] == [200] * 20
    assert await balance_of(http, customer) == 0


async def test_a_two_megabyte_body_is_413_in_the_contracts_shape(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=10)
    huge = b'{"input": "' + b"a" * 2_000_000 + b'"}'

    response = await http.post(
        "/audio/speech",
        headers={**customer.headers, "content-type": "application/json"},
        content=huge,
    )

    assert response.status_code == 413
    assert response.headers["content-type"] == "application/json"
    assert "larger than" in response.json()["detail"]
    assert await balance_of(http, customer) == 10
