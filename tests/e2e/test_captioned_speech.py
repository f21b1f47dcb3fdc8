"""Word timestamps against the real mesh, one request of each shape: /v1/captioned_speech as one
JSON object and as JSON lines, Kokoro-FastAPI's /dev/captioned_speech, speech's SSE with
`timestamps: word`, and a voice whose language has no word timestamps. The official openai
client has no captioned speech, so httpx speaks for it."""

from __future__ import annotations

import base64
import json
from typing import Any

import httpx
import pytest

from services.cli.mesh import LocalMesh
from tests.e2e.conftest import Customer, NewCustomer, balance_becomes, balance_of, decode

pytestmark = [pytest.mark.model, pytest.mark.slow]

TEXT = "Dr. Smith paid $5.20, in 2026."


@pytest.fixture(scope="module")
async def customer(new_customer: NewCustomer) -> Customer:
    return await new_customer(credits=10_000)


def check_words(timestamps: list[dict[str, Any]], seconds: float) -> None:
    """The input's words as written, in order, rising, within the audio."""
    assert [word["word"] for word in timestamps] == TEXT.split()
    times = [t for word in timestamps for t in (word["start_time"], word["end_time"])]
    assert times == sorted(times) and times[0] > 0 and times[-1] <= seconds + 0.001


async def test_captioned_speech_answers_the_audio_and_its_words(
    http: httpx.AsyncClient, customer: Customer
) -> None:
    before = await balance_of(http, customer)
    response = await http.post(
        "/captioned_speech", json={"input": TEXT, "voice": "af_sky"}, headers=customer.headers
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["audio_format"] == "audio/mpeg"
    audio = decode(base64.b64decode(answer["audio"]))
    check_words(answer["timestamps"], audio.seconds)
    await balance_becomes(http, customer, before - len(TEXT))  # priced as speech


async def test_streamed_captioned_speech_is_json_lines_at_both_paths(
    http: httpx.AsyncClient, customer: Customer, mesh: LocalMesh
) -> None:
    for url, body in [
        ("/captioned_speech", {"stream": True}),
        (f"{mesh.addresses['gateway']}/dev/captioned_speech", {}),  # streams by default
    ]:
        response = await http.post(
            url, json={"input": TEXT, "response_format": "wav", **body}, headers=customer.headers
        )
        assert response.status_code == 200, response.text
        assert response.headers["content-type"] == "application/x-ndjson"
        lines = [json.loads(line) for line in response.text.splitlines()]
        assert len(lines) >= 2  # the first chunk is short: more than one piece of audio
        audio = decode(b"".join(base64.b64decode(line["audio"]) for line in lines), "wav")
        check_words([word for line in lines for word in line["timestamps"]], audio.seconds)


async def test_speech_events_carry_the_words_when_asked(
    http: httpx.AsyncClient, customer: Customer
) -> None:
    body = {"input": TEXT, "stream_format": "sse", "timestamps": "word", "response_format": "pcm"}
    response = await http.post("/audio/speech", json=body, headers=customer.headers)
    assert response.status_code == 200, response.text
    events = [json.loads(line[6:]) for line in response.text.split("\n\n") if line]
    audio = b"".join(
        base64.b64decode(e["audio"]) for e in events if e["type"] == "speech.audio.delta"
    )
    words = [word for e in events if e["type"] == "speech.audio.words" for word in e["words"]]
    check_words(words, decode(audio, "pcm").seconds)
    assert events[-1]["type"] == "speech.audio.done"


async def test_a_language_without_word_timestamps_is_a_400(
    http: httpx.AsyncClient, customer: Customer
) -> None:
    response = await http.post(
        "/captioned_speech", json={"input": "Hola.", "voice": "ef_dora"}, headers=customer.headers
    )
    assert response.status_code == 400
    assert "word timestamps are not available" in response.json()["detail"]
