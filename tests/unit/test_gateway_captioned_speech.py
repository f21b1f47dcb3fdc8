"""Word timestamps at the gateway: `timestamps: word` in SSE, /v1/captioned_speech and
Kokoro-FastAPI's /dev/captioned_speech, sold and limited as speech is, against the fakes (whose
synth times the n-th word of the text from n to n + 0.5 seconds)."""

from __future__ import annotations

import asyncio
import base64
import json
from typing import Any

import grpc
import httpx
import pytest

from services.gateway.clients import HoldState, KeyUse
from tests.support.gateway_fakes import (
    FakeMesh,
    auth_header,
    pieces_with,
    synth_error,
)
from tests.support.gateway_fixtures import eventually

SPEECH = "/v1/audio/speech"
CAPTIONED = "/v1/captioned_speech"
DEV_CAPTIONED = "/dev/captioned_speech"
# 30 characters in three pieces, ending at characters 10, 20 and 30: a word is in the piece
# where it ends.
TEXT = "Dr. Smith paid $5.20, in 2026."


def events(body: str) -> list[dict[str, Any]]:
    return [json.loads(line[6:]) for line in body.split("\n\n") if line.startswith("data: ")]


def words_of(timestamps: list[dict[str, Any]]) -> list[str]:
    return [word["word"] for word in timestamps]


