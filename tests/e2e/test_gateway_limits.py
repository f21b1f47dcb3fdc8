"""Per-key limits against the mesh as real processes, with two gateway replicas sharing them
(docs/decisions/0015): the 11th concurrent prediction and the 101st create within a minute are
429s with OpenAI's headers, whichever replica they reach; a speech key at its concurrency limit
gets 429 until a stream ends; the `openai` client backs off and then succeeds; and a replica
killed with slots held gives them back on their own when their lease runs out.

The session's mesh leases slots for SLOT_LEASE_SECONDS (conftest.py), not the default 30 s, so
the kill test waits seconds. Each test works on an account of its own, with the limit it probes
lowered (or raised) for that account by the operator, as a customer's would be.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator, Iterator

import httpx
import openai
import pytest

from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from services.cli.processes import ServiceProcess
from tests.e2e.conftest import SLOT_LEASE_SECONDS, Customer, NewCustomer, decode

pytestmark = [pytest.mark.model, pytest.mark.slow]

RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)
# Long enough that a prediction is still queued or running when the test looks: cancelled after.
LONG_TEXT = " ".join(f"Sentence {n} keeps the worker busy for a while." for n in range(40))
SHORT_SPEECH = {"input": "One short sentence for the stream.", "voice": "af_sky"}
# A stream that lasts: the model is still at it (several chunks to go) when the test looks, so
# the gateway cannot have finished it into the socket's buffers.
HELD_SPEECH = {
    "input": " ".join(f"Sentence {n} keeps this stream open a little longer." for n in range(6)),
    "voice": "af_sky",
}


@pytest.fixture(scope="module")
def second_gateway(mesh: LocalMesh) -> Iterator[ServiceProcess]:
    """Another gateway replica: its own process and holder id, the mesh's auth and database."""
    replica = mesh.replica("gateway").start(timeout=90)
    yield replica
    replica.stop()


@pytest.fixture
async def replicas(
    base_url: str, second_gateway: ServiceProcess
) -> AsyncIterator[tuple[httpx.AsyncClient, httpx.AsyncClient]]:
    async with (
        httpx.AsyncClient(base_url=base_url, timeout=120) as first,
        httpx.AsyncClient(base_url=f"http://{second_gateway.address}/v1", timeout=120) as second,
    ):
        yield first, second


def assert_rate_headers(response: httpx.Response, limit: int) -> None:
    for header in RATE_HEADERS:
        assert header in response.headers, (header, dict(response.headers))
    assert response.headers["x-ratelimit-limit-requests"] == str(limit)
    remaining = int(response.headers["x-ratelimit-remaining-requests"])
    assert 0 <= remaining <= limit


def assert_listing_429(response: httpx.Response, details: str) -> None:
    assert response.status_code == 429, response.text
    body = response.json()
    assert body["status"] == "error" and body["details"] == details, body
    assert body["message"]
    assert 1 <= int(response.headers["retry-after"]) <= 60
    assert response.headers["x-should-retry"] == "true"


async def create_prediction(http: httpx.AsyncClient, customer: Customer) -> httpx.Response:
    return await http.post(
        "/prediction/",
        headers={"X-API-Key": customer.key},
        json={"model": "kokoro-82m", "input": {"text": LONG_TEXT}},
    )


async def cancel(http: httpx.AsyncClient, customer: Customer, prediction_id: str) -> None:
    answer = await http.post(
        f"/prediction/{prediction_id}/cancel", headers={"X-API-Key": customer.key}
    )
    assert answer.status_code == 200, answer.text


async def test_the_eleventh_concurrent_prediction_is_429_whichever_replica(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=100_000)
    created: list[str] = []
    try:
        for n in range(10):  # alternating replicas: the count is the key's, not a replica's
            answer = await create_prediction(replicas[n % 2], customer)
            assert answer.status_code == 200, answer.text
            assert_rate_headers(answer, 100)
            assert answer.headers["x-ratelimit-remaining-requests"] == str(100 - n - 1)
            created.append(answer.json()["predictionID"])

        for http in replicas:
            refused = await create_prediction(http, customer)
            assert_listing_429(refused, "concurrency_limited")
            assert_rate_headers(refused, 100)

        # A cancelled prediction frees its place at once.
        await cancel(replicas[0], customer, created.pop())
        again = await create_prediction(replicas[1], customer)
        assert again.status_code == 200, again.text
        created.append(again.json()["predictionID"])
    finally:
        for prediction_id in created:
            await cancel(replicas[0], customer, prediction_id)


