"""Kill any one part of the mesh at a bad moment: no credit is lost and no audio is given away.

Each case runs the mesh as real processes on a real PostgreSQL, injects one fault, checks how
every request ended against the ledger's own rows, and ends with `ledger verify` over the whole
ledger. Settings (conftest.py) make holds checkpoint every half second and expire three
seconds after the last checkpoint, so expiry happens within the test.
"""

from __future__ import annotations

import asyncio
import time

import httpx
import pytest

from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from tests.chaos.conftest import (
    ChaosDatabase,
    Customer,
    books_balance,
    holds_of,
    new_customer,
    restart,
    settled,
)
from tests.support.metrics import Exposition

pytestmark = [pytest.mark.model, pytest.mark.slow]

# Long enough to stream for several seconds on a CPU, in many chunks.
LONG_TEXT = " ".join(
    f"Sentence number {n} keeps the model talking, so the stream lasts a while." for n in range(12)
)
SHORT_TEXT = "Chaos, politely."


async def _stream_until(
    http: httpx.AsyncClient, customer: Customer, body: dict[str, object], started: asyncio.Event
) -> tuple[int, int, bool]:
    """(status, bytes received, whether the body ended cleanly); sets `started` on first bytes."""
    received = 0
    try:
        async with http.stream("POST", "/audio/speech", headers=customer.headers, json=body) as r:
            if r.status_code != 200:
                await r.aread()
                started.set()
                return r.status_code, 0, True
            async for chunk in r.aiter_raw():
                received += len(chunk)
                started.set()
        return 200, received, True
    except (httpx.RemoteProtocolError, httpx.ReadError):
        started.set()
        return 200, received, False


async def test_a_gateway_killed_mid_stream_leaves_a_hold_that_captures_its_last_checkpoint(
    chaos_mesh: LocalMesh, chaos_database: ChaosDatabase, admin: AdminClient
) -> None:
    customer = await new_customer(admin, 5_000)
    base = f"{chaos_mesh.addresses['gateway']}/v1"
    client = httpx.AsyncClient(base_url=base, timeout=300)
    body = {"input": LONG_TEXT, "voice": "af_sky", "response_format": "pcm"}
    stream = client.stream("POST", "/audio/speech", headers=customer.headers, json=body)
    response = await stream.__aenter__()
    assert response.status_code == 200
    chunks = response.aiter_raw()
    deadline = time.monotonic() + 60
    while True:  # read until the gateway has checkpointed some delivered characters
        await chunks.__anext__()
        [hold] = holds_of(chaos_database, customer.account_id)
        if hold["checkpointed"] > 0:
            break
        assert time.monotonic() < deadline, "no checkpoint while streaming"

    await asyncio.to_thread(chaos_mesh.process("gateway").kill)
    [frozen] = holds_of(chaos_database, customer.account_id)  # nobody checkpoints any more
    await client.aclose()

    left = await settled(admin, customer)  # after the deadline, the sweeper expires the hold
    [closed] = holds_of(chaos_database, customer.account_id)
    assert (closed["state"], closed["captured"]) == ("captured", frozen["checkpointed"])
    assert 0 < frozen["checkpointed"] < len(LONG_TEXT)
    assert left == 5_000 - frozen["checkpointed"]
    await books_balance(admin)
    await restart(chaos_mesh, "gateway")


async def test_synth_killed_before_and_during_streams_refunds_both(
    chaos_mesh: LocalMesh, admin: AdminClient, http: httpx.AsyncClient
) -> None:
    customer = await new_customer(admin, 5_000)
    body = {"input": LONG_TEXT, "voice": "af_sky", "response_format": "pcm"}
    first_started, second_started = asyncio.Event(), asyncio.Event()
    streaming = asyncio.ensure_future(_stream_until(http, customer, body, first_started))
    await asyncio.wait_for(first_started.wait(), 60)
    # Queued behind the first (one synthesis at a time): no audio yet when synth dies.
    waiting = asyncio.ensure_future(_stream_until(http, customer, body, second_started))
    await asyncio.sleep(0.5)
    assert not second_started.is_set()

    await asyncio.to_thread(chaos_mesh.process("synth").kill)
    (status, received, clean), (second_status, _, _) = await asyncio.gather(streaming, waiting)

    assert (status, clean) == (200, False) and received > 0  # a cut stream, not a short file
    assert second_status == 502
    assert await settled(admin, customer) == 5_000  # both refunded
    await books_balance(admin)
    await restart(chaos_mesh, "synth")


