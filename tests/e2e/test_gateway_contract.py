"""The REST contract's examples and statuses, against the real mesh, as a customer meets them."""

from __future__ import annotations

import asyncio
import json
import shutil
import subprocess
from pathlib import Path

import httpx
import openai
import pytest

from services.cli.admin import AdminClient
from tests.e2e.conftest import Customer, NewCustomer, balance_becomes, balance_of, decode

pytestmark = [pytest.mark.model, pytest.mark.slow]

HELLO = "Hello from kokoro-pay."


@pytest.fixture(scope="module")
async def rich(new_customer: NewCustomer) -> Customer:
    return await new_customer(credits=100_000)


@pytest.mark.skipif(shutil.which("curl") is None, reason="curl is not installed")
async def test_the_curl_example_writes_an_mp3(
    base_url: str, rich: Customer, tmp_path: Path
) -> None:
    body = {"model": "kokoro", "input": HELLO, "voice": "af_sky", "response_format": "mp3"}
    command = [
        "curl", "--silent", "--show-error", "--fail-with-body",
        f"{base_url}/audio/speech",
        "-H", f"Authorization: Bearer {rich.key}",
        "-H", "Content-Type: application/json",
        "-d", json.dumps(body, indent=2),
        "--output", "speech.mp3",
    ]  # fmt: skip
    done = await asyncio.to_thread(
        subprocess.run, command, cwd=tmp_path, capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    audio = decode((tmp_path / "speech.mp3").read_bytes())
    assert audio.container == "mp3"
    assert audio.sample_rate == 24_000
    assert 0.8 < audio.seconds < 6


async def test_the_python_example_works_unchanged(
    base_url: str, rich: Customer, tmp_path: Path
) -> None:
    def contract_example() -> None:
        # The contract's snippet, but for base_url and key.
        from openai import OpenAI

        client = OpenAI(
            base_url=base_url,
            api_key=rich.key,
        )
        with client.audio.speech.with_streaming_response.create(
            model="kokoro",
            voice="af_sky",
            input=HELLO,
        ) as response:
            response.stream_to_file(tmp_path / "speech.mp3")

    await asyncio.to_thread(contract_example)
    assert decode((tmp_path / "speech.mp3").read_bytes()).seconds > 0.8


async def test_a_plain_json_post_like_the_javascript_example(
    http: httpx.AsyncClient, rich: Customer
) -> None:
    response = await http.post(
        "/audio/speech",
        headers={**rich.headers, "Content-Type": "application/json"},
        content=json.dumps({"model": "kokoro", "input": HELLO, "voice": "af_sky"}),
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.headers["x-request-id"]
    assert decode(response.content).seconds > 0.8


@pytest.mark.parametrize(
    ("audio_format", "content_type", "container"),
    [
        ("opus", "audio/ogg", "ogg"),
        ("aac", "audio/aac", "aac"),
        ("flac", "audio/flac", "flac"),
        ("wav", "audio/wav", "wav"),
        ("pcm", "audio/pcm", "s16le"),
    ],
)
async def test_each_format_decodes_with_its_content_type(
    http: httpx.AsyncClient, rich: Customer, audio_format: str, content_type: str, container: str
) -> None:
    response = await http.post(
        "/audio/speech",
        headers=rich.headers,
        json={"input": "One, two.", "voice": "af_heart", "response_format": audio_format},
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == content_type
    audio = decode(response.content, audio_format)
    assert audio.container == container
    # Opus always decodes at 48 kHz, whatever was encoded.
    assert audio.sample_rate == (48_000 if audio_format == "opus" else 24_000)
    assert audio.seconds > 0.3


async def test_the_balance_drops_by_the_code_points_of_input(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=100)
    response = await http.post(
        "/audio/speech", headers=customer.headers, json={"input": "héllo 👋", "voice": "af_sky"}
    )
    assert response.status_code == 200
    assert response.headers["x-billed-characters"] == "7"
    await balance_becomes(http, customer, 93)
    assert (await http.get("/balance", headers=customer.headers)).json() == {
        "balance": 93,
        "unlimited": False,
    }


async def test_missing_garbled_and_revoked_keys_are_401(
    http: httpx.AsyncClient, admin: AdminClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=100)
    await admin.revoke_key(customer.key_id)
    body = {"input": "hello", "voice": "af_sky"}
    for headers in (
        {},
        {"Authorization": "Bearer kp_live_garbled"},
        {"Authorization": f"Bearer {customer.key}x"},
        customer.headers,
    ):
        response = await http.post("/audio/speech", headers=headers, json=body)
        assert response.status_code == 401, headers
        assert list(response.json()) == ["detail"]
        assert response.headers["x-should-retry"] == "false"
    assert "revoked" in response.json()["detail"]


async def test_too_few_credits_is_402_and_the_balance_stays(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=9)
    response = await http.post(
        "/audio/speech", headers=customer.headers, json={"input": "0123456789", "voice": "af_sky"}
    )
    assert response.status_code == 402
    assert set(response.json()) == {"detail"}
    # The contract's words, then where to top up and what the request costs.
    assert response.json()["detail"].startswith("Insufficient credits — top up your balance")
    assert "costs 10 credits" in response.json()["detail"]
    assert await balance_of(http, customer) == 9


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"input": "hello", "voice": ', "invalid JSON"),
        (b'{"voice": "af_sky"}', "`input` is required"),
        (b'{"input": "", "voice": "af_sky"}', "input"),
        (json.dumps({"input": "x" * 4097}).encode(), "limit is 4096"),
        (b'{"input": "hello", "voice": "xx_nobody"}', "unknown voice"),
        (b'{"input": "hello", "speed": 9}', "speed"),
        (b'{"input": "hello", "response_format": "mp4"}', "response_format"),
        (b'{"input": "hello", "model": "tts-9"}', "unknown model"),
    ],
)
async def test_bad_requests_are_400_and_cost_nothing(
    http: httpx.AsyncClient, new_customer: NewCustomer, content: bytes, expected: str
) -> None:
    customer = await new_customer(credits=50)
    response = await http.post(
        "/audio/speech",
        headers={**customer.headers, "Content-Type": "application/json"},
        content=content,
    )
    assert response.status_code == 400
    assert expected in response.json()["detail"]
    assert await balance_of(http, customer) == 50


async def test_blends_aliases_and_openai_names(http: httpx.AsyncClient, rich: Customer) -> None:
    response = await http.post(
        "/audio/speech",
        headers=rich.headers,
        json={"model": "tts-1", "input": "Blend.", "voice": "af_bella(2)+af_sky(1)", "speed": 1.2},
    )
    assert response.status_code == 200
    assert decode(response.content).seconds > 0.2
    openai_voice = await http.post(
        "/audio/speech",
        headers=rich.headers,
        json={"model": "gpt-4o-mini-tts", "input": "Hi.", "voice": "alloy"},
    )
    assert openai_voice.status_code == 200


async def test_sse_stream_with_the_official_event_shapes(
    http: httpx.AsyncClient, rich: Customer
) -> None:
    import base64

    response = await http.post(
        "/audio/speech",
        headers=rich.headers,
        json={"input": HELLO, "voice": "af_sky", "stream_format": "sse"},
    )
    assert response.headers["content-type"].startswith("text/event-stream")
    events = [json.loads(line[6:]) for line in response.text.splitlines() if line]
    assert [e["type"] for e in events[:-1]] == ["speech.audio.delta"] * (len(events) - 1)
    assert events[-1]["type"] == "speech.audio.done"
    assert events[-1]["usage"]["characters"] == len(HELLO)
    audio = b"".join(base64.b64decode(e["audio"]) for e in events[:-1])
    assert decode(audio).seconds > 0.8


async def test_listings(http: httpx.AsyncClient, rich: Customer) -> None:
    models = (await http.get("/models", headers=rich.headers)).json()
    assert models["object"] == "list"
    assert {"kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"} <= {m["id"] for m in models["data"]}
    voices = (await http.get("/audio/voices", headers=rich.headers)).json()["voices"]
    assert {"af_sky", "af_heart", "alloy"} <= {v["id"] for v in voices}


async def test_openai_client_sees_402_without_retrying(
    base_url: str, http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=3)
    client = openai.AsyncOpenAI(base_url=base_url, api_key=customer.key)
    with pytest.raises(openai.APIStatusError) as raised:
        await client.audio.speech.create(model="kokoro", voice="af_sky", input="hello")
    await client.close()
    assert raised.value.status_code == 402
    assert await balance_of(http, customer) == 3