async def test_sse_with_word_timestamps_sends_each_pieces_words_before_its_audio(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    body = {"input": TEXT, "stream_format": "sse", "timestamps": "word"}
    response = await client.post(SPEECH, json=body, headers=auth_header())
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    sent = events(response.text)
    assert [event["type"] for event in sent] == [
        "speech.audio.words",
        "speech.audio.delta",
        "speech.audio.words",
        "speech.audio.delta",
        "speech.audio.words",
        "speech.audio.delta",
        "speech.audio.done",
    ]
    assert [words_of(e["words"]) for e in sent if e["type"] == "speech.audio.words"] == [
        ["Dr.", "Smith"],
        ["paid"],
        ["$5.20,", "in", "2026."],
    ]
    assert sent[0]["words"][1] == {"word": "Smith", "start_time": 1.0, "end_time": 1.5}
    assert mesh.synth.requests[0].word_timestamps

    # OpenAI's events are those of the same request without timestamps.
    plain = await client.post(
        SPEECH, json={"input": TEXT, "stream_format": "sse"}, headers=auth_header()
    )
    openai_events = [e for e in sent if e["type"] != "speech.audio.words"]
    assert openai_events == events(plain.text)
    assert openai_events[-1]["usage"]["characters"] == len(TEXT)


async def test_without_word_timestamps_there_are_no_words_events(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        SPEECH, json={"input": TEXT, "stream_format": "sse"}, headers=auth_header()
    )
    assert "speech.audio.words" not in response.text
    assert not mesh.synth.requests[0].word_timestamps


async def test_word_timestamps_need_the_event_stream(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        SPEECH, json={"input": TEXT, "timestamps": "word"}, headers=auth_header()
    )
    assert response.status_code == 400
    assert "`timestamps`: word timestamps need `stream_format: sse`" in response.json()["detail"]
    assert mesh.synth.requests == [] and mesh.ledger.holds == {}


async def test_captioned_speech_is_one_json_object_with_the_audio_and_every_word(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        CAPTIONED, json={"input": TEXT, "voice": "af_sky"}, headers=auth_header()
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    answer = response.json()
    assert base64.b64decode(answer["audio"]) == b"mp3:0;mp3:1;mp3:2;"
    assert answer["audio_format"] == "audio/mpeg"
    assert words_of(answer["timestamps"]) == ["Dr.", "Smith", "paid", "$5.20,", "in", "2026."]
    assert answer["timestamps"][-1] == {"word": "2026.", "start_time": 5.0, "end_time": 5.5}
    assert mesh.synth.requests[0].word_timestamps


@pytest.mark.parametrize(
    ("path", "body"),
    [(CAPTIONED, {"stream": True}), (DEV_CAPTIONED, {}), (DEV_CAPTIONED, {"stream": True})],
    ids=["v1-stream", "dev-by-default", "dev-stream"],
)
async def test_streamed_captioned_speech_is_a_json_line_per_piece(
    client: httpx.AsyncClient, path: str, body: dict[str, object]
) -> None:
    response = await client.post(
        path, json={"input": TEXT, "response_format": "wav", **body}, headers=auth_header()
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/x-ndjson"
    assert response.text.endswith("\n")
    lines = [json.loads(line) for line in response.text.splitlines()]
    assert [base64.b64decode(line["audio"]) for line in lines] == [b"wav:0;", b"wav:1;", b"wav:2;"]
    assert {line["audio_format"] for line in lines} == {"audio/wav"}
    assert [words_of(line["timestamps"]) for line in lines] == [
        ["Dr.", "Smith"],
        ["paid"],
        ["$5.20,", "in", "2026."],
    ]


async def test_dev_captioned_speech_answers_one_object_when_told_not_to_stream(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        DEV_CAPTIONED, json={"input": TEXT, "stream": False}, headers=auth_header()
    )
    assert response.headers["content-type"] == "application/json"
    assert len(response.json()["timestamps"]) == 6


@pytest.mark.parametrize("path", [CAPTIONED, DEV_CAPTIONED])
async def test_captioned_speech_is_charged_and_limited_like_speech(
    mesh: FakeMesh, client: httpx.AsyncClient, path: str
) -> None:
    response = await client.post(path, json={"input": "héllo 👋"}, headers=auth_header())
    assert response.status_code == 200
    assert response.headers["x-billed-characters"] == "7"
    assert response.headers["x-ratelimit-limit-requests"] == "1000"
    assert mesh.ledger.captured() == 7 and mesh.ledger.balance_of() == 1000 - 7
    assert [use for use, _ in mesh.auth.uses] == [KeyUse.SPEECH]
    assert mesh.auth.slots == {}  # the stream's slot was given back


async def test_a_key_at_its_stream_limit_is_refused_captioned_speech_too(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.auth.limits[KeyUse.SPEECH].requests_per_window = 1
    assert (await client.post(CAPTIONED, json={"input": "hi"}, headers=auth_header())).is_success
    refused = await client.post(CAPTIONED, json={"input": "hi"}, headers=auth_header())
    assert refused.status_code == 429
    assert "retry-after" in refused.headers
    assert mesh.ledger.captured() == 2


async def test_a_voice_without_word_timestamps_is_a_400_that_costs_nothing(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    for path, body in [
        (CAPTIONED, {"input": "Hola.", "voice": "ef_dora"}),
        (
            SPEECH,
            {"input": "Hola.", "voice": "ef_dora", "stream_format": "sse", "timestamps": "word"},
        ),
        (CAPTIONED, {"input": "Hola.", "voice": "ef_dora(2)+af_sky(1)"}),  # speaks Spanish
    ]:
        response = await client.post(path, json=body, headers=auth_header())
        assert response.status_code == 400
        detail = response.json()["detail"]
        assert detail.startswith("word timestamps are not available for voice")
        assert "(es)" in detail and "languages with word timestamps: en-us" in detail
    assert mesh.synth.requests == [] and mesh.ledger.holds == {}
    # The same voice without timestamps, and a blend that speaks English, are served.
    plain = await client.post(
        SPEECH, json={"input": "Hola.", "voice": "ef_dora"}, headers=auth_header()
    )
    blend = await client.post(
        CAPTIONED, json={"input": "Hi.", "voice": "af_sky(1)+ef_dora(2)"}, headers=auth_header()
    )
    assert plain.status_code == blend.status_code == 200


async def test_synth_refusing_the_timestamps_is_a_400_refunded(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    # A catalog older than synth's: synth says no after the hold.
    mesh.synth.script = lambda request: [
        synth_error(grpc.StatusCode.INVALID_ARGUMENT, "word timestamps are not available")
    ]
    response = await client.post(CAPTIONED, json={"input": "Hi."}, headers=auth_header())
    assert response.status_code == 400
    assert [h.state for h in mesh.ledger.holds.values()] == [HoldState.RELEASED]
    assert mesh.ledger.balance_of() == 1000


async def test_a_failure_midway_cuts_the_answer_and_refunds(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    mesh.synth.script = pieces_with(synth_error(grpc.StatusCode.UNAVAILABLE), after=2)
    for path, body in [(CAPTIONED, {}), (CAPTIONED, {"stream": True})]:
        async with http.stream(
            "POST", path, json={"input": TEXT, **body}, headers=auth_header()
        ) as response:
            assert response.status_code == 200
            with pytest.raises(httpx.RemoteProtocolError):
                await response.aread()
    await eventually(lambda: mesh.ledger.open_holds() == [])
    assert mesh.ledger.balance_of() == 1000
    assert {h.state for h in mesh.ledger.holds.values()} == {HoldState.RELEASED}


async def test_a_client_that_leaves_pays_for_the_lines_it_got_and_nothing_for_no_object(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    gate = asyncio.Event()  # never set: synthesis stalls after the first piece
    mesh.synth.script = pieces_with(gate, after=1)
    async with http.stream(
        "POST", CAPTIONED, json={"input": TEXT, "stream": True}, headers=auth_header()
    ) as response:
        lines = response.aiter_lines()
        first = json.loads(await asyncio.wait_for(anext(lines), 5))
        assert words_of(first["timestamps"]) == ["Dr.", "Smith"]
    await eventually(lambda: mesh.ledger.open_holds() == [] and mesh.ledger.captured() > 0)
    assert mesh.ledger.captured() == 10  # the first piece's characters

    mesh.ledger.holds.clear()
    async with http.stream(
        "POST", CAPTIONED, json={"input": TEXT}, headers=auth_header()
    ) as response:
        assert response.status_code == 200
        await asyncio.sleep(0.1)  # the body is held back until synthesis ends: leave before
    await eventually(lambda: mesh.ledger.open_holds() == [])
    assert {h.state for h in mesh.ledger.holds.values()} == {HoldState.RELEASED}
    assert mesh.ledger.balance_of() == 1000 - 10


@pytest.mark.parametrize(
    ("first", "second", "differs"),
    [
        ((SPEECH, {}), (CAPTIONED, {}), "stream_format"),
        ((CAPTIONED, {}), (CAPTIONED, {"stream": True}), "stream_format"),
        (
            (SPEECH, {"stream_format": "sse"}),
            (SPEECH, {"stream_format": "sse", "timestamps": "word"}),
            "timestamps",
        ),
    ],
    ids=["speech-then-captioned", "json-then-lines", "sse-then-sse-with-words"],
)
async def test_one_idempotency_key_names_one_answer_shape(
    client: httpx.AsyncClient,
    first: tuple[str, dict[str, object]],
    second: tuple[str, dict[str, object]],
    differs: str,
) -> None:
    headers = {**auth_header(), "Idempotency-Key": "k"}
    for (path, body), status in [(first, 200), (second, 400)]:
        response = await client.post(path, json={"input": "hello", **body}, headers=headers)
        assert response.status_code == status
    assert f"differs in: {differs}" in response.json()["detail"]


async def test_openapi_documents_captioned_speech(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    schemas = document["components"]["schemas"]
    for path, body, stream_default in [
        (CAPTIONED, "CaptionedSpeechRequest", False),
        (DEV_CAPTIONED, "DevCaptionedSpeechRequest", True),
    ]:
        operation = document["paths"][path]["post"]
        assert operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": f"#/components/schemas/{body}"
        }
        ok = operation["responses"]["200"]
        assert ok["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/CaptionedSpeech"
        }
        assert "application/x-ndjson" in ok["content"]
        assert "x-billed-characters" in ok["headers"]
        assert set(operation["responses"]) == {
            "200", "400", "401", "402", "409", "429", "502", "503", "504"
        }  # fmt: skip
        assert schemas[body]["properties"]["stream"]["default"] is stream_default
        assert schemas[body]["properties"]["input"]["maxLength"] == 4096
        assert "stream_format" not in schemas[body]["properties"]
    assert set(schemas["CaptionedSpeech"]["required"]) == {"audio", "audio_format", "timestamps"}
    assert set(schemas["WordTimestamp"]["properties"]) == {"word", "start_time", "end_time"}
    speech = schemas["SpeechRequest"]["properties"]
    assert speech["timestamps"]["anyOf"][0] == {"const": "word", "type": "string"}
    assert "word_timestamps" in schemas["VoiceCard"]["required"]
