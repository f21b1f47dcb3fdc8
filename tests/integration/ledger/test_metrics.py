"""The ledger's metrics, scraped from its metrics port as Prometheus would: each reserve,
capture, release and expiry counted once, with credit totals that agree with the journal, and
repeats that count nothing new."""

from __future__ import annotations

import asyncio
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from kokoropay.ledger.v1 import ledger_pb2 as E

from services.cli.processes import ServiceProcess
from tests.support.ledger import Ledger, ledger_process
from tests.support.metrics import Exposition

SERVICE = "kokoropay.ledger.v1.LedgerService"


@pytest.fixture(scope="module")
def ledger_service(ledger_database_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    # A quick sweeper, so the open holds gauge follows the tests.
    process = ledger_process(
        ledger_database_url, log_dir, LEDGER_SWEEP_INTERVAL_SECONDS="0.2"
    ).start()
    yield process
    process.stop()


@pytest.fixture
def scrape(ledger_service: ServiceProcess):  # type: ignore[no-untyped-def]
    async def scrape() -> Exposition:
        def get() -> str:
            with urllib.request.urlopen(ledger_service.metrics_url, timeout=5) as reply:
                assert reply.headers["Content-Type"].startswith("text/plain")
                return str(reply.read().decode())

        return Exposition.parse(await asyncio.to_thread(get))

    return scrape


def _journal_totals(entries: list[E.Entry], hold_ids: set[str]) -> tuple[int, int]:
    """Credits the holds' journal entries captured and returned."""
    mine = [e for e in entries if e.hold_id in hold_ids]
    captured = sum(e.amount for e in mine if e.kind == E.ENTRY_KIND_CAPTURE)
    returned = sum(e.amount for e in mine if e.kind in (E.ENTRY_KIND_RELEASE, E.ENTRY_KIND_EXPIRE))
    return captured, returned


async def test_reserves_are_counted_by_outcome_and_a_repeat_is_no_second_hold(
    ledger: Ledger, scrape
) -> None:
    account = await ledger.open_account(credits=100)
    before = await scrape()
    key = uuid.uuid4().hex
    await ledger.reserve(account, 30, key=key)
    await ledger.reserve(account, 30, key=key)  # the same Reserve again
    with pytest.raises(Exception, match="insufficient"):
        await ledger.reserve(account, 1000)
    after = await scrape()
    reserves = "kokoropay_ledger_reserves_total"
    assert after.delta(before, reserves, outcome="held") == 1
    assert after.delta(before, reserves, outcome="replayed") == 1
    assert after.delta(before, reserves, outcome="insufficient") == 1
    assert after.delta(before, reserves) == 3


async def test_a_keyed_request_counts_its_attempts_replays_and_refusals(
    ledger: Ledger, scrape
) -> None:
    account = await ledger.open_account(credits=100)
    keyed = E.KeyedRequest(key=uuid.uuid4().hex, fingerprint="f", price=10)

    async def attempt(attempt_key: str) -> E.ReserveResponse:
        request = E.ReserveRequest(
            account_id=account, amount=10, idempotency_key=attempt_key, keyed=keyed
        )
        return await ledger.stub.Reserve(request)

    before = await scrape()
    first = await attempt("attempt-1")
    await attempt("attempt-1")  # the same attempt asked again
    with pytest.raises(Exception, match="in progress"):
        await attempt("attempt-2")
    await ledger.stub.Capture(E.CaptureRequest(hold_id=first.hold.id))
    assert (await attempt("attempt-3")).keyed.replay  # paid: served again for free
    after = await scrape()
    reserves = "kokoropay_ledger_reserves_total"
    for outcome in ("held", "replayed", "refused", "free_replay"):
        assert after.delta(before, reserves, outcome=outcome) == 1, outcome
    assert after.delta(before, reserves) == 4


async def test_captures_and_releases_are_counted_once_with_their_credits(
    ledger: Ledger, scrape
) -> None:
    account = await ledger.open_account(credits=1000)
    full, partial, released = [await ledger.reserve(account, n) for n in (100, 100, 50)]
    before = await scrape()
    for _ in range(2):  # each repeat answers the first and writes nothing
        await ledger.stub.Capture(E.CaptureRequest(hold_id=full.id))
        await ledger.stub.Capture(E.CaptureRequest(hold_id=partial.id, amount=40))
        await ledger.stub.Release(E.ReleaseRequest(hold_id=released.id))
    after = await scrape()

    assert after.delta(before, "kokoropay_ledger_captures_total", kind="full") == 1
    assert after.delta(before, "kokoropay_ledger_captures_total", kind="partial") == 1
    assert after.delta(before, "kokoropay_ledger_releases_total") == 1
    captured = "kokoropay_ledger_credits_captured_total"
    assert after.delta(before, captured, kind="full") == 100
    assert after.delta(before, captured, kind="partial") == 40
    returned = "kokoropay_ledger_credits_released_total"
    assert after.delta(before, returned, via="capture") == 60
    assert after.delta(before, returned, via="release") == 50
    assert after.delta(before, returned) == 110
    # Served through the shared server: its gRPC metrics too, with the ledger's method names.
    capture = {"grpc_service": SERVICE, "grpc_method": "Capture", "grpc_code": "OK"}
    assert after.delta(before, "grpc_server_handled_total", **capture) == 4


async def test_an_expiry_is_counted_once_and_captures_its_checkpoint(
    ledger: Ledger, scrape
) -> None:
    account = await ledger.open_account(credits=100)
    bare = await ledger.reserve(account, 30, ttl_seconds=1)
    checkpointed = await ledger.reserve(account, 20, ttl_seconds=1)
    await ledger.stub.Checkpoint(E.CheckpointRequest(hold_id=checkpointed.id, delivered=5))
    before = await scrape()
    await asyncio.sleep(1.2)
    # Whoever expires them (the sweeper, this read), each hold expires once.
    assert (await ledger.balance(account)).balance == 100 - 5
    await ledger.balance(account)
    after = await scrape()

    assert after.delta(before, "kokoropay_ledger_expiries_total") == 2
    assert after.delta(before, "kokoropay_ledger_captures_total", kind="expiry") == 1
    assert after.delta(before, "kokoropay_ledger_credits_captured_total", kind="expiry") == 5
    assert after.delta(before, "kokoropay_ledger_credits_released_total", via="expiry") == 45
    captured, returned = _journal_totals(await ledger.entries(account), {bare.id, checkpointed.id})
    assert (captured, returned) == (5, 45)


async def test_racing_closes_count_exactly_what_the_journal_says(ledger: Ledger, scrape) -> None:
    account = await ledger.open_account(credits=1000)
    holds = [await ledger.reserve(account, 10, ttl_seconds=1) for _ in range(8)]
    for hold in holds[::2]:
        await ledger.stub.Checkpoint(E.CheckpointRequest(hold_id=hold.id, delivered=4))
    before = await scrape()
    await asyncio.sleep(0.9)
    # Capture, Release and expiry race for each hold; one of them closes it.
    calls = [
        call
        for hold in holds
        for call in (
            ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=6)),
            ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id)),
        )
    ]
    await asyncio.sleep(0.15)
    await asyncio.gather(*calls, return_exceptions=True)
    await asyncio.sleep(0.3)
    await ledger.balance(account)
    after = await scrape()

    captured, returned = _journal_totals(await ledger.entries(account), {h.id for h in holds})
    assert after.delta(before, "kokoropay_ledger_credits_captured_total") == captured
    assert after.delta(before, "kokoropay_ledger_credits_released_total") == returned
    closes = (
        after.delta(before, "kokoropay_ledger_captures_total", kind="partial")
        + after.delta(before, "kokoropay_ledger_releases_total")
        + after.delta(before, "kokoropay_ledger_expiries_total")
    )
    assert closes == len(holds)


async def test_the_open_holds_gauge_follows_the_sweeper(ledger: Ledger, scrape) -> None:
    async def settled(expected: float | None = None) -> float:
        for _ in range(50):
            await asyncio.sleep(0.1)
            value = (await scrape()).total("kokoropay_ledger_open_holds")
            if expected is None or value == expected:
                return value
        return value

    start = await settled()
    account = await ledger.open_account(credits=100)
    holds = [await ledger.reserve(account, 10) for _ in range(3)]
    assert await settled(start + 3) == start + 3
    for hold in holds:
        await ledger.stub.Release(E.ReleaseRequest(hold_id=hold.id))
    assert await settled(start) == start


def test_the_metrics_are_on_their_own_port_not_the_service_port(
    ledger_service: ServiceProcess,
) -> None:
    with urllib.request.urlopen(ledger_service.metrics_url, timeout=5) as reply:
        exposition = Exposition.parse(reply.read().decode())
    # Every declared method is there from the start, at zero or more.
    assert exposition.has("grpc_server_started_total", grpc_method="Verify")
    # The service port speaks gRPC over mutual TLS only: a plain HTTP request gets nothing.
    with pytest.raises(OSError):
        urllib.request.urlopen(f"http://{ledger_service.address}/metrics", timeout=5)
