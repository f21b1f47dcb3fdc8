"""Streaming under a real uvicorn: relay as it comes, cut on failure, settle on disconnect,
and the official openai client's calls working unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import grpc
import httpx
import openai
import pytest
from fastapi import Request

from services.gateway.clients import HoldState, SynthesisRequest
from tests.support.gateway_fakes import (
    ACCOUNT,
    GOOD_KEY,
    FakeMesh,
    Step,
    auth_header,
    fake_key,
    pieces_for,
    pieces_with,
    synth_error,
)
from tests.support.gateway_fixtures import (
    UVICORN_ASGI,
    LiveGateway,
    deliver_to_a_stalled_client,
    eventually,
    live_gateway,
    sell,
)

SPEECH = "/v1/audio/speech"
HELLO_WORLD = {"input": "hello world"}  # 11 characters, in pieces of 3, 7 and 11


async def test_pieces_are_relayed_as_they_come(mesh: FakeMesh, http: httpx.AsyncClient) -> None:
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    request = http.build_request("POST", SPEECH, json=HELLO_WORLD, headers=auth_header())
    response = await http.send(request, stream=True)
    chunks = response.aiter_raw()
    # The first piece arrives while synth is still held back: nothing is buffered.
    assert await asyncio.wait_for(chunks.__anext__(), 5) == b"mp3:0;"
    gate.set()
    rest = b"".join([chunk async for chunk in chunks])
    await response.aclose()
    assert rest == b"mp3:1;mp3:2;"
    await eventually(lambda: mesh.ledger.captured() == 11)


async def test_synth_failure_after_the_first_byte_cuts_the_stream_and_refunds(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    mesh.synth.script = pieces_with(synth_error(grpc.StatusCode.UNAVAILABLE), after=2)
    async with http.stream("POST", SPEECH, json=HELLO_WORLD, headers=auth_header()) as response:
        assert response.status_code == 200
        received = b""
        # Not a clean end: the client must be able to tell the audio is incomplete.
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in response.aiter_raw():
                received += chunk
    assert received == b"mp3:0;mp3:1;"
    await eventually(lambda: mesh.ledger.open_holds() == [])
    assert mesh.ledger.balance_of() == 1000
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]


async def test_client_disconnect_cancels_synthesis_and_charges_what_was_delivered(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    mesh.synth.script = pieces_with(asyncio.Event(), after=2)  # 7 of 11 characters, then never
    async with http.stream("POST", SPEECH, json=HELLO_WORLD, headers=auth_header()) as response:
        received = b""
        async for chunk in response.aiter_raw():
            received += chunk
            if received == b"mp3:0;mp3:1;":
                break
    await eventually(lambda: mesh.synth.streams[0].cancelled)
    await eventually(lambda: mesh.ledger.open_holds() == [] and mesh.ledger.captured() > 0)
    assert mesh.ledger.captured() == 7
    assert mesh.ledger.balance_of() == 1000 - 7
    # One partial Capture settles it: the refunded rest is never up for grabs in between.
    [hold] = mesh.ledger.holds.values()
    settling = [c for c in mesh.ledger.calls if c[0] in ("capture", "release", "reserve")]
    assert settling[1:] == [("capture", hold.id, "7")]


async def test_openai_client_streams_to_a_file_unchanged(
    mesh: FakeMesh, live_url: str, tmp_path: Path
) -> None:
    client = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=GOOD_KEY)
    async with client.audio.speech.with_streaming_response.create(
        model="kokoro", voice="af_sky", input="Hello from kokoro-pay."
    ) as response:
        await response.stream_to_file(tmp_path / "speech.mp3")
    await client.close()
    assert (tmp_path / "speech.mp3").read_bytes() == b"mp3:0;mp3:1;mp3:2;"
    assert mesh.ledger.captured() == len("Hello from kokoro-pay.")


@pytest.mark.parametrize(
    ("key", "credits", "status"),
    [(fake_key("n"), 1000, 401), (GOOD_KEY, 1, 402)],
    ids=["bad-key", "too-few-credits"],
)
async def test_openai_client_does_not_retry_a_client_error(
    mesh: FakeMesh, live_url: str, key: str, credits: int, status: int
) -> None:
    mesh.ledger.balances[ACCOUNT] = credits
    client = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=key, max_retries=2)
    with pytest.raises(openai.APIStatusError) as raised:
        await client.audio.speech.create(model="kokoro", voice="af_sky", input="hello")
    await client.close()
    assert raised.value.status_code == status
    assert raised.value.body == {"detail": raised.value.body["detail"]}  # type: ignore[index]
    assert len(mesh.auth.request_ids) == 1  # asked once: no retry


async def test_openai_client_retries_a_refunded_502(mesh: FakeMesh, live_url: str) -> None:
    attempts = 0

    def flaky(request: SynthesisRequest) -> list[Step]:
        nonlocal attempts
        attempts += 1
        return [synth_error(grpc.StatusCode.UNAVAILABLE)] if attempts == 1 else pieces_for(request)

    mesh.synth.script = flaky
    client = openai.AsyncOpenAI(base_url=f"{live_url}/v1", api_key=GOOD_KEY, max_retries=1)
    audio = await client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
    await client.close()
    assert audio.content == b"mp3:0;mp3:1;mp3:2;"
    assert attempts == 2
    assert mesh.ledger.balance_of() == 1000 - 5  # the failed attempt was refunded


@contextlib.asynccontextmanager
async def first_piece_then_sigterm(gateway: LiveGateway) -> AsyncIterator[AsyncIterator[bytes]]:
    """A stream whose first piece has arrived when the gateway is told to stop; yields the
    rest of its body."""
    async with (
        httpx.AsyncClient(base_url=gateway.url) as client,
        client.stream("POST", SPEECH, json=HELLO_WORLD, headers=auth_header()) as response,
    ):
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"mp3:0;"
        gateway.server.handle_exit(signal.SIGTERM, None)
        yield chunks


async def test_sigterm_drains_streams_in_flight(mesh: FakeMesh) -> None:
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    async with (
        live_gateway(mesh, grace=10) as gateway,
        first_piece_then_sigterm(gateway) as rest,
    ):
        assert mesh.app.state.draining.is_set()  # /readyz now answers 503
        gate.set()
        assert b"".join([chunk async for chunk in rest]) == b"mp3:1;mp3:2;"
    assert mesh.ledger.captured() == 11


async def test_a_stream_cut_by_shutdown_is_refunded(mesh: FakeMesh) -> None:
    mesh.synth.script = pieces_with(asyncio.Event(), after=1)  # never set
    async with (
        live_gateway(mesh, grace=0.2) as gateway,
        first_piece_then_sigterm(gateway) as rest,
    ):
        with contextlib.suppress(httpx.HTTPError):
            async for _ in rest:
                pass
    # We cut the stream, not the client: nothing is charged, and drain saw it settled.
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]
    assert mesh.ledger.balance_of() == 1000


async def test_the_server_speaks_the_asgi_spec_these_tests_assume(mesh: FakeMesh) -> None:
    @mesh.app.get("/asgi-of-this-scope")
    async def asgi_of_this_scope(request: Request) -> dict[str, str]:
        return dict(request.scope["asgi"])

    async with live_gateway(mesh) as gateway, httpx.AsyncClient(base_url=gateway.url) as http:
        assert (await http.get("/asgi-of-this-scope")).json() == UVICORN_ASGI


async def test_a_client_that_stops_reading_is_treated_as_gone(mesh: FakeMesh) -> None:
    delivery = await sell(mesh, "hello world")

    bodies = await deliver_to_a_stalled_client(delivery, send_timeout=0.1)

    assert bodies == [b"mp3:0;"]
    assert mesh.synth.streams[0].cancelled
    # The first piece (3 of 11 characters) was taken; the rest is refunded.
    assert mesh.ledger.captured() == 3
    assert mesh.ledger.balance_of() == 1000 - 3
