"""The HTTP edge: one error envelope, request ids, content types, listings, health, OpenAPI."""

from __future__ import annotations

import base64
import json

import httpx
import pytest

from services.gateway.protocol import CONTENT_TYPES
from tests.support.gateway_fakes import GOOD_KEY, REVOKED_KEY, FakeMesh, auth_header

SPEECH = "/v1/audio/speech"


def assert_client_error(response: httpx.Response, status: int) -> str:
    """The envelope, the status, the retry hint and the request id; returns the detail."""
    assert response.status_code == status
    headers = response.headers
    assert headers["content-type"] == "application/json"
    assert headers["x-should-retry"] == "false"
    assert headers["x-request-id"]
    body = response.json()
    assert list(body) == ["detail"] and isinstance(body["detail"], str) and body["detail"]
    return str(body["detail"])


@pytest.mark.parametrize(
    ("content", "headers", "expected"),
    [
        (b'{"input": "hi",', {"content-type": "application/json"}, "invalid JSON"),
        (b"", {"content-type": "application/json"}, "body is required"),
        (b"[1, 2]", {"content-type": "application/json"}, "JSON object"),
        (b'"just a string"', {"content-type": "application/json"}, "JSON object"),
        (b'{"voice": "af_sky"}', {"content-type": "application/json"}, "`input` is required"),
        (b'{"input": ""}', {"content-type": "application/json"}, "input"),
        (b'{"input": "   "}', {"content-type": "application/json"}, "must not be empty"),
        (b'{"input": 42}', {"content-type": "application/json"}, "input"),
        (b'{"input": "hi", "speed": 0.1}', {}, "speed"),
        (b'{"input": "hi", "speed": "fast"}', {}, "speed"),
        (b'{"input": "hi", "speed": NaN}', {}, "speed"),
        (b'{"input": "hi", "response_format": "ogg"}', {}, "response_format"),
        (b'{"input": "hi", "stream_format": "ws"}', {}, "stream_format"),
        (b'{"input": "hi", "voice": "nobody"}', {}, "unknown voice"),
        (b'{"input": "hi", "voice": "af_sky+nobody(2)"}', {}, "unknown voice 'nobody'"),
        (b'{"input": "hi", "voice": "af_sky((2)"}', {}, "cannot read"),
        (b'{"input": "hi", "voice": "af_sky(0)"}', {}, "positive"),
        (b'{"input": "hi", "model": "tts-2"}', {}, "unknown model"),
        (b'{"input": "hi", "model": "whisper-1"}', {}, "unknown model"),
        (b'{"input": "hi", "speed": 4.5}', {}, "speed"),
        (json.dumps({"input": "x" * 4097}).encode(), {}, "limit is 4096"),
        (b'{"input": "hi"}', {"content-type": "text/plain"}, "JSON object"),
        (b'{"input": "hi"}', {"Idempotency-Key": ""}, "Idempotency-Key"),
    ],
)
async def test_bad_requests_are_400_in_the_envelope(
    mesh: FakeMesh,
    client: httpx.AsyncClient,
    content: bytes,
    headers: dict[str, str],
    expected: str,
) -> None:
    response = await client.post(SPEECH, content=content, headers={**auth_header(), **headers})
    assert expected in assert_client_error(response, 400)
    # A bad request changes nothing.
    assert mesh.ledger.calls == []
    assert mesh.synth.requests == []


@pytest.mark.parametrize("gateway_settings", [{"max_input_chars": 10}])
async def test_too_long_input_names_the_limit(client: httpx.AsyncClient) -> None:
    response = await client.post(SPEECH, json={"input": "x" * 11}, headers=auth_header())
    assert "limit is 10" in assert_client_error(response, 400)


async def test_a_lone_surrogate_is_400_not_a_crash(client: httpx.AsyncClient) -> None:
    response = await client.post(
        SPEECH,
        content=b'{"input": "bad \\ud800 text"}',
        headers={**auth_header(), "content-type": "application/json"},
    )
    assert_client_error(response, 400)


