"""The longest a stream may last (GATEWAY_MAX_STREAM_SECONDS): a stream that reaches it ends as
if its client had left — synthesis cancelled, what was delivered charged, the rest refunded —
and the client sees a broken stream, not a complete one."""

from __future__ import annotations

import asyncio
import json

import httpx
import pytest

from services.gateway.clients import HoldState
from services.gateway.settings import GatewaySettings
from tests.support.gateway_fakes import FakeMesh, auth_header, pieces_with
from tests.support.gateway_fixtures import deliver_to_a_stalled_client, eventually, sell

SPEECH = "/v1/audio/speech"
LIMIT = 0.5
SHORT = {"max_stream_seconds": LIMIT, "first_chunk_timeout_seconds": 0.2}


def test_the_default_limit_covers_the_longest_input_at_the_slowest_speed() -> None:
    settings = GatewaySettings()
    # 4096 characters at ~15 a second at speed 1, four times as long at speed 0.25.
    longest_audio = settings.max_input_chars / 15 / 0.25
    # Room for the first-audio wait and for synthesis at under a third of real time.
    assert settings.max_stream_seconds >= settings.first_chunk_timeout_seconds + 3 * longest_audio


@pytest.mark.parametrize("gateway_settings", [SHORT])
@pytest.mark.parametrize("stream_format", ["audio", "sse"])
async def test_a_stream_reaching_the_limit_ends_charged_for_what_was_delivered(
    mesh: FakeMesh, http: httpx.AsyncClient, stream_format: str
) -> None:
    mesh.synth.script = pieces_with(asyncio.Event(), after=2)  # 7 of 11 characters, then never
    body = {"input": "hello world", "stream_format": stream_format}
    started = asyncio.get_running_loop().time()
    received = b""
    async with http.stream("POST", SPEECH, json=body, headers=auth_header()) as response:
        assert response.status_code == 200
        # No chunked terminator: the client can tell the audio is incomplete.
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in response.aiter_raw():
                received += chunk
    elapsed = asyncio.get_running_loop().time() - started
    assert LIMIT <= elapsed < LIMIT + 2

    if stream_format == "sse":
        events = [json.loads(line[6:]) for line in received.decode().split("\n\n") if line]
        assert [e["type"] for e in events] == ["speech.audio.delta"] * 2  # and no done event
    else:
        assert received == b"mp3:0;mp3:1;"
    await eventually(lambda: mesh.ledger.open_holds() == [])
    assert mesh.synth.streams[0].cancelled
    [hold] = mesh.ledger.holds.values()
    assert (hold.state, hold.captured) == (HoldState.CAPTURED, 7)
    assert mesh.ledger.balance_of() == 1000 - 7


@pytest.mark.parametrize("gateway_settings", [SHORT])
async def test_the_limit_holds_while_the_client_reads_slowly(mesh: FakeMesh) -> None:
    """Time spent waiting on the client counts too: a reader slower than the send timeout
    allows still cannot keep the stream past the limit."""
    delivery = await sell(mesh, "hello world")
    # send_timeout alone would wait 60 s for the stalled reader; the stream limit ends it.
    bodies = await deliver_to_a_stalled_client(delivery, send_timeout=60)

    assert bodies == [b"mp3:0;"]
    assert mesh.synth.streams[0].cancelled
    assert mesh.ledger.captured() == 3
    assert mesh.ledger.balance_of() == 1000 - 3


@pytest.mark.parametrize("gateway_settings", [SHORT])
async def test_a_stream_inside_the_limit_is_untouched(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    async with http.stream(
        "POST", SPEECH, json={"input": "hello world"}, headers=auth_header()
    ) as response:
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"mp3:0;"
        await asyncio.sleep(LIMIT / 2)
        gate.set()
        assert b"".join([chunk async for chunk in chunks]) == b"mp3:1;mp3:2;"
    await eventually(lambda: mesh.ledger.captured() == 11)
