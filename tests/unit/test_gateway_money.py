"""The money path of POST /v1/audio/speech against in-memory auth, ledger and synth."""

from __future__ import annotations

import asyncio
from collections.abc import Mapping

import grpc
import pytest

from services.gateway import speech
from services.gateway.clients import HoldState, SynthesisRequest
from services.gateway.protocol import SpeechRequest
from tests.unit.test_gateway_fakes import (
    ACCOUNT,
    GOOD_KEY,
    FakeMesh,
    Step,
    asgi_client,
    auth_header,
    fake_mesh,
    pieces_for,
    synth_error,
)

SPEECH = "/v1/audio/speech"


@pytest.fixture
def mesh() -> FakeMesh:
    return fake_mesh()


async def speak(mesh: FakeMesh, body: Mapping[str, object], **headers: str) -> tuple[int, bytes]:
    async with asgi_client(mesh) as client:
        response = await client.post(SPEECH, json=body, headers={**auth_header(), **headers})
    return response.status_code, response.content


async def test_charge_is_the_input_length_in_code_points(mesh: FakeMesh) -> None:
    async with asgi_client(mesh) as client:
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


async def test_insufficient_credits_is_402_and_leaves_no_hold(mesh: FakeMesh) -> None:
    mesh.ledger.balances[ACCOUNT] = 6
    async with asgi_client(mesh) as client:
        response = await client.post(SPEECH, json={"input": "héllo 👋"}, headers=auth_header())
    assert response.status_code == 402
    assert "7 credits" in response.json()["detail"]
    assert response.headers["x-should-retry"] == "false"
    assert mesh.ledger.balance_of() == 6
    assert mesh.ledger.holds == {}
    assert mesh.synth.requests == []


async def test_an_unopened_account_is_402_not_500(mesh: FakeMesh) -> None:
    del mesh.ledger.balances[ACCOUNT]
    status, _ = await speak(mesh, {"input": "hello"})
    assert status == 402


async def test_unlimited_account_is_never_refused_and_is_journaled(mesh: FakeMesh) -> None:
    mesh.ledger.balances[ACCOUNT] = 0
    mesh.ledger.unlimited.add(ACCOUNT)
    status, _ = await speak(mesh, {"input": "hello there"})
    assert status == 200
    assert mesh.ledger.captured() == 11


async def test_synth_error_before_the_first_byte_is_502_and_refunded(mesh: FakeMesh) -> None:
    mesh.synth.script = lambda request: [synth_error(grpc.StatusCode.UNAVAILABLE)]
    async with asgi_client(mesh) as client:
        response = await client.post(SPEECH, json={"input": "hello"}, headers=auth_header())
    assert response.status_code == 502
    assert "refunded" in response.json()["detail"]
    # Refunded, so retrying is safe: the openai client may (and does) try again.
    assert response.headers["x-should-retry"] == "true"
    assert mesh.ledger.balance_of() == 1000
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]
    assert mesh.synth.streams[0].cancelled


async def test_synth_refusing_the_input_after_reserve_is_400_and_refunded(mesh: FakeMesh) -> None:
    mesh.synth.script = lambda request: [
        synth_error(grpc.StatusCode.INVALID_ARGUMENT, "voice speaks Hindi, not installed")
    ]
    status, body = await speak(mesh, {"input": "hello"})
    assert status == 400
    assert b"Hindi" in body
    assert mesh.ledger.balance_of() == 1000
    assert mesh.ledger.open_holds() == []


async def test_synth_error_after_the_first_byte_refunds(mesh: FakeMesh) -> None:
    def script(request: SynthesisRequest) -> list[Step]:
        return [*pieces_for(request)[:1], synth_error()]

    mesh.synth.script = script
    # The in-process transport re-raises what cuts the connection under a real server.
    with pytest.raises(Exception, match="boom"):
        await speak(mesh, {"input": "hello world"})
    assert mesh.ledger.balance_of() == 1000
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]


async def test_first_chunk_timeout_is_502_and_refunded() -> None:
    mesh = fake_mesh(first_chunk_timeout_seconds=0.05)
    never = asyncio.Event()
    mesh.synth.script = lambda request: [never]
    status, _ = await speak(mesh, {"input": "hello"})
    assert status == 502
    assert mesh.ledger.balance_of() == 1000
    assert mesh.synth.streams[0].cancelled


async def test_bad_input_changes_nothing(mesh: FakeMesh) -> None:
    for body in (
        {"input": "hello", "voice": "nobody"},
        {"input": "hello", "voice": "af_sky(0)"},
        {"input": "hello", "model": "whisper-1"},
        {"input": "hello", "speed": 4.5},
        {"input": "hello", "response_format": "ogg"},
        {"input": "x" * 4097},
    ):
        status, _ = await speak(mesh, body)
        assert status == 400, body
    assert mesh.ledger.calls == []
    assert mesh.synth.requests == []


async def test_idempotency_key_reused_charges_once(mesh: FakeMesh) -> None:
    body = {"input": "hello world", "voice": "af_sky"}
    first = await speak(mesh, body, **{"Idempotency-Key": "order-42"})
    again = await speak(mesh, body, **{"Idempotency-Key": "order-42"})
    assert first[0] == again[0] == 200
    assert again[1] == first[1]
    assert mesh.ledger.balance_of() == 1000 - 11
    assert len(mesh.synth.requests) == 2  # served again, not charged again
    assert len(mesh.ledger.holds) == 1


