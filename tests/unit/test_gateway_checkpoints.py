"""Checkpoints while audio streams, under a real uvicorn: what was delivered is recorded on the
hold every few seconds (not per piece), the hold is kept alive, failures never touch the stream,
and nothing is checkpointed once the delivery has settled."""

from __future__ import annotations

import asyncio
import logging

import grpc
import httpx
import pytest

from services.gateway.clients import HoldState, SynthesisRequest, UpstreamError
from tests.support.gateway_fakes import FakeMesh, Step, auth_header, pieces_for, pieces_with
from tests.support.gateway_fixtures import eventually

SPEECH = "/v1/audio/speech"
HELLO_WORLD = {"input": "hello world"}  # 11 characters, in pieces of 3, 7 and 11
# A tick every 50 ms; the hold is extended by a minute, so only new audio prompts a checkpoint.
FAST = {"checkpoint_interval_seconds": 0.05}
TICKS = 0.25  # five ticks


def gated(*gates: asyncio.Event) -> list[Step]:
    """hello world's three pieces with a gate before each but the first."""
    first, *rest = pieces_for(SynthesisRequest("hello world", "af_heart", "kokoro", 1, "mp3"))
    steps: list[Step] = [first]
    for gate, piece in zip(gates, rest, strict=True):
        steps += [gate, piece]
    return steps


def after_capture(mesh: FakeMesh) -> list[tuple[str, ...]]:
    captures = [i for i, call in enumerate(mesh.ledger.calls) if call[0] == "capture"]
    return mesh.ledger.calls[captures[-1] + 1 :]


