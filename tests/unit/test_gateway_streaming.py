"""Streaming under a real uvicorn: relay as it comes, cut on failure, settle on disconnect,
and the official openai client's calls working unchanged."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from pathlib import Path

import grpc
import httpx
import openai
import pytest
import uvicorn
from starlette.types import Message

from services.cli.processes import free_port
from services.gateway.__main__ import GatewayServer
from services.gateway.clients import HoldState, SynthesisRequest
from services.gateway.protocol import SpeechRequest
from services.gateway.routes.speech import DeliveryResponse
from tests.unit.test_gateway_fakes import (
    GOOD_KEY,
    FakeMesh,
    Step,
    auth_header,
    eventually,
    fake_mesh,
    live_server,
    pieces_for,
    synth_error,
)

SPEECH = "/v1/audio/speech"


@pytest.fixture
def mesh() -> FakeMesh:
    return fake_mesh()


async def test_pieces_are_relayed_as_they_come(mesh: FakeMesh) -> None:
    gate = asyncio.Event()

    def script(request: SynthesisRequest) -> list[Step]:
        first, *rest = pieces_for(request)
        return [first, gate, *rest]

    mesh.synth.script = script
    async with live_server(mesh) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        request = client.build_request(
            "POST", SPEECH, json={"input": "hello world"}, headers=auth_header()
        )
        response = await client.send(request, stream=True)
        chunks = response.aiter_raw()
        # The first piece arrives while synth is still held back: nothing is buffered.
        assert await asyncio.wait_for(chunks.__anext__(), 5) == b"mp3:0;"
        gate.set()
        rest = b"".join([chunk async for chunk in chunks])
        await response.aclose()
    assert rest == b"mp3:1;mp3:2;"
    await eventually(lambda: mesh.ledger.captured() == 11)


async def test_synth_failure_after_the_first_byte_cuts_the_stream_and_refunds(
    mesh: FakeMesh,
) -> None:
    def script(request: SynthesisRequest) -> list[Step]:
        return [*pieces_for(request)[:2], synth_error(grpc.StatusCode.UNAVAILABLE)]

    mesh.synth.script = script
    body = {"input": "hello world"}
    async with (
        live_server(mesh) as base_url,
        httpx.AsyncClient(base_url=base_url) as client,
        client.stream("POST", SPEECH, json=body, headers=auth_header()) as response,
    ):
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
    mesh: FakeMesh,
) -> None:
    never = asyncio.Event()

    def script(request: SynthesisRequest) -> list[Step]:
        first, second, third = pieces_for(request)  # 3, 7 and 11 of 11 characters
        return [first, second, never, third]

    mesh.synth.script = script
    async with live_server(mesh) as base_url, httpx.AsyncClient(base_url=base_url) as client:
        async with client.stream(
            "POST", SPEECH, json={"input": "hello world"}, headers=auth_header()
        ) as response:
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


async def test_openai_client_streams_to_a_file_unchanged(mesh: FakeMesh, tmp_path: Path) -> None:
    async with live_server(mesh) as base_url:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=GOOD_KEY)
        async with client.audio.speech.with_streaming_response.create(
            model="kokoro", voice="af_sky", input="Hello from kokoro-pay."
        ) as response:
            await response.stream_to_file(tmp_path / "speech.mp3")
        await client.close()
    assert (tmp_path / "speech.mp3").read_bytes() == b"mp3:0;mp3:1;mp3:2;"
    assert mesh.ledger.captured() == len("Hello from kokoro-pay.")


async def test_openai_client_does_not_retry_a_402(mesh: FakeMesh) -> None:
    mesh.ledger.balances["acct_test"] = 1
    async with live_server(mesh) as base_url:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=GOOD_KEY, max_retries=2)
        with pytest.raises(openai.APIStatusError) as raised:
            await client.audio.speech.create(model="kokoro", voice="af_sky", input="hello")
        await client.close()
    assert raised.value.status_code == 402
    assert raised.value.body == {"detail": raised.value.body["detail"]}  # type: ignore[index]
    assert len([c for c in mesh.ledger.calls if c[0] == "reserve"]) == 1


async def test_openai_client_does_not_retry_a_401(mesh: FakeMesh) -> None:
    async with live_server(mesh) as base_url:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key="kp_live_nope")
        with pytest.raises(openai.AuthenticationError):
            await client.audio.speech.create(model="kokoro", voice="af_sky", input="hello")
        await client.close()
    assert len(mesh.auth.request_ids) == 1


async def test_openai_client_retries_a_refunded_502(mesh: FakeMesh) -> None:
    attempts = 0

    def flaky(request: SynthesisRequest) -> list[Step]:
        nonlocal attempts
        attempts += 1
        return [synth_error(grpc.StatusCode.UNAVAILABLE)] if attempts == 1 else pieces_for(request)

    mesh.synth.script = flaky
    async with live_server(mesh) as base_url:
        client = openai.AsyncOpenAI(base_url=f"{base_url}/v1", api_key=GOOD_KEY, max_retries=1)
        audio = await client.audio.speech.create(model="tts-1", voice="alloy", input="hello")
        await client.close()
    assert audio.content == b"mp3:0;mp3:1;mp3:2;"
    assert attempts == 2
    assert mesh.ledger.balance_of() == 1000 - 5  # the failed attempt was refunded


async def test_sigterm_drains_streams_in_flight(mesh: FakeMesh) -> None:
    gate = asyncio.Event()

    def script(request: SynthesisRequest) -> list[Step]:
        first, *rest = pieces_for(request)
        return [first, gate, *rest]

    mesh.synth.script = script
    port = free_port()
    config = uvicorn.Config(
        mesh.app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=10
    )
    server = GatewayServer(config, mesh.app.state.draining)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        client.stream(
            "POST", SPEECH, json={"input": "hello world"}, headers=auth_header()
        ) as response,
    ):
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"mp3:0;"
        server.handle_exit(signal.SIGTERM, None)
        assert mesh.app.state.draining.is_set()  # /readyz now answers 503
        gate.set()
        assert b"".join([chunk async for chunk in chunks]) == b"mp3:1;mp3:2;"
    await serving
    assert mesh.ledger.captured() == 11


async def test_a_stream_cut_by_shutdown_is_refunded(mesh: FakeMesh) -> None:
    never = asyncio.Event()

    def script(request: SynthesisRequest) -> list[Step]:
        first, *rest = pieces_for(request)
        return [first, never, *rest]

    mesh.synth.script = script
    port = free_port()
    config = uvicorn.Config(
        mesh.app, host="127.0.0.1", port=port, log_config=None, timeout_graceful_shutdown=0.2
    )
    server = GatewayServer(config, mesh.app.state.draining)
    server.capture_signals = contextlib.nullcontext  # type: ignore[method-assign,assignment]
    serving = asyncio.ensure_future(server.serve())
    while not server.started:
        await asyncio.sleep(0.01)
    async with (
        httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client,
        client.stream(
            "POST", SPEECH, json={"input": "hello world"}, headers=auth_header()
        ) as response,
    ):
        chunks = response.aiter_raw()
        assert await chunks.__anext__() == b"mp3:0;"
        server.handle_exit(signal.SIGTERM, None)
        with contextlib.suppress(httpx.HTTPError):
            async for _ in chunks:
                pass
    await serving
    # We cut the stream, not the client: nothing is charged, and drain saw it settled.
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]
    assert mesh.ledger.balance_of() == 1000


async def test_a_client_that_stops_reading_is_treated_as_gone(mesh: FakeMesh) -> None:
    service = mesh.app.state.speech
    principal = await service.authenticate(GOOD_KEY)
    order = await service.validate(SpeechRequest(input="hello world"))
    delivery = await service.start(
        principal, order, request_id="r1", request_id_is_ours=True, idempotency_key=None
    )
    bodies: list[bytes] = []
    stalled = asyncio.Event()

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if bodies:
                await stalled.wait()  # the client's window is full and stays full
            bodies.append(message["body"])

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    scope = {"type": "http", "asgi": {"spec_version": "2.4"}}
    response = DeliveryResponse(delivery, send_timeout=0.1)
    await asyncio.wait_for(response(scope, receive, send), 5)

    assert bodies == [b"mp3:0;"]
    assert mesh.synth.streams[0].cancelled
    # The first piece (3 of 11 characters) was taken; the rest is refunded.
    assert mesh.ledger.captured() == 3
    assert mesh.ledger.balance_of() == 1000 - 3