async def test_idempotency_key_on_other_content_is_another_purchase(mesh: FakeMesh) -> None:
    await speak(mesh, {"input": "hello world"}, **{"Idempotency-Key": "k"})
    await speak(mesh, {"input": "other words"}, **{"Idempotency-Key": "k"})
    assert mesh.ledger.balance_of() == 1000 - 22


async def test_retry_after_a_refund_is_charged_once(mesh: FakeMesh) -> None:
    mesh.synth.script = lambda request: [synth_error()]
    failed = await speak(mesh, {"input": "hello"}, **{"Idempotency-Key": "k"})
    mesh.synth.script = pieces_for
    retried = await speak(mesh, {"input": "hello"}, **{"Idempotency-Key": "k"})
    assert (failed[0], retried[0]) == (502, 200)
    assert mesh.ledger.balance_of() == 1000 - 5
    assert mesh.ledger.captured() == 5


async def test_without_idempotency_key_each_request_is_charged(mesh: FakeMesh) -> None:
    for _ in range(2):
        await speak(mesh, {"input": "hello"}, **{"x-request-id": "same-id"})
    assert mesh.ledger.balance_of() == 1000 - 10
    keys = [call[3] for call in mesh.ledger.calls if call[0] == "reserve"]
    assert len(set(keys)) == 2
    assert all(key.startswith("req:same-id:") for key in keys)


async def test_ledger_key_is_the_generated_request_id(mesh: FakeMesh) -> None:
    async with asgi_client(mesh) as client:
        response = await client.post(SPEECH, json={"input": "hi"}, headers=auth_header())
    key = next(call[3] for call in mesh.ledger.calls if call[0] == "reserve")
    assert key == f"req:{response.headers['x-request-id']}"


async def test_an_ambiguous_reserve_failure_is_retried_with_the_same_key(mesh: FakeMesh) -> None:
    mesh.ledger.reserve_failures = [grpc.StatusCode.UNAVAILABLE]
    status, _ = await speak(mesh, {"input": "hello"})
    assert status == 200
    keys = [call[3] for call in mesh.ledger.calls if call[0] == "reserve"]
    assert len(keys) == 2 and keys[0] == keys[1]


async def test_ledger_down_is_503_and_nothing_synthesized(mesh: FakeMesh) -> None:
    mesh.ledger.reserve_failures = [grpc.StatusCode.UNAVAILABLE] * 2
    status, _ = await speak(mesh, {"input": "hello"})
    assert status == 503
    assert mesh.synth.requests == []


async def test_a_lapsed_hold_is_charged_anew_at_the_end(mesh: FakeMesh) -> None:
    mesh.ledger.expire_before_capture = True
    status, _ = await speak(mesh, {"input": "hello"})
    assert status == 200
    assert mesh.ledger.balance_of() == 1000 - 5
    assert mesh.ledger.captured() == 5


async def test_requests_beyond_the_balance_are_402(mesh: FakeMesh) -> None:
    # The fake ledger cannot race; overspending under concurrency is the ledger's own test
    # (tests/integration/ledger/test_concurrency.py). This checks the 402 mapping.
    mesh.ledger.balances[ACCOUNT] = 55
    async with asgi_client(mesh) as client:
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
    service = mesh.app.state.speech
    principal = await service.authenticate(GOOD_KEY)
    order = await service.validate(SpeechRequest(input="hello"))
    starting = asyncio.ensure_future(
        service.start(
            principal, order, request_id="r1", request_id_is_ours=True, idempotency_key=None
        )
    )
    while not mesh.synth.streams:
        await asyncio.sleep(0.01)
    starting.cancel()
    with pytest.raises(asyncio.CancelledError):
        await starting
    assert mesh.synth.streams[0].cancelled
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]
    assert mesh.ledger.balance_of() == 1000


async def test_a_repeat_of_a_keyed_request_still_in_progress_is_409(mesh: FakeMesh) -> None:
    gate = asyncio.Event()

    def script(request: SynthesisRequest) -> list[Step]:
        first, *rest = pieces_for(request)
        return [first, gate, *rest]

    mesh.synth.script = script
    body = {"input": "hello world"}
    first = asyncio.ensure_future(speak(mesh, body, **{"Idempotency-Key": "k"}))
    while not mesh.synth.streams:
        await asyncio.sleep(0.01)
    status, content = await speak(mesh, body, **{"Idempotency-Key": "k"})
    assert status == 409
    assert b"in progress" in content
    gate.set()
    assert (await first)[0] == 200
    assert len(mesh.synth.requests) == 1
    assert mesh.ledger.balance_of() == 1000 - 11
    assert mesh.ledger.captured() == 11


async def test_a_capture_failing_during_a_ledger_restart_is_retried(
    mesh: FakeMesh, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(speech, "SETTLE_RETRY_DELAYS", (0.01, 0.01, 0.01, 0.01))
    mesh.ledger.capture_failures = [grpc.StatusCode.UNAVAILABLE] * 3
    status, _ = await speak(mesh, {"input": "hello"})
    assert status == 200
    assert mesh.ledger.captured() == 5
    assert mesh.ledger.balance_of() == 1000 - 5
    assert [c[0] for c in mesh.ledger.calls].count("capture") == 4