async def test_synth_killed_in_a_batched_call_refunds_every_stream_in_it(
    chaos_mesh: LocalMesh, admin: AdminClient, http: httpx.AsyncClient
) -> None:
    """Batching (on by default on CUDA) puts several streams in one model call, and a dying
    synth takes them all at once: each is cut, none is charged."""
    synth = chaos_mesh.process("synth")
    await asyncio.to_thread(synth.stop)
    # A long gathering window, so that streams started together share every call here too.
    usual = synth.reconfigure({"SYNTH_BATCHING": "on", "SYNTH_BATCH_WAIT_MS": "100"})
    try:
        await restart(chaos_mesh, "synth")
        customer = await new_customer(admin, 5_000)
        body = {"input": LONG_TEXT, "voice": "af_sky", "response_format": "pcm"}
        started = [asyncio.Event() for _ in range(3)]
        streams = [
            asyncio.ensure_future(_stream_until(http, customer, body, event)) for event in started
        ]
        await asyncio.wait_for(asyncio.gather(*(event.wait() for event in started)), 120)
        async with httpx.AsyncClient() as scraper:
            batches = Exposition.parse((await scraper.get(synth.metrics_url)).text)
        # Chunks spoken over calls spoken: above 1 once a call carried more than one stream.
        chunks = batches.total("kokoropay_synth_batch_size_sum")
        assert chunks > batches.total("kokoropay_synth_batch_size_count"), "no batch of two"

        await asyncio.to_thread(synth.kill)
        outcomes = await asyncio.gather(*streams)

        assert [(status, clean) for status, _, clean in outcomes] == [(200, False)] * 3
        assert all(received > 0 for _, received, _ in outcomes)
        assert await settled(admin, customer) == 5_000  # all three refunded
        await books_balance(admin)
    finally:
        await asyncio.to_thread(synth.kill)
        synth.reconfigure(usual)
        await restart(chaos_mesh, "synth")


async def _burst(
    http: httpx.AsyncClient, customer: Customer, count: int, stagger: float = 0.0
) -> list[tuple[int, str, bool]]:
    """`count` short requests at once, or the n-th `n × stagger` seconds after the first:
    (status, request id, whether the body was whole)."""

    async def one(n: int) -> tuple[int, str, bool]:
        await asyncio.sleep(n * stagger)
        body = {"input": SHORT_TEXT, "voice": "af_sky", "response_format": "wav"}
        async with http.stream(
            "POST", "/audio/speech", headers=customer.headers, json=body
        ) as response:
            request_id = response.headers["x-request-id"]
            try:
                await response.aread()
            except (httpx.RemoteProtocolError, httpx.ReadError):
                return response.status_code, request_id, False
            return response.status_code, request_id, True

    return list(await asyncio.gather(*(one(n) for n in range(count))))


def _each_request_charged_once_or_not_at_all(
    database: ChaosDatabase, customer: Customer, outcomes: list[tuple[int, str, bool]]
) -> dict[str, int]:
    """Every whole 200 was captured once at the full price; a cut stream at most what it held;
    a refused request nothing. Request ids (x-request-id) name the holds (`req:<id>`)."""
    holds = {
        h["idempotency_key"].removeprefix("req:"): h
        for h in holds_of(database, customer.account_id)
    }
    tally = {"charged": 0, "cut": 0, "refused": 0}
    for status, request_id, whole in outcomes:
        hold = holds.get(request_id)
        if status == 200 and whole:
            assert hold is not None and hold["state"] == "captured", hold
            assert hold["captured"] == len(SHORT_TEXT), hold
            tally["charged"] += 1
        elif status == 200:
            assert hold is None or (hold["captured"] or 0) <= len(SHORT_TEXT), hold
            tally["cut"] += 1
        else:
            assert status in (402, 502, 503, 504), status
            assert hold is None or hold["captured"] is None, hold
            tally["refused"] += 1
    # And no hold the burst does not account for.
    assert set(holds) <= {request_id for _, request_id, _ in outcomes}
    return tally