async def test_json_without_content_type_is_accepted(client: httpx.AsyncClient) -> None:
    response = await client.post(SPEECH, content=b'{"input": "hi"}', headers=auth_header())
    assert response.status_code == 200


@pytest.mark.parametrize(
    ("headers", "expected"),
    [
        ({}, "missing API key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing API key"),
        ({"Authorization": "Bearer kp_live_garbled"}, "invalid API key"),
        ({"Authorization": "Bearer kp_live_" + "x" * 8000}, "invalid API key"),
        (auth_header(REVOKED_KEY), "revoked"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [("POST", SPEECH), ("GET", "/v1/balance"), ("GET", "/v1/models"), ("GET", "/v1/audio/voices")],
)
async def test_every_v1_endpoint_needs_a_live_key(
    mesh: FakeMesh,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    expected: str,
) -> None:
    response = await client.request(method, path, json={"input": "hi"}, headers=headers)
    assert expected in assert_client_error(response, 401)
    assert mesh.ledger.calls == []


async def test_request_id_is_generated_echoed_and_forwarded(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    generated = await client.post(SPEECH, json={"input": "hi"}, headers=auth_header())
    echoed = await client.post(
        SPEECH, json={"input": "hi"}, headers={**auth_header(), "x-request-id": "trace-1"}
    )
    insane = await client.get(
        "/v1/balance", headers={**auth_header(), "x-request-id": "bad id\twith spaces"}
    )
    request_id = generated.headers["x-request-id"]
    assert len(request_id) == 32 and int(request_id, 16) >= 0
    assert echoed.headers["x-request-id"] == "trace-1"
    assert insane.headers["x-request-id"] != "bad id\twith spaces"
    # Every upstream call ran with the request's id, which open_channel puts in metadata.
    assert mesh.auth.request_ids[:2] == [request_id, "trace-1"]
    assert mesh.ledger.request_ids == [request_id, "trace-1"]
    assert mesh.synth.request_ids == [request_id, "trace-1"]


@pytest.mark.parametrize(
    ("method", "path", "status"),
    [
        ("GET", "/healthz", 200),
        ("GET", "/nowhere", 404),
        ("DELETE", "/v1/balance", 405),
        ("POST", SPEECH, 400),
    ],
)
async def test_every_response_has_a_request_id(
    client: httpx.AsyncClient, method: str, path: str, status: int
) -> None:
    response = await client.request(method, path, headers=auth_header())
    assert response.status_code == status
    assert response.headers["x-request-id"]
    if status >= 400:
        assert list(response.json()) == ["detail"]


async def test_an_unexpected_error_is_a_500_in_the_envelope(mesh: FakeMesh) -> None:
    async def broken(account_id: str) -> object:
        raise RuntimeError("bug")

    mesh.ledger.get_balance = broken  # type: ignore[method-assign,assignment]
    # Unlike the `client` fixture's, this transport answers the app's exceptions as a server does.
    transport = httpx.ASGITransport(app=mesh.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/v1/balance", headers=auth_header())
    assert response.status_code == 500
    assert response.json() == {"detail": "internal error"}
    assert response.headers["x-request-id"]


@pytest.mark.parametrize("audio_format", sorted(CONTENT_TYPES))
async def test_content_type_follows_the_format(
    mesh: FakeMesh, client: httpx.AsyncClient, audio_format: str
) -> None:
    response = await client.post(
        SPEECH, json={"input": "hi", "response_format": audio_format}, headers=auth_header()
    )
    assert response.status_code == 200
    assert response.headers["content-type"] == CONTENT_TYPES[audio_format]
    assert response.content.startswith(f"{audio_format}:0;".encode())
    assert mesh.synth.requests[-1].audio_format == audio_format


def test_content_types_are_the_registered_ones() -> None:
    assert CONTENT_TYPES == {
        "mp3": "audio/mpeg",
        "opus": "audio/ogg",
        "aac": "audio/aac",
        "flac": "audio/flac",
        "wav": "audio/wav",
        "pcm": "audio/pcm",
    }


async def test_openai_fields_reach_synth(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    body = {
        "model": "tts-1-hd",
        "input": "hi",
        "voice": {"id": "af_bella(2)+af_sky(1)"},
        "speed": 1.5,
        "instructions": "whisper, please",  # accepted, ignored
        "some_future_field": True,
    }
    response = await client.post(SPEECH, json=body, headers=auth_header())
    assert response.status_code == 200
    request = mesh.synth.requests[-1]
    assert request.model == "tts-1-hd"
    assert request.voice == "af_bella(2)+af_sky(1)"
    assert request.speed == 1.5


async def test_no_voice_means_the_default_voice(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    await client.post(SPEECH, json={"input": "hi"}, headers=auth_header())
    assert mesh.synth.requests[-1].voice == "af_heart"


async def test_sse_events_carry_the_audio_then_usage(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    response = await client.post(
        SPEECH,
        json={"input": "héllo 👋", "stream_format": "sse", "response_format": "wav"},
        headers=auth_header(),
    )
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/event-stream")
    blocks = response.text.split("\n\n")
    assert blocks[-1] == ""
    events = [json.loads(block.removeprefix("data: ")) for block in blocks[:-1]]
    deltas, done = events[:-1], events[-1]
    assert {event["type"] for event in deltas} == {"speech.audio.delta"}
    assert all(set(event) == {"type", "audio"} for event in deltas)
    audio = b"".join(base64.b64decode(event["audio"]) for event in deltas)
    assert audio == b"wav:0;wav:1;wav:2;"
    assert done == {
        "type": "speech.audio.done",
        "usage": {"input_tokens": 7, "output_tokens": 0, "total_tokens": 7, "characters": 7},
    }
    assert mesh.ledger.captured() == 7


async def test_balance(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    mesh.ledger.unlimited.add("acct_test")
    response = await client.get("/v1/balance", headers=auth_header())
    assert response.json() == {"balance": 1000, "unlimited": True}


async def test_models_in_openai_list_shape_with_aliases(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/models", headers=auth_header(GOOD_KEY))
    body = response.json()
    assert body["object"] == "list"
    assert [m["id"] for m in body["data"]] == ["kokoro", "tts-1", "tts-1-hd", "gpt-4o-mini-tts"]
    for model in body["data"]:
        assert set(model) == {"id", "object", "created", "owned_by", "description"}
        assert model["object"] == "model" and isinstance(model["created"], int)
        # Which weights speak is the synth's to say; the gateway passes it on for every alias.
        assert model["description"] == body["data"][0]["description"] != ""


async def test_voices_are_listed_and_cached(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    first = await client.get("/v1/audio/voices", headers=auth_header())
    await client.get("/v1/audio/voices", headers=auth_header())
    voices = first.json()["voices"]
    assert voices[0] == {
        "id": "af_heart",
        "name": "af_heart",
        "language": "en-us",
        "gender": "female",
        "kind": "builtin",
        "target": "",
        "word_timestamps": True,
    }
    blend = next(v for v in voices if v["id"] == "af")
    assert (blend["kind"], blend["target"]) == ("blend", "af_bella(1)+af_sarah(1)")
    assert mesh.synth.list_calls == 1


async def test_listing_with_synth_down_is_503(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    mesh.synth.serving = False
    response = await client.get("/v1/audio/voices", headers=auth_header())
    assert response.status_code == 503
    assert response.headers["x-should-retry"] == "true"


async def test_health_and_readiness(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    assert (await client.get("/healthz")).json() == {"status": "ok"}
    assert (await client.get("/readyz")).status_code == 200
    mesh.synth.serving = False
    not_ready = await client.get("/readyz")
    assert not_ready.status_code == 503
    assert "synth" in not_ready.json()["detail"]
    mesh.synth.serving = True
    mesh.app.state.draining.set()
    assert (await client.get("/readyz")).status_code == 503


async def test_openapi_describes_the_contract(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    assert document["components"]["securitySchemes"]["apiKey"] == {
        "type": "http",
        "scheme": "bearer",
        "bearerFormat": "kp_live_…",
        "description": "Your kokoro-pay API key: `Authorization: Bearer kp_live_…`.",
    }
    # Either header authenticates: two alternatives (OpenAPI ORs the list's entries).
    either_key: list[dict[str, list[str]]] = [{"apiKey": []}, {"apiKeyHeader": []}]
    assert document["components"]["securitySchemes"]["apiKeyHeader"] == {
        "type": "apiKey",
        "in": "header",
        "name": "X-API-Key",
        "description": "The same key in the hosted listing's header: `X-API-Key: kp_live_…`.",
    }
    speech = document["paths"][SPEECH]["post"]
    assert speech["security"] == either_key
    assert speech["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/SpeechRequest"
    }
    assert set(speech["responses"]) == {
        "200", "400", "401", "402", "409", "429", "502", "503", "504"
    }  # fmt: skip
    assert "Retry-After" in speech["responses"]["429"]["headers"]
    assert set(speech["responses"]["200"]["content"]) == {
        *CONTENT_TYPES.values(),
        "text/event-stream",
    }
    for status in ("400", "401", "402", "502"):
        error = speech["responses"][status]
        assert error["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/ErrorBody"
        }
        assert "x-should-retry" in error["headers"]
    schemas = document["components"]["schemas"]
    assert "HTTPValidationError" not in schemas
    assert schemas["SpeechRequest"]["properties"]["input"]["maxLength"] == 4096
    assert schemas["SpeechRequest"]["required"] == ["input"]
    for path in ("/v1/balance", "/v1/models", "/v1/audio/voices"):
        assert document["paths"][path]["get"]["security"] == either_key
    for path in ("/healthz", "/readyz"):
        assert "security" not in document["paths"][path]["get"]


async def test_server_timing_separates_the_gateway_from_the_model(
    client: httpx.AsyncClient,
) -> None:
    speech = await client.post(SPEECH, json={"input": "hi"}, headers=auth_header())
    balance = await client.get("/v1/balance", headers=auth_header())
    phases = [entry.split(";")[0] for entry in speech.headers["server-timing"].split(", ")]
    assert phases == ["auth", "catalog", "reserve", "synth"]
    assert all(";dur=" in entry for entry in speech.headers["server-timing"].split(", "))
    assert balance.headers["server-timing"].startswith("auth;dur=")
    assert "ledger;dur=" in balance.headers["server-timing"]


def _escaped(text: str) -> str:
    """JSON with every code point written as \\uXXXX escapes (surrogate pairs above U+FFFF)."""
    return json.dumps(text, ensure_ascii=True)


async def test_the_largest_legitimate_body_fits_under_the_cap(http: httpx.AsyncClient) -> None:
    # 4,096 astral code points and a full `instructions`, all escaped: the biggest honest body.
    emoji = "\U0001f600" * 4096
    body = f'{{"input": {_escaped(emoji)}, "instructions": {_escaped(emoji)}}}'.encode()
    assert len(body) > 64 * 1024

    response = await http.post(
        SPEECH, content=body, headers={**auth_header(), "content-type": "application/json"}
    )

    # Read and understood whole: priced at 4,096 credits (the fake account holds 1,000).
    assert response.status_code == 402
    assert "costs 4096 credits" in response.json()["detail"]


async def test_an_oversized_body_is_413_in_the_envelope_over_real_http(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    huge = b'{"input": "' + b"a" * 2_000_000 + b'"}'
    declared = await http.post(SPEECH, content=huge, headers=auth_header())

    async def chunked():  # no Content-Length: counted as it arrives
        for start in range(0, len(huge), 65536):
            yield huge[start : start + 65536]

    streamed = await http.post(SPEECH, content=chunked(), headers=auth_header())

    for response in (declared, streamed):
        detail = assert_client_error(response, 413)
        assert "larger than 131072 bytes" in detail
    assert mesh.ledger.calls == [] and mesh.synth.requests == []