@pytest.mark.parametrize("gateway_settings", [FAST])
async def test_checkpoints_follow_the_delivered_characters_and_stop_once_settled(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    first, second = asyncio.Event(), asyncio.Event()
    mesh.synth.script = lambda _: gated(first, second)
    request = http.build_request("POST", SPEECH, json=HELLO_WORLD, headers=auth_header())
    response = await http.send(request, stream=True)
    chunks = response.aiter_raw()
    assert await chunks.__anext__() == b"mp3:0;"
    await eventually(lambda: mesh.ledger.checkpoints() == [3])
    await asyncio.sleep(TICKS)
    assert mesh.ledger.checkpoints() == [3]  # nothing new, and the hold has most of a minute

    first.set()
    assert await chunks.__anext__() == b"mp3:1;"
    await eventually(lambda: mesh.ledger.checkpoints() == [3, 7])
    [hold] = mesh.ledger.holds.values()
    assert hold.checkpointed == 7
    assert {call[3] for call in mesh.ledger.calls if call[0] == "checkpoint"} == {"60"}

    second.set()
    assert b"".join([chunk async for chunk in chunks]) == b"mp3:2;"
    await response.aclose()
    await eventually(lambda: mesh.ledger.captured() == 11)
    await asyncio.sleep(TICKS)
    assert after_capture(mesh) == []


@pytest.mark.parametrize("gateway_settings", [{"checkpoint_interval_seconds": 0.2}])
async def test_pieces_do_not_prompt_checkpoints_of_their_own(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.synth.script = lambda request: pieces_for(request, count=40)
    response = await client.post(SPEECH, json={"input": "x" * 400}, headers=auth_header())
    assert response.status_code == 200
    # Forty pieces well inside one interval: settled without a single checkpoint.
    assert mesh.ledger.checkpoints() == []
    assert mesh.ledger.captured() == 400


@pytest.mark.parametrize(
    "gateway_settings", [{"checkpoint_interval_seconds": 0.05, "hold_extension_seconds": 1}]
)
async def test_a_quiet_stream_still_extends_its_hold_before_it_runs_out(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    async with http.stream("POST", SPEECH, json=HELLO_WORLD, headers=auth_header()) as response:
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"mp3:0;"
        await asyncio.sleep(1.3)  # 26 ticks with nothing new
        gate.set()
        assert b"".join([chunk async for chunk in chunks]) == b"mp3:1;mp3:2;"
    # Once for the new audio, then each time less than half the one-second extension was left.
    assert 2 <= len(mesh.ledger.checkpoints()) <= 4
    assert set(mesh.ledger.checkpoints()) == {3}
    assert {call[3] for call in mesh.ledger.calls if call[0] == "checkpoint"} == {"1"}
    await eventually(lambda: mesh.ledger.captured() == 11)


@pytest.mark.parametrize("gateway_settings", [FAST])
async def test_a_failing_checkpoint_is_tried_again_and_never_breaks_the_stream(
    mesh: FakeMesh, http: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    mesh.ledger.checkpoint_failures = [
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.INTERNAL,
    ]
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    with caplog.at_level(logging.WARNING, logger="gateway.billing"):
        async with http.stream("POST", SPEECH, json=HELLO_WORLD, headers=auth_header()) as response:
            chunks = response.aiter_raw()
            assert await chunks.__anext__() == b"mp3:0;"
            # Three failures, one tick apart, then the checkpoint lands.
            await eventually(lambda: mesh.ledger.checkpoints() == [3, 3, 3, 3])
            [hold] = mesh.ledger.holds.values()
            assert hold.checkpointed == 3
            gate.set()
            assert b"".join([chunk async for chunk in chunks]) == b"mp3:1;mp3:2;"
    await eventually(lambda: mesh.ledger.captured() == 11)
    assert mesh.ledger.balance_of() == 1000 - 11
    failures = [r for r in caplog.records if r.getMessage().startswith("checkpoint failed")]
    assert len(failures) == 3


@pytest.mark.parametrize("gateway_settings", [FAST])
@pytest.mark.parametrize("idempotency_key", [None, "retry-1"], ids=["plain", "idempotency-key"])
async def test_a_hold_that_lapsed_mid_stream_is_charged_once_in_all(
    mesh: FakeMesh, http: httpx.AsyncClient, idempotency_key: str | None
) -> None:
    first, second = asyncio.Event(), asyncio.Event()
    mesh.synth.script = lambda _: gated(first, second)
    headers = auth_header() | ({"Idempotency-Key": idempotency_key} if idempotency_key else {})
    async with http.stream("POST", SPEECH, json=HELLO_WORLD, headers=headers) as response:
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"mp3:0;"
        await eventually(lambda: mesh.ledger.checkpoints() == [3])
        # The ledger missed the gateway for a whole extension: the lapse captures 3.
        [hold] = mesh.ledger.holds.values()
        mesh.ledger.expire(hold.id)
        assert (hold.state, hold.captured) == (HoldState.CAPTURED, 3)
        first.set()
        assert await chunks.__anext__() == b"mp3:1;"
        # The next checkpoint learns the hold is closed, and the checkpoints end there.
        await eventually(lambda: mesh.ledger.checkpoints() == [3, 7])
        await asyncio.sleep(TICKS)
        assert mesh.ledger.checkpoints() == [3, 7]
        second.set()
        assert b"".join([chunk async for chunk in chunks]) == b"mp3:2;"
    # The audio is paid for once: 3 by the lapse, the other 8 charged anew.
    await eventually(lambda: mesh.ledger.balance_of() == 1000 - 11)
    assert mesh.ledger.open_holds() == []
    late = [h for h in mesh.ledger.holds.values() if h.key.endswith(":late")]
    assert [(h.amount, h.captured) for h in late] == [(8, 8)]
    assert mesh.ledger.captured() == 11


@pytest.mark.parametrize("gateway_settings", [FAST])
async def test_a_free_replay_has_nothing_to_checkpoint(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    headers = auth_header() | {"Idempotency-Key": "paid-already"}
    paid = await http.post(SPEECH, json=HELLO_WORLD, headers=headers)
    assert paid.status_code == 200
    await eventually(lambda: mesh.ledger.captured() == 11)

    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    async with http.stream("POST", SPEECH, json=HELLO_WORLD, headers=headers) as response:
        assert response.headers["x-billed-characters"] == "0"
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"mp3:0;"
        await asyncio.sleep(TICKS)
        gate.set()
        assert b"".join([chunk async for chunk in chunks]) == b"mp3:1;mp3:2;"
    assert mesh.ledger.checkpoints() == []
    assert mesh.ledger.balance_of() == 1000 - 11


async def test_the_fake_ledger_keeps_the_checkpoint_rules(mesh: FakeMesh) -> None:
    ledger = mesh.ledger
    hold = await ledger.reserve("acct_test", 10, "k", 60)
    assert (await ledger.checkpoint(hold.id, 6, 60)).checkpointed == 6
    assert (await ledger.checkpoint(hold.id, 4, 60)).checkpointed == 6  # only grows
    await ledger.capture(hold.id, 6)
    with pytest.raises(UpstreamError) as refused:
        await ledger.checkpoint(hold.id, 8, 60)
    assert (refused.value.code, refused.value.reason) == (
        grpc.StatusCode.FAILED_PRECONDITION,
        "HOLD_CAPTURED",
    )