async def test_the_101st_create_within_a_minute_is_429_whichever_replica(
    replicas: tuple[httpx.AsyncClient, httpx.AsyncClient], new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=1_000_000)
    started = time.monotonic()
    for n in range(100):  # cancelled as they go, so the concurrency limit is never the one hit
        http = replicas[n % 2]
        answer = await create_prediction(http, customer)
        assert answer.status_code == 200, (n, answer.text)
        await cancel(http, customer, answer.json()["predictionID"])
    assert time.monotonic() - started < 55, "too slow to fall within one window"

    for http in replicas:
        refused = await create_prediction(http, customer)
        assert_listing_429(refused, "rate_limited")
        assert_rate_headers(refused, 100)
        assert refused.headers["x-ratelimit-remaining-requests"] == "0"
        # The window opened at the first create: it ends within a minute of it.
        assert 1 <= int(refused.headers["retry-after"]) <= 60


async def test_a_speech_key_at_its_limit_is_429_until_a_stream_ends(
    http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=10_000)
    await admin.set_account_limits(customer.account_id, speech_concurrent_streams=1)

    async with http.stream(
        "POST", "/audio/speech", headers=customer.headers, json=HELD_SPEECH
    ) as held:
        assert held.status_code == 200
        assert_rate_headers(held, 600)
        # One iterator for the whole body: an abandoned one closes the response when collected.
        pieces = held.aiter_raw()
        first = await pieces.__anext__()
        refused = await http.post("/audio/speech", headers=customer.headers, json=SHORT_SPEECH)
        assert refused.status_code == 429, refused.headers
        assert "concurrency" in refused.json()["detail"]
        assert 1 <= int(refused.headers["retry-after"]) <= 5
        assert_rate_headers(refused, 600)
        rest = b"".join([first, *[piece async for piece in pieces]])
    assert decode(rest).seconds > 10

    # The slot goes back just after the response: within moments, not a lease.
    deadline = time.monotonic() + 5
    while (
        again := await http.post("/audio/speech", headers=customer.headers, json=SHORT_SPEECH)
    ).status_code == 429:
        assert time.monotonic() < deadline, "the ended stream's slot did not come back"
        await asyncio.sleep(0.2)
    assert again.status_code == 200 and decode(again.content).seconds > 1


async def test_the_openai_client_backs_off_and_then_succeeds(
    base_url: str, http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=10_000)
    await admin.set_account_limits(customer.account_id, speech_concurrent_streams=1)
    statuses: list[int] = []
    seen_429 = asyncio.Event()

    async def record(response: httpx.Response) -> None:
        statuses.append(response.status_code)
        if response.status_code == 429:
            seen_429.set()

    async with httpx.AsyncClient(event_hooks={"response": [record]}) as transport:
        client = openai.AsyncOpenAI(
            base_url=base_url, api_key=customer.key, http_client=transport, max_retries=5
        )
        async with http.stream(
            "POST", "/audio/speech", headers=customer.headers, json=HELD_SPEECH
        ) as held:
            assert held.status_code == 200
            speech = asyncio.create_task(
                client.audio.speech.create(model="tts-1", voice="alloy", input="Backed off.")
            )
            await asyncio.wait_for(seen_429.wait(), 60)
        # Hanging up ends the held stream within a chunk; the client, waiting out Retry-After (1 s)
        # between tries, then finds the slot free.
        audio = await asyncio.wait_for(speech, 120)
    assert statuses[0] == 429 and statuses[-1] == 200, statuses
    assert decode(audio.content).seconds > 0.3


async def test_a_killed_replica_gives_its_slots_back_within_the_lease(
    mesh: LocalMesh, http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=10_000)
    await admin.set_account_limits(customer.account_id, speech_concurrent_streams=1)
    doomed = mesh.replica("gateway").start(timeout=90)
    killed = None
    try:
        async with (
            httpx.AsyncClient(base_url=f"http://{doomed.address}/v1", timeout=120) as client,
            client.stream(
                "POST", "/audio/speech", headers=customer.headers, json=HELD_SPEECH
            ) as held,
        ):
            assert held.status_code == 200
            pieces = held.aiter_raw()
            await pieces.__anext__()
            assert doomed.process is not None
            doomed.process.kill()  # SIGKILL: no release, no drain; the lease is all that is left
            killed = time.monotonic()
            doomed.process.wait()
            with pytest.raises(httpx.HTTPError):  # the connection died with the replica
                async for _ in pieces:
                    pass
    finally:
        doomed.stop()
    assert killed is not None

    # The dead replica's slot is still counted, on the surviving replica too…
    refused = await http.post("/audio/speech", headers=customer.headers, json=SHORT_SPEECH)
    assert refused.status_code == 429, refused.headers
    # …until its lease runs out (one renewal may have just extended it).
    while (
        answer := await http.post("/audio/speech", headers=customer.headers, json=SHORT_SPEECH)
    ).status_code == 429:
        assert time.monotonic() - killed < SLOT_LEASE_SECONDS + 5, "the slot never came back"
        await asyncio.sleep(0.25)
    assert answer.status_code == 200, answer.headers
    assert time.monotonic() - killed >= SLOT_LEASE_SECONDS * 2 / 3 - 0.5
