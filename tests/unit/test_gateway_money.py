"""The money path of POST /v1/audio/speech against in-memory auth, ledger and synth."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Mapping

import grpc
import httpx
import pytest

from services.gateway.clients import HoldState, UsageLabels
from tests.support.gateway_fakes import (
    ACCOUNT,
    FakeMesh,
    Step,
    auth_header,
    pieces_for,
    pieces_with,
    synth_error,
)
from tests.support.gateway_fixtures import sell

SPEECH = "/v1/audio/speech"


async def speak(
    client: httpx.AsyncClient, body: Mapping[str, object], **headers: str
) -> tuple[int, bytes]:
    response = await client.post(SPEECH, json=body, headers={**auth_header(), **headers})
    return response.status_code, response.content


def reserve_keys(mesh: FakeMesh) -> list[str]:
    return [call[3] for call in mesh.ledger.calls if call[0] == "reserve"]


async def test_charge_is_the_input_length_in_code_points(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        SPEECH, json={"input": "héllo 👋", "voice": "af_sky"}, headers=auth_header()
    )
    assert response.status_code == 200
    assert response.headers["x-billed-characters"] == "7"
    assert mesh.ledger.balance_of() == 1000 - 7
    assert mesh.ledger.captured() == 7
    reserve = [call for call in mesh.ledger.calls if call[0] == "reserve"]
    assert [call[2] for call in reserve] == ["7"]
    assert mesh.ledger.calls[-1][0] == "capture"


@pytest.mark.parametrize(
    "balances", [{ACCOUNT: 6}, {}], ids=["too-few-credits", "account-not-opened-yet"]
)
async def test_without_the_credits_it_is_402_and_leaves_no_hold(
    mesh: FakeMesh, client: httpx.AsyncClient, balances: dict[str, int]
) -> None:
    mesh.ledger.balances = dict(balances)
    response = await client.post(SPEECH, json={"input": "héllo 👋"}, headers=auth_header())
    assert response.status_code == 402
    detail = response.json()["detail"]
    assert detail.startswith("Insufficient credits — top up your balance")
    assert "7 credits" in detail
    assert response.headers["x-should-retry"] == "false"
    assert mesh.ledger.balances == balances
    assert mesh.ledger.holds == {}
    assert mesh.synth.requests == []


async def test_unlimited_account_is_never_refused_and_is_journaled(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.ledger.balances[ACCOUNT] = 0
    mesh.ledger.unlimited.add(ACCOUNT)
    status, _ = await speak(client, {"input": "hello there"})
    assert status == 200
    assert mesh.ledger.captured() == 11


@pytest.mark.parametrize("gateway_settings", [{"first_chunk_timeout_seconds": 0.05}])
@pytest.mark.parametrize(
    ("failure", "status", "detail", "retry"),
    [
        # Refunded, so retrying is safe: the openai client may (and does) try again.
        (lambda: synth_error(grpc.StatusCode.UNAVAILABLE), 502, "refunded", "true"),
        (
            lambda: synth_error(
                grpc.StatusCode.INVALID_ARGUMENT, "voice speaks Hindi, not installed"
            ),
            400,
            "Hindi",
            "false",
        ),
        (asyncio.Event, 502, "did not start in time", "true"),  # never set: no first piece
    ],
    ids=["synth-failed", "synth-refused-the-input", "first-piece-timed-out"],
)
async def test_a_failure_before_the_first_piece_is_answered_and_refunded(
    mesh: FakeMesh,
    client: httpx.AsyncClient,
    failure: Callable[[], Step],
    status: int,
    detail: str,
    retry: str,
) -> None:
    mesh.synth.script = lambda request: [failure()]
    response = await client.post(SPEECH, json={"input": "hello"}, headers=auth_header())
    assert response.status_code == status
    assert detail in response.json()["detail"]
    assert response.headers["x-should-retry"] == retry
    assert mesh.ledger.balance_of() == 1000
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]
    assert mesh.synth.streams[0].cancelled


@pytest.mark.parametrize("catalog_cached", [False, True], ids=["cold", "catalog-cached"])
async def test_synth_warming_up_is_a_503_with_retry_after_and_costs_nothing(
    mesh: FakeMesh, client: httpx.AsyncClient, catalog_cached: bool
) -> None:
    if catalog_cached:  # the catalog passes; Synthesize itself says it is not serving
        await speak(client, {"input": "warm"})
    balance = mesh.ledger.balance_of()
    mesh.synth.warming_up = True

    response = await client.post(SPEECH, json={"input": "hello"}, headers=auth_header())

    assert response.status_code == 503
    assert response.headers["retry-after"] == "5"
    assert response.headers["x-should-retry"] == "true"
    assert "not serving yet" in response.json()["detail"]
    assert mesh.ledger.balance_of() == balance
    assert all(h.state != HoldState.HELD for h in mesh.ledger.holds.values())


async def test_synth_error_after_the_first_byte_refunds(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.synth.script = pieces_with(synth_error(), after=1)
    # The in-process transport re-raises what cuts the connection under a real server.
    with pytest.raises(Exception, match="boom"):
        await speak(client, {"input": "hello world"})
    assert mesh.ledger.balance_of() == 1000
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]


async def test_idempotency_key_reused_charges_once_then_replays_twice_then_409(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    body = {"input": "hello world", "voice": "af_sky"}
    first = await speak(client, body, **{"Idempotency-Key": "order-42"})
    replays = [await speak(client, body, **{"Idempotency-Key": "order-42"}) for _ in range(2)]
    third = await speak(client, body, **{"Idempotency-Key": "order-42"})
    assert [first[0], *(r[0] for r in replays)] == [200, 200, 200]
    assert all(r[1] == first[1] for r in replays)
    assert third[0] == 409 and b"already completed" in third[1]
    assert mesh.ledger.balance_of() == 1000 - 11
    assert len(mesh.synth.requests) == 3  # served again, not charged again
    assert len(mesh.ledger.holds) == 1


@pytest.mark.parametrize(
    ("second", "differs"),
    [
        ({"input": "other words"}, "input"),
        ({"input": "hello world", "voice": "am_michael"}, "voice"),
        ({"input": "hello world", "speed": 1.5}, "speed"),
        ({"input": "hello world", "response_format": "wav"}, "response_format"),
        ({"input": "hello world", "stream_format": "sse"}, "stream_format"),
    ],
)
async def test_idempotency_key_on_another_request_is_400_naming_the_field(
    mesh: FakeMesh, client: httpx.AsyncClient, second: dict[str, object], differs: str
) -> None:
    await speak(client, {"input": "hello world"}, **{"Idempotency-Key": "k"})
    status, content = await speak(client, second, **{"Idempotency-Key": "k"})
    assert status == 400
    assert f"differs in: {differs}".encode() in content
    assert mesh.ledger.balance_of() == 1000 - 11


async def test_the_same_request_in_other_words_is_the_same_request(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    # A blend alias and the blend it names, reweighted; a model alias and its id.
    first = {"input": "hi", "voice": "af", "model": "kokoro"}
    second = {"input": "hi", "voice": "af_sarah(2)+af_bella(2)", "model": "tts-1"}
    await speak(client, first, **{"Idempotency-Key": "k"})
    status, _ = await speak(client, second, **{"Idempotency-Key": "k"})
    assert status == 200
    assert mesh.ledger.balance_of() == 1000 - 2


async def test_retry_after_a_refund_is_charged_once(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.synth.script = lambda request: [synth_error()]
    failed = await speak(client, {"input": "hello"}, **{"Idempotency-Key": "k"})
    mesh.synth.script = pieces_for
    retried = await speak(client, {"input": "hello"}, **{"Idempotency-Key": "k"})
    assert (failed[0], retried[0]) == (502, 200)
    assert mesh.ledger.balance_of() == 1000 - 5
    assert mesh.ledger.captured() == 5


async def test_without_idempotency_key_each_request_is_charged(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    for _ in range(2):
        await speak(client, {"input": "hello"}, **{"x-request-id": "same-id"})
    assert mesh.ledger.balance_of() == 1000 - 10
    keys = reserve_keys(mesh)
    assert len(set(keys)) == 2
    assert all(key.startswith("req:same-id:") for key in keys)


async def test_ledger_key_is_the_generated_request_id(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    response = await client.post(SPEECH, json={"input": "hi"}, headers=auth_header())
    assert reserve_keys(mesh) == [f"req:{response.headers['x-request-id']}"]


async def test_an_ambiguous_reserve_failure_is_retried_with_the_same_key(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.ledger.reserve_failures = [grpc.StatusCode.UNAVAILABLE]
    status, _ = await speak(client, {"input": "hello"})
    assert status == 200
    keys = reserve_keys(mesh)
    assert len(keys) == 2 and keys[0] == keys[1]


async def test_ledger_down_is_503_and_nothing_synthesized(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.ledger.reserve_failures = [grpc.StatusCode.UNAVAILABLE] * 2
    status, _ = await speak(client, {"input": "hello"})
    assert status == 503
    assert mesh.synth.requests == []


async def test_a_lapsed_hold_is_charged_anew_at_the_end(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.ledger.expire_before_capture = True
    status, _ = await speak(client, {"input": "hello"})
    assert status == 200
    assert mesh.ledger.balance_of() == 1000 - 5
    assert mesh.ledger.captured() == 5


@pytest.mark.parametrize("headers", [{}, {"Idempotency-Key": "k"}], ids=["plain", "keyed"])
@pytest.mark.parametrize("lapses", [False, True], ids=["captured", "charged-anew"])
async def test_every_hold_of_a_request_is_labelled_with_its_key_voice_format_and_model(
    mesh: FakeMesh, client: httpx.AsyncClient, headers: dict[str, str], lapses: bool
) -> None:
    mesh.ledger.expire_before_capture = lapses
    body = {"input": "hi", "voice": " af_sarah(2)+af_bella(2)", "model": "tts-1"}
    status, _ = await speak(client, {**body, "response_format": "wav"}, **headers)

    assert status == 200
    # The voice and model as requested (not resolved), the key that auth verified.
    labels = UsageLabels("key_good", "af_sarah(2)+af_bella(2)", "wav", "tts-1")
    assert [h.labels for h in mesh.ledger.holds.values()] == [labels] * (2 if lapses else 1)


async def test_requests_beyond_the_balance_are_402(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    # The fake ledger cannot race; overspending under concurrency is the ledger's own test
    # (tests/integration/ledger/test_concurrency.py). This checks the 402 mapping.
    mesh.ledger.balances[ACCOUNT] = 55
    responses = await asyncio.gather(
        *(
            client.post(SPEECH, json={"input": "0123456789"}, headers=auth_header())
            for _ in range(20)
        )
    )
    statuses = sorted(r.status_code for r in responses)
    assert statuses == [200] * 5 + [402] * 15
    assert mesh.ledger.balance_of() == 5


async def test_a_request_cancelled_while_waiting_for_audio_is_refunded(mesh: FakeMesh) -> None:
    never = asyncio.Event()
    mesh.synth.script = lambda request: [never]
    selling = asyncio.ensure_future(sell(mesh, "hello"))
    while not mesh.synth.streams:
        await asyncio.sleep(0.01)
    selling.cancel()
    with pytest.raises(asyncio.CancelledError):
        await selling
    assert mesh.synth.streams[0].cancelled
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]
    assert mesh.ledger.balance_of() == 1000


async def test_a_repeat_of_a_keyed_request_still_in_progress_is_409(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    body = {"input": "hello world"}
    first = asyncio.ensure_future(speak(client, body, **{"Idempotency-Key": "k"}))
    while not mesh.synth.streams:
        await asyncio.sleep(0.01)
    status, content = await speak(client, body, **{"Idempotency-Key": "k"})
    assert status == 409
    assert b"in progress" in content
    gate.set()
    assert (await first)[0] == 200
    assert len(mesh.synth.requests) == 1
    assert mesh.ledger.balance_of() == 1000 - 11
    assert mesh.ledger.captured() == 11


@pytest.mark.parametrize(
    ("gateway_settings", "captures", "state", "charged"),
    [
        ({"settle_retry_delays_seconds": (0.01,) * 4}, 4, HoldState.CAPTURED, 5),
        # Still down after the last retry: the ledger returns the hold at its deadline.
        ({"settle_retry_delays_seconds": (0.01,) * 2}, 3, HoldState.HELD, 0),
    ],
    ids=["ledger-back-in-time", "ledger-still-down"],
)
async def test_a_capture_failing_during_a_ledger_restart_is_retried(
    mesh: FakeMesh, client: httpx.AsyncClient, captures: int, state: HoldState, charged: int
) -> None:
    mesh.ledger.capture_failures = [grpc.StatusCode.UNAVAILABLE] * 3
    status, _ = await speak(client, {"input": "hello"})
    assert status == 200
    assert [c[0] for c in mesh.ledger.calls].count("capture") == captures
    assert [h.state for h in mesh.ledger.holds.values()] == [state]
    assert mesh.ledger.captured() == charged
    assert mesh.ledger.balance_of() == 1000 - 5
