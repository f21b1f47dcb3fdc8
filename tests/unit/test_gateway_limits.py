"""Per-key limits at the gateway, over fakes: the 429s in both envelopes with Retry-After, the
x-ratelimit-* headers, speech slots given back however a request ends, the lease keeper's
batched renewals and releases, and GATEWAY_KEY_LIMITS off.

The fake auth counts requests per key and use in windows of its own, timed by the fake clock,
and takes a slot per admitted speech request (`mesh.auth.slots`, until released).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from typing import Any

import grpc
import httpx
import openai
import pytest
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common.status import rich_status
from services.gateway.clients import (
    GrpcAuthClient,
    KeyUse,
    LimitRefusal,
    Principal,
    UpstreamError,
)
from services.gateway.predictions import MAX_ACTIVE_PREDICTIONS
from services.gateway.rate_limit_headers import go_duration
from services.gateway.slots import RELEASE_BATCH, StreamSlots
from tests.support.gateway_fakes import (
    ACCOUNT,
    GOOD_KEY,
    FakeAuth,
    FakeClock,
    FakeKeyLimits,
    FakeMesh,
    api_key_header,
    auth_header,
    fake_key,
    fake_mesh,
    pieces_for,
    pieces_with,
    synth_error,
)
from tests.support.gateway_fixtures import eventually, live_gateway

SPEECH = "/v1/audio/speech"
CREATE = "/v1/prediction/"
HELLO = {"input": "hello world"}
PREDICTION = {"model": "kokoro-82m", "input": {"text": "Hello there."}}
RATE_HEADERS = (
    "x-ratelimit-limit-requests",
    "x-ratelimit-remaining-requests",
    "x-ratelimit-reset-requests",
)


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mesh(clock: FakeClock, gateway_settings: dict[str, object]) -> FakeMesh:
    return fake_mesh(clock, **gateway_settings)


def limit(mesh: FakeMesh, use: KeyUse, per_minute: int = 1000, at_once: int = 100) -> None:
    mesh.auth.limits[use] = FakeKeyLimits(per_minute, at_once)


def rate_headers(response: httpx.Response) -> dict[str, str]:
    return {name: response.headers[name] for name in RATE_HEADERS if name in response.headers}


async def all_given_back(mesh: FakeMesh) -> None:
    """Releases run after the response: wait for auth to have them all."""
    await eventually(lambda: not mesh.auth.slots and not mesh.slots.held())


# --- the 429s ---------------------------------------------------------------------------------


async def test_speech_over_its_requests_a_minute_is_a_429_with_retry_after(
    mesh: FakeMesh, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    limit(mesh, KeyUse.SPEECH, per_minute=2)
    for _ in range(2):
        assert (await client.post(SPEECH, json=HELLO, headers=auth_header())).status_code == 200
    clock.advance(47.6)

    refused = await client.post(SPEECH, json=HELLO, headers=auth_header())

    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "rate limit reached for requests: 2 per minute for this key; retry in 13 s"
    }
    assert refused.headers["retry-after"] == "13"  # 12.4 s rounded up
    assert refused.headers["x-should-retry"] == "true"
    assert rate_headers(refused) == {
        "x-ratelimit-limit-requests": "2",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "12.4s",
    }
    # Refused before anything was held or synthesized, and no slot kept.
    assert len(mesh.ledger.holds) == 2 and len(mesh.synth.requests) == 2
    await all_given_back(mesh)
    clock.advance(12.4)  # the window has ended
    assert (await client.post(SPEECH, json=HELLO, headers=auth_header())).status_code == 200


async def test_speech_over_its_concurrent_streams_is_a_429_until_one_ends(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    limit(mesh, KeyUse.SPEECH, at_once=1)
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    first = asyncio.ensure_future(client.post(SPEECH, json=HELLO, headers=auth_header()))
    await eventually(lambda: len(mesh.synth.requests) == 1)

    refused = await client.post(SPEECH, json=HELLO, headers=auth_header())

    assert refused.status_code == 429
    assert refused.json() == {
        "detail": "concurrency limit reached: 1 streams at once for this key; retry when one ends"
    }
    assert refused.headers["retry-after"] == "1"
    assert refused.headers["x-should-retry"] == "true"
    assert refused.headers["x-ratelimit-remaining-requests"] == "998"
    gate.set()
    assert (await first).status_code == 200
    await all_given_back(mesh)
    mesh.synth.script = pieces_for
    assert (await client.post(SPEECH, json=HELLO, headers=auth_header())).status_code == 200


async def test_a_prediction_over_its_creates_a_minute_is_a_429_in_the_listing_envelope(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    limit(mesh, KeyUse.PREDICTION_CREATE, per_minute=1)
    assert (await client.post(CREATE, json=PREDICTION, headers=api_key_header())).status_code == 200

    refused = await client.post(CREATE, json=PREDICTION, headers=api_key_header())

    assert refused.status_code == 429
    assert refused.json() == {
        "status": "error",
        "message": "rate limit reached for requests: 1 per minute for this key; retry in 60 s",
        "details": "rate_limited",
    }
    assert refused.headers["retry-after"] == "60"
    assert refused.headers["x-should-retry"] == "true"
    assert rate_headers(refused) == {
        "x-ratelimit-limit-requests": "1",
        "x-ratelimit-remaining-requests": "0",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert len(mesh.predictions.creates) == 1


async def test_a_prediction_over_its_queued_or_running_is_the_services_429(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    limit(mesh, KeyUse.PREDICTION_CREATE, at_once=1)
    mesh.predictions.concurrency_retry_after_seconds = "2.5"
    assert (await client.post(CREATE, json=PREDICTION, headers=api_key_header())).status_code == 200

    refused = await client.post(CREATE, json=PREDICTION, headers=api_key_header())

    assert refused.status_code == 429
    assert refused.json() == {
        "status": "error",
        "message": "concurrency limit reached: 1 predictions queued or running at once for "
        "this key; retry when one finishes",
        "details": "concurrency_limited",
    }
    assert refused.headers["retry-after"] == "3"
    assert refused.headers["x-should-retry"] == "true"
    assert refused.headers["x-ratelimit-remaining-requests"] == "998"
    # The admission's limit is what the service was asked to keep.
    assert mesh.predictions.max_actives == [1, 1]
    assert mesh.ledger.open_holds()[0].amount == len("Hello there.")  # the first one's only


async def test_the_official_client_waits_retry_after_and_retries(mesh: FakeMesh) -> None:
    limit(mesh, KeyUse.SPEECH, per_minute=1)
    mesh.auth.window_seconds = 0.5
    mesh.auth.clock = time.monotonic
    async with live_gateway(mesh) as gateway:
        client = openai.AsyncOpenAI(base_url=f"{gateway.url}/v1", api_key=GOOD_KEY, max_retries=2)
        await client.audio.speech.create(model="kokoro", voice="af_sky", input="one")
        started = time.monotonic()
        audio = await client.audio.speech.create(model="kokoro", voice="af_sky", input="two")
        await client.close()
    assert audio.content == b"mp3:0;mp3:1;mp3:2;"
    assert time.monotonic() - started >= 1.0  # Retry-After: 1, honoured
    assert len(mesh.auth.verified) == 3


# --- the x-ratelimit-* headers ------------------------------------------------------------------


async def test_headers_on_speech_200_and_the_errors_after_admission(
    mesh: FakeMesh, client: httpx.AsyncClient, clock: FakeClock
) -> None:
    limit(mesh, KeyUse.SPEECH, per_minute=10)
    ok = await client.post(SPEECH, json=HELLO, headers=auth_header())
    clock.advance(0.35)
    bad_voice = await client.post(SPEECH, json={**HELLO, "voice": "nobody"}, headers=auth_header())
    mesh.ledger.balances[ACCOUNT] = 3
    poor = await client.post(SPEECH, json=HELLO, headers=auth_header())

    assert (ok.status_code, bad_voice.status_code, poor.status_code) == (200, 400, 402)
    assert rate_headers(ok) == {
        "x-ratelimit-limit-requests": "10",
        "x-ratelimit-remaining-requests": "9",
        "x-ratelimit-reset-requests": "1m0s",
    }
    assert rate_headers(bad_voice)["x-ratelimit-remaining-requests"] == "8"
    assert rate_headers(bad_voice)["x-ratelimit-reset-requests"] == "59.65s"
    assert rate_headers(poor)["x-ratelimit-remaining-requests"] == "7"
    assert mesh.auth.uses == [(KeyUse.SPEECH, mesh.auth.uses[0][1])] * 3
    assert mesh.auth.uses[0][1].startswith("gw-")


async def test_no_headers_where_no_key_was_counted(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    unreadable = await client.post(SPEECH, content=b"{", headers=auth_header())
    no_key = await client.post(SPEECH, json=HELLO)
    bad_key = await client.post(SPEECH, json=HELLO, headers=auth_header(fake_key("z")))
    balance = await client.get("/v1/balance", headers=auth_header())

    assert [r.status_code for r in (unreadable, no_key, bad_key, balance)] == [400, 401, 401, 200]
    for response in (unreadable, no_key, bad_key, balance):
        assert rate_headers(response) == {}
    # Only the speech request with a readable body and a key was admitted under a use.
    assert mesh.auth.uses[0][0] is KeyUse.SPEECH
    assert mesh.auth.uses[1] == (None, "")


async def test_headers_on_prediction_create_200_400_and_402(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    ok = await client.post(CREATE, json=PREDICTION, headers=api_key_header())
    bad_voice = await client.post(
        CREATE,
        json={"model": "kokoro-82m", "input": {"text": "Hi.", "voice": "nobody"}},
        headers=api_key_header(),
    )
    mesh.ledger.balances[ACCOUNT] = 3
    poor = await client.post(CREATE, json=PREDICTION, headers=api_key_header())
    poll = await client.get(f"/v1/prediction/{ok.json()['predictionID']}", headers=auth_header())

    assert [r.status_code for r in (ok, bad_voice, poor, poll)] == [200, 400, 402, 200]
    assert [r.headers.get("x-ratelimit-remaining-requests") for r in (ok, bad_voice, poor)] == [
        "999",
        "998",
        "997",
    ]
    assert rate_headers(poll) == {}  # polls are not limited
    assert [use for use, _ in mesh.auth.uses] == [KeyUse.PREDICTION_CREATE] * 3 + [None]
    assert mesh.auth.uses[0][1] == ""  # only a stream takes a slot
    assert mesh.predictions.max_actives == [100, 100]


def test_resets_read_as_openai_writes_them() -> None:
    assert [go_duration(s) for s in (0, 0.012, 0.35, 1, 8.64, 59.4, 60, 86.4, 360, 3600)] == [
        "0s",
        "12ms",
        "350ms",
        "1s",
        "8.64s",
        "59.4s",
        "1m0s",
        "1m26.4s",
        "6m0s",
        "1h0m0s",
    ]


# --- speech slots go back however a request ends -------------------------------------------------


async def test_a_completed_stream_gives_its_slot_back(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    response = await client.post(SPEECH, json=HELLO, headers=auth_header())
    assert response.status_code == 200
    await all_given_back(mesh)
    [(use, holder)] = mesh.auth.uses
    [(released_by, slot_ids)] = mesh.auth.releases
    assert (use, released_by, slot_ids) == (KeyUse.SPEECH, holder, ["slot_1"])


async def test_a_client_hanging_up_gives_the_slot_back(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    mesh.synth.script = pieces_with(asyncio.Event(), after=1)  # then never
    async with http.stream("POST", SPEECH, json=HELLO, headers=auth_header()) as response:
        async for _ in response.aiter_raw():
            assert mesh.auth.streams_of() == 1
            break
    await all_given_back(mesh)
    assert mesh.synth.streams[0].cancelled


@pytest.mark.parametrize(
    ("failure", "status"),
    [
        ("synth", 502),
        ("voice", 400),
        ("credits", 402),
        ("in_progress", 409),
    ],
)
async def test_a_request_failing_before_it_streams_gives_the_slot_back_at_once(
    mesh: FakeMesh, client: httpx.AsyncClient, failure: str, status: int
) -> None:
    body: dict[str, Any] = dict(HELLO)
    headers = auth_header()
    if failure == "synth":
        mesh.synth.script = pieces_with(synth_error(), after=0)
    elif failure == "voice":
        body["voice"] = "nobody"
    elif failure == "credits":
        mesh.ledger.balances[ACCOUNT] = 3
    else:
        headers["Idempotency-Key"] = "k1"
        gate = asyncio.Event()
        mesh.synth.script = pieces_with(gate, after=1)
        running = asyncio.ensure_future(client.post(SPEECH, json=body, headers=headers))
        await eventually(lambda: len(mesh.synth.requests) == 1)

    response = await client.post(SPEECH, json=body, headers=headers)

    assert response.status_code == status
    # Given back as the answer went out; auth hears of it just after.
    still_held = sum(len(ids) for ids in mesh.slots.held().values())
    if failure == "in_progress":
        assert still_held == 1  # the running attempt's only
        await eventually(lambda: mesh.auth.streams_of() == 1)
        gate.set()
        await running
    else:
        assert still_held == 0
    await all_given_back(mesh)
    assert sum(len(ids) for _, ids in mesh.auth.releases) == len(mesh.auth.uses)


async def test_a_request_cancelled_before_it_streams_gives_the_slot_back(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.synth.script = pieces_with(asyncio.Event(), after=0)  # no first audio, ever
    request = asyncio.ensure_future(client.post(SPEECH, json=HELLO, headers=auth_header()))
    await eventually(lambda: len(mesh.synth.requests) == 1)
    request.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await request
    await all_given_back(mesh)
    assert mesh.ledger.open_holds() == []


async def test_a_stream_cut_by_shutdown_gives_its_slot_back(mesh: FakeMesh) -> None:
    mesh.synth.script = pieces_with(asyncio.Event(), after=1)  # never set
    async with live_gateway(mesh, grace=0.2) as gateway, httpx.AsyncClient() as http:
        request = http.build_request(
            "POST", f"{gateway.url}{SPEECH}", json=HELLO, headers=auth_header()
        )
        response = await http.send(request, stream=True)
        assert await response.aiter_raw().__anext__() == b"mp3:0;"
        gateway.server.should_exit = True
    await response.aclose()
    assert mesh.auth.slots == {}
    assert mesh.slots.held() == {}


async def test_limits_off_send_no_use_and_count_nothing() -> None:
    mesh = fake_mesh(key_limits=False)
    limit(mesh, KeyUse.SPEECH, per_minute=1, at_once=1)
    transport = httpx.ASGITransport(app=mesh.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        answers = [await client.post(SPEECH, json=HELLO, headers=auth_header()) for _ in range(3)]
        created = await client.post(CREATE, json=PREDICTION, headers=api_key_header())

    assert [r.status_code for r in answers] == [200, 200, 200]
    assert created.status_code == 200
    assert mesh.auth.uses == [(None, "")] * 4
    assert all(rate_headers(r) == {} for r in (*answers, created))
    assert mesh.predictions.max_actives == [MAX_ACTIVE_PREDICTIONS]
    assert mesh.auth.slots == {} and mesh.auth.releases == []


async def test_an_auth_without_admissions_limits_nothing(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.auth.answers_admissions = False
    response = await client.post(SPEECH, json=HELLO, headers=auth_header())
    created = await client.post(CREATE, json=PREDICTION, headers=api_key_header())
    assert (response.status_code, created.status_code) == (200, 200)
    assert rate_headers(response) == {} and rate_headers(created) == {}
    assert mesh.predictions.max_actives == [MAX_ACTIVE_PREDICTIONS]


# --- the lease keeper ---------------------------------------------------------------------------


async def test_one_renewal_per_interval_however_many_slots() -> None:
    auth = FakeAuth()
    auth.lease_seconds = 0.3  # renewals every 0.1 s
    slots = StreamSlots(auth)
    holder = slots.holder
    started = time.monotonic()
    taken = [slots.took(holder, f"slot_{n}", 0.3) for n in range(200)]

    await eventually(lambda: len(auth.renewals) >= 3)

    elapsed = time.monotonic() - started
    assert elapsed >= 0.3 * 0.9
    assert set(auth.renewals) == {holder}
    assert len(auth.renewals) <= elapsed / 0.1 + 1
    for slot in taken:
        slot.give_back()
    renewals = len(auth.renewals)
    await asyncio.sleep(0.25)
    assert len(auth.renewals) == renewals  # nothing held: nothing renewed


async def test_releases_go_in_batches_off_the_response_path() -> None:
    auth = FakeAuth()
    slots = StreamSlots(auth)
    holder = slots.holder
    taken = [slots.took(holder, f"slot_{n}", 30) for n in range(2 * RELEASE_BATCH + 5)]
    for slot in taken:
        slot.give_back()
        slot.give_back()  # twice is once
    assert auth.releases == []  # nothing waited for
    await eventually(lambda: sum(len(ids) for _, ids in auth.releases) == len(taken))
    assert [len(ids) for _, ids in auth.releases] == [RELEASE_BATCH, RELEASE_BATCH, 5]
    assert slots.held() == {}


async def test_a_failed_release_is_harmless_and_retires_its_holder(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.auth.release_failures = [grpc.StatusCode.UNAVAILABLE]
    first = await client.post(SPEECH, json=HELLO, headers=auth_header())
    await eventually(lambda: len(mesh.auth.releases) == 1)
    second = await client.post(SPEECH, json=HELLO, headers=auth_header())
    await eventually(lambda: len(mesh.auth.releases) == 2)

    assert (first.status_code, second.status_code) == (200, 200)
    (_, old), (_, new) = mesh.auth.uses
    # The unreleased slot stays at auth under a holder nobody renews any more: its lease ends it.
    assert old != new and old.rsplit("-", 1)[0] == new.rsplit("-", 1)[0]
    assert [slot.holder for slot in mesh.auth.slots.values()] == [old]
    assert mesh.slots.held() == {}


async def test_a_lost_admission_retires_the_holder(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.auth.failures = [grpc.StatusCode.DEADLINE_EXCEEDED]
    failed = await client.post(SPEECH, json=HELLO, headers=auth_header())
    ok = await client.post(SPEECH, json=HELLO, headers=auth_header())
    assert (failed.status_code, ok.status_code) == (504, 200)
    (_, lost), (_, next_holder) = mesh.auth.uses
    assert lost != next_holder


async def test_a_busy_holder_is_retired_once_old_enough() -> None:
    auth = FakeAuth()
    slots = StreamSlots(auth, min_generation_seconds=0.05)
    first = slots.holder
    live = slots.took(first, "slot_1", 30)
    slots.suspect(first)
    assert slots.holder == first  # retiring it now would cost a renewal per stream
    await asyncio.sleep(0.06)
    second = slots.holder
    assert second != first
    slots.took(second, "slot_2", 30)
    # Both are renewed while they hold a stream; the retired one only until its stream ends.
    assert set(slots.held()) == {first, second}
    live.give_back()
    assert set(slots.held()) == {second}
    await slots.close()


async def test_close_gives_back_what_is_still_held_and_stops_renewing() -> None:
    auth = FakeAuth()
    auth.lease_seconds = 0.15
    slots = StreamSlots(auth)
    holder = slots.holder
    for n in range(3):
        slots.took(holder, f"slot_{n}", 0.15)
    await slots.close()
    [(released_by, slot_ids)] = auth.releases
    assert (released_by, sorted(slot_ids)) == (holder, ["slot_0", "slot_1", "slot_2"])
    renewals = len(auth.renewals)
    await asyncio.sleep(0.12)
    assert len(auth.renewals) == renewals


async def test_a_failed_renewal_is_tried_again_next_interval() -> None:
    auth = FakeAuth()
    auth.renew_failures = [grpc.StatusCode.UNAVAILABLE]
    slots = StreamSlots(auth)
    slot = slots.took(slots.holder, "slot_1", 0.15)
    await eventually(lambda: len(auth.renewals) >= 2, timeout=2)
    slot.give_back()
    await slots.close()


# --- the gRPC client --------------------------------------------------------------------------


class Auth(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self) -> None:
        self.requests: list[object] = []

    async def VerifyKey(
        self, request: auth_pb2.VerifyKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.VerifyKeyResponse:
        self.requests.append(request)
        if request.key == "bad":
            await context.abort_with_status(
                rich_status(grpc.StatusCode.UNAUTHENTICATED, "invalid", reason="KEY_INVALID")
            )
        response = auth_pb2.VerifyKeyResponse(account_id="acct_1", key_id="key_1")
        if request.use == auth_pb2.KEY_USE_SPEECH:
            admission = response.admission
            admission.admitted = False
            admission.refusal = auth_pb2.LIMIT_REFUSAL_REQUESTS
            admission.request_limit = 600
            admission.requests_remaining = 0
            admission.requests_reset.FromMilliseconds(12_400)
            admission.retry_after.FromMilliseconds(12_400)
            admission.concurrency_limit = 8
        elif request.use == auth_pb2.KEY_USE_PREDICTION_CREATE:
            response.admission.admitted = True
            response.admission.request_limit = 100
            response.admission.requests_remaining = 99
            response.admission.concurrency_limit = 10
            response.admission.slot_id = "slot_9"
            response.admission.lease.FromSeconds(30)
        return response

    async def ReleaseSlots(
        self, request: auth_pb2.ReleaseSlotsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ReleaseSlotsResponse:
        self.requests.append(request)
        return auth_pb2.ReleaseSlotsResponse(released=len(request.slot_ids))

    async def RenewSlots(
        self, request: auth_pb2.RenewSlotsRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RenewSlotsResponse:
        self.requests.append(request)
        response = auth_pb2.RenewSlotsResponse(renewed=4)
        response.lease.FromMilliseconds(30_500)
        return response


@pytest.fixture
async def served_auth() -> AsyncIterator[tuple[Auth, GrpcAuthClient]]:
    service = Auth()
    server = grpc.aio.server()
    auth_pb2_grpc.add_AuthServiceServicer_to_server(service, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield service, GrpcAuthClient(channel, timeout=5, ready_timeout=1)
    finally:
        await channel.close()
        await server.stop(None)


async def test_the_grpc_auth_client_sends_the_use_and_reads_the_admission(
    served_auth: tuple[Auth, GrpcAuthClient],
) -> None:
    service, client = served_auth

    plain = await client.verify_key("good")
    refused = await client.verify_key("good", use=KeyUse.SPEECH, holder="gw-1")
    admitted = await client.verify_key("good", use=KeyUse.PREDICTION_CREATE)
    released = await client.release_slots("gw-1", ["slot_1", "slot_2"])
    renewal = await client.renew_slots("gw-1")
    with pytest.raises(UpstreamError) as rejected:
        await client.verify_key("bad", use=KeyUse.SPEECH, holder="gw-1")

    first, second, third, release, renew, _ = service.requests
    assert (first.use, first.holder) == (auth_pb2.KEY_USE_UNSPECIFIED, "")  # type: ignore[attr-defined]
    assert (second.use, second.holder) == (auth_pb2.KEY_USE_SPEECH, "gw-1")  # type: ignore[attr-defined]
    assert third.use == auth_pb2.KEY_USE_PREDICTION_CREATE  # type: ignore[attr-defined]
    assert (release.holder, list(release.slot_ids)) == ("gw-1", ["slot_1", "slot_2"])  # type: ignore[attr-defined]
    assert renew.holder == "gw-1"  # type: ignore[attr-defined]
    assert plain.principal == Principal("acct_1", "key_1") and plain.admission is None
    assert refused.admission is not None
    assert (refused.admission.admitted, refused.admission.refusal) == (
        False,
        LimitRefusal.REQUESTS,
    )
    assert (refused.admission.requests_reset, refused.admission.retry_after) == (12.4, 12.4)
    assert refused.admission.concurrency_limit == 8
    assert admitted.admission is not None and admitted.admission.refusal is None
    assert (admitted.admission.slot_id, admitted.admission.lease) == ("slot_9", 30.0)
    assert released == 2
    assert (renewal.renewed, renewal.lease) == (4, 30.5)
    assert rejected.value.reason == "KEY_INVALID"