async def test_the_ledger_killed_during_a_burst_charges_each_request_once_or_not_at_all(
    chaos_mesh: LocalMesh,
    chaos_database: ChaosDatabase,
    admin: AdminClient,
    http: httpx.AsyncClient,
) -> None:
    customer = await new_customer(admin, 5_000)
    ledger = chaos_mesh.process("ledger")

    async def fault() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(ledger.kill)
        await asyncio.sleep(2.0)
        await asyncio.to_thread(ledger.start, True, 60.0)

    # Arriving over four seconds, so that some requests find the ledger down whatever the
    # streams already admitted are doing (synth takes their chunks in turns).
    outcomes, _ = await asyncio.gather(_burst(http, customer, 20, stagger=0.2), fault())

    left = await settled(admin, customer)
    tally = _each_request_charged_once_or_not_at_all(chaos_database, customer, outcomes)
    spent = sum(h["captured"] or 0 for h in holds_of(chaos_database, customer.account_id))
    assert left == 5_000 - spent
    assert tally["charged"] > 0 and tally["refused"] + tally["cut"] > 0, tally
    await books_balance(admin)


async def test_postgresql_restarted_under_twenty_streams_charges_each_once_or_not_at_all(
    chaos_database: ChaosDatabase, admin: AdminClient, http: httpx.AsyncClient
) -> None:
    customer = await new_customer(admin, 5_000)

    async def fault() -> None:
        await asyncio.sleep(1.5)
        await asyncio.to_thread(chaos_database.restart)

    outcomes, _ = await asyncio.gather(_burst(http, customer, 20), fault())

    await settled(admin, customer)
    tally = _each_request_charged_once_or_not_at_all(chaos_database, customer, outcomes)
    assert tally["charged"] > 0, tally
    await books_balance(admin)
    # And the mesh serves again by itself: pools replace their dead connections.
    await _serves_again(http, customer)


async def _serves_again(http: httpx.AsyncClient, customer: Customer, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    body = {"input": SHORT_TEXT, "voice": "af_sky", "response_format": "wav"}
    while (
        await http.post("/audio/speech", headers=customer.headers, json=body)
    ).status_code != 200:
        assert time.monotonic() < deadline, "the mesh did not recover from the restart"
        await asyncio.sleep(0.5)


async def test_a_slow_stream_outliving_its_first_deadline_is_charged_exactly_once(
    chaos_database: ChaosDatabase, admin: AdminClient, http: httpx.AsyncClient
) -> None:
    customer = await new_customer(admin, 5_000)
    text = LONG_TEXT[:300]
    body = {"input": text, "voice": "af_sky", "response_format": "pcm", "speed": 0.25}
    started = time.monotonic()

    response = await http.post("/audio/speech", headers=customer.headers, json=body)

    took = time.monotonic() - started
    assert response.status_code == 200
    assert await settled(admin, customer) == 5_000 - len(text)
    [hold] = holds_of(chaos_database, customer.account_id)
    first_lifetime = _initial_ttl_seconds()
    # The stream outlived the hold's first deadline: only its checkpoints kept it alive.
    assert took > first_lifetime, (took, first_lifetime)
    lived = (hold["expire_time"] - hold["create_time"]).total_seconds()
    assert lived > first_lifetime
    assert (hold["state"], hold["captured"]) == ("captured", len(text))
    await books_balance(admin)


def _initial_ttl_seconds() -> int:
    from services.gateway.settings import GatewaySettings
    from tests.chaos.conftest import SETTINGS

    fields = {
        name.removeprefix("GATEWAY_").lower(): value
        for name, value in SETTINGS.items()
        if name.startswith("GATEWAY_")
    }
    return GatewaySettings.model_validate(fields).hold_ttl_seconds
