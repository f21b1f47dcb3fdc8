"""The hosted listing's prediction API at the gateway, over fakes: create, poll, cancel, the
output URL with its byte ranges, the listing's error envelope, and either key header everywhere."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import grpc
import httpx
import pytest

from services.gateway.clients import Principal, UpstreamError
from services.gateway.output import ByteRange, parse_range
from services.gateway.protocol import CONTENT_TYPES
from tests.support.gateway_fakes import (
    GOOD_KEY,
    REVOKED_KEY,
    FakeMesh,
    api_key_header,
    auth_header,
    fake_key,
    output_signature,
)

CREATE = "/v1/prediction/"
AUDIO = b"0123456789abcdefghij"  # what the fake worker stores: 20 bytes
OTHER_KEY = fake_key("o")


def body(text: str = "Hello there.", **fields: Any) -> dict[str, Any]:
    spoken = {"text": text, **{k: v for k, v in fields.items() if k != "webhook_url"}}
    request: dict[str, Any] = {"model": "kokoro-82m", "input": spoken}
    if "webhook_url" in fields:
        request["webhook_url"] = fields["webhook_url"]
    return request


def assert_listing_error(response: httpx.Response, status: int, details: str) -> str:
    """The listing's envelope with the status, its code and the retry hint; the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    assert response.headers["x-request-id"]
    assert response.headers["x-should-retry"] == ("true" if status >= 500 else "false")
    answer = response.json()
    assert list(answer) == ["status", "message", "details"]
    assert answer["status"] == "error" and answer["details"] == details
    assert isinstance(answer["message"], str) and answer["message"]
    return str(answer["message"])


async def create(client: httpx.AsyncClient, **fields: Any) -> str:
    response = await client.post(CREATE, json=body(**fields), headers=api_key_header())
    assert response.status_code == 200, response.text
    return str(response.json()["predictionID"])


async def finished(mesh: FakeMesh, client: httpx.AsyncClient, audio: bytes = AUDIO) -> str:
    """A prediction that succeeded with `audio`; its output URL."""
    prediction_id = await create(client)
    prediction = await mesh.predictions.succeed(prediction_id, audio)
    return prediction.output_url


# --- create ------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", ["/v1/prediction/", "/v1/prediction"])
@pytest.mark.parametrize("headers", [api_key_header(), auth_header()], ids=["x-api-key", "bearer"])
async def test_create_answers_as_the_listing_and_reserves_the_text(
    mesh: FakeMesh, client: httpx.AsyncClient, path: str, headers: dict[str, str]
) -> None:
    text = "Hi, welcome to kokoro-pay! 👋"
    response = await client.post(
        path, json={"model": "kokoro-82m", "input": {"text": text}}, headers=headers
    )

    assert response.status_code == 200
    assert response.json() == {
        "status": "success",
        "message": "Prediction created successfully",
        "predictionID": "pred_0001",
    }
    ((principal, spoken, webhook),) = mesh.predictions.creates
    assert principal == Principal("acct_test", "key_good")
    # The listing's defaults: voice af, speed 1, and mp3.
    assert (spoken.text, spoken.voice, spoken.speed, spoken.output_format) == (text, "af", 1, "mp3")
    assert webhook == ""
    assert mesh.ledger.balance_of() == 1000 - len(text)  # code points


async def test_every_input_field_reaches_the_service(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    fields = {"voice": "af_bella(2)+af_sky(1)", "speed": 5, "output_format": "wav"}
    await create(client, webhook_url="https://hooks.example/tts", **fields)
    await create(client, voice="af_sky", speed=0.5, some_future_field=True)

    (_, first, webhook), (_, second, _) = mesh.predictions.creates
    assert (first.voice, first.speed, first.output_format) == ("af_bella(2)+af_sky(1)", 5, "wav")
    assert webhook == "https://hooks.example/tts"
    assert (second.voice, second.speed) == ("af_sky", 0.5)


async def test_the_model_may_be_left_out_or_spelled_as_on_the_listing_page(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    for model in (None, "Kokoro-82M"):
        request = {"input": {"text": "Hi."}} | ({"model": model} if model else {})
        response = await client.post(CREATE, json=request, headers=api_key_header())
        assert response.status_code == 200
    assert len(mesh.predictions.creates) == 2


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        (b'{"model": "kokoro-82m", "input": {"text": "hi"},', "invalid JSON"),
        (b"", "body is required"),
        (b"[1]", "JSON object"),
        (b'{"model": "kokoro-82m"}', "`input` is required"),
        (b'{"input": "hi"}', "input"),
        (b'{"input": {}}', "`input.text` is required"),
        (b'{"input": {"text": ""}}', "input.text"),
        (b'{"input": {"text": "   "}}', "must not be empty"),
        (b'{"input": {"text": 42}}', "input.text"),
        (b'{"input": {"text": "hi", "speed": 0.4}}', "input.speed"),
        (b'{"input": {"text": "hi", "speed": 5.1}}', "input.speed"),
        (b'{"input": {"text": "hi", "speed": "fast"}}', "input.speed"),
        (b'{"input": {"text": "hi", "output_format": "ogg"}}', "input.output_format"),
        (b'{"input": {"text": "hi", "voice": "nobody"}}', "unknown voice 'nobody'"),
        (b'{"input": {"text": "hi", "voice": "af_sky((2)"}}', "cannot read"),
        (b'{"input": {"text": "hi"}, "webhook_url": "ftp://x.example/"}', "webhook_url"),
        (b'{"input": {"text": "hi"}, "webhook_url": "not a url"}', "webhook_url"),
        (b'{"input": {"text": "hi"}, "webhook_url": "http://[::1"}', "webhook_url"),
        (json.dumps(body("x" * 4097)).encode(), "limit is 4096"),
    ],
)
async def test_invalid_input_is_a_400_in_the_listing_envelope(
    mesh: FakeMesh, client: httpx.AsyncClient, content: bytes, expected: str
) -> None:
    response = await client.post(
        CREATE, content=content, headers={**api_key_header(), "content-type": "application/json"}
    )
    assert expected in assert_listing_error(response, 400, "invalid_input")
    # Nothing was asked of the service, nothing reserved.
    assert mesh.predictions.creates == [] and mesh.ledger.calls == []


async def test_an_unknown_model_is_a_404(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    response = await client.post(
        CREATE, json={"model": "flux-dev", "input": {"text": "hi"}}, headers=api_key_header()
    )
    assert "kokoro-82m" in assert_listing_error(response, 404, "model_not_found")
    assert mesh.predictions.creates == []


async def test_a_malformed_body_is_a_400_even_without_a_key(client: httpx.AsyncClient) -> None:
    response = await client.post(CREATE, json={"input": {}})
    assert_listing_error(response, 400, "invalid_input")


async def test_short_of_credits_is_a_402_naming_the_billing_page_and_the_cost(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.ledger.balances["acct_test"] = 3
    response = await client.post(CREATE, json=body("Hello"), headers=api_key_header())
    message = assert_listing_error(response, 402, "insufficient_credits")
    assert message == (
        "Insufficient credits — top up your balance at http://127.0.0.1:8080/billing. "
        "This request costs 5 credits (one per character of input)."
    )
    assert mesh.ledger.balance_of() == 3


async def test_a_refused_webhook_url_is_a_400_with_the_services_reason(
    client: httpx.AsyncClient,
) -> None:
    response = await client.post(
        CREATE, json=body(webhook_url="http://169.254.169.254/x"), headers=api_key_header()
    )
    assert_listing_error(response, 400, "webhook_url_refused")


async def test_an_empty_webhook_url_means_none(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    await create(client, webhook_url="")
    assert mesh.predictions.creates[0][2] == ""


@pytest.mark.parametrize(
    ("failure", "status", "details"),
    [
        (UpstreamError("predictions", grpc.StatusCode.UNAVAILABLE, "down"), 503, "unavailable"),
        (
            UpstreamError("predictions", grpc.StatusCode.UNAVAILABLE, "warming", "NOT_SERVING"),
            503,
            "unavailable",
        ),
        (UpstreamError("predictions", grpc.StatusCode.INTERNAL, "bug"), 502, "upstream_error"),
        (
            UpstreamError("predictions", grpc.StatusCode.DEADLINE_EXCEEDED, "slow"),
            504,
            "upstream_timeout",
        ),
    ],
)
async def test_service_failures_are_retryable_5xx(
    mesh: FakeMesh,
    client: httpx.AsyncClient,
    failure: UpstreamError,
    status: int,
    details: str,
) -> None:
    mesh.predictions.failures.append(failure)
    response = await client.post(CREATE, json=body(), headers=api_key_header())
    message = assert_listing_error(response, status, details)
    assert "predictions" in message and "bug" not in message  # no insides in a 5xx


async def test_synth_lists_unreachable_is_a_503(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    mesh.synth.serving = False
    response = await client.post(CREATE, json=body(), headers=api_key_header())
    assert_listing_error(response, 503, "unavailable")
    assert mesh.predictions.creates == []


async def test_an_idempotency_key_travels_with_the_request_as_understood(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    keyed = api_key_header() | {"Idempotency-Key": "order-42"}
    first = await client.post(CREATE, json=body(voice="af_sky"), headers=keyed)
    # Spelled otherwise, understood alike: the defaults written out, the voice padded.
    again = await client.post(
        CREATE,
        json=body(voice=" af_sky ", speed=1, output_format="mp3", webhook_url=""),
        headers=keyed,
    )
    await client.post(CREATE, json=body(), headers=api_key_header())

    assert first.status_code == again.status_code == 200
    assert first.json() == again.json()
    sent, repeated = mesh.predictions.keyed_creates
    assert sent == repeated and sent.key == "order-42"
    assert [part.partition("=")[0] for part in sent.fingerprint.split(",")] == [
        "input.text", "input.voice", "input.speed", "input.output_format", "webhook_url"
    ]  # fmt: skip
    assert "Hello there." not in sent.fingerprint  # digests, never the text
    # The repeat made nothing: one prediction for the key, one for the create without one.
    assert len(mesh.predictions.predictions) == 2
    assert mesh.ledger.balance_of() == 1000 - 2 * len("Hello there.")


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"text": "Hello there!"}, "input.text"),
        ({"voice": "af_bella"}, "input.voice"),
        ({"speed": 1.5}, "input.speed"),
        ({"output_format": "wav"}, "input.output_format"),
        ({"webhook_url": "https://hooks.example/tts"}, "webhook_url"),
    ],
)
async def test_a_key_reused_for_another_request_is_a_400_naming_what_differs(
    mesh: FakeMesh, client: httpx.AsyncClient, changes: dict[str, Any], field: str
) -> None:
    keyed = api_key_header() | {"Idempotency-Key": "order-42"}
    assert (await client.post(CREATE, json=body(), headers=keyed)).status_code == 200
    refused = await client.post(CREATE, json=body(**changes), headers=keyed)
    message = assert_listing_error(refused, 400, "idempotency_key_reused")
    assert f"(it differs in: {field})" in message
    assert len(mesh.predictions.predictions) == 1


@pytest.mark.parametrize("key", ["k" * 129, "", " padded", "tab\tin-it"])
async def test_a_malformed_idempotency_key_is_a_400_before_the_key_is_checked(
    mesh: FakeMesh, client: httpx.AsyncClient, key: str
) -> None:
    refused = await client.post(CREATE, json=body(), headers={"Idempotency-Key": key})
    message = assert_listing_error(refused, 400, "invalid_input")
    assert "Idempotency-Key" in message
    assert mesh.auth.verified == [] and mesh.predictions.creates == []


# --- poll and cancel ---------------------------------------------------------------------------


async def test_a_processing_prediction(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    prediction_id = await create(client, voice="af_sky", speed=1.5)
    response = await client.get(f"/v1/prediction/{prediction_id}", headers=api_key_header())
    assert response.status_code == 200
    assert response.json() == {
        "status": "processing",
        "predictionID": prediction_id,
        "output": "",
        "metrics": {"predict_time": 0.0},
        "input": {"text": "Hello there.", "voice": "af_sky", "speed": 1.5, "output_format": "mp3"},
        "created_at": "2026-04-06T12:00:00Z",
        "finished_at": None,
        "urls": {"cancel": f"http://gateway.test/v1/prediction/{prediction_id}/cancel"},
    }


async def test_a_successful_prediction_names_its_output(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    prediction_id = await create(client)
    succeeded = await mesh.predictions.succeed(prediction_id)
    response = await client.get(f"/v1/prediction/{prediction_id}", headers=auth_header())
    state = response.json()
    assert state["status"] == "success"
    assert state["output"] == succeeded.output_url != ""
    assert state["metrics"] == {"predict_time": 1.25}
    assert state["finished_at"] == "2026-04-06T12:00:03Z"
    assert "message" not in state and "details" not in state
    assert mesh.ledger.captured() == len("Hello there.")


async def test_a_failed_prediction_says_why(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    prediction_id = await create(client)
    await mesh.predictions.fail(prediction_id, "synthesis failed", "synth: internal")
    state = (await client.get(f"/v1/prediction/{prediction_id}", headers=api_key_header())).json()
    assert state["status"] == "error" and state["output"] == ""
    assert (state["message"], state["details"]) == ("synthesis failed", "synth: internal")
    assert mesh.ledger.balance_of() == 1000  # refunded


async def test_cancel_stops_refunds_and_answers_the_state(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    prediction_id = await create(client)
    response = await client.post(f"/v1/prediction/{prediction_id}/cancel", headers=auth_header())
    assert response.status_code == 200
    state = response.json()
    assert (state["status"], state["message"]) == ("error", "cancelled")
    assert state["finished_at"] == "2026-04-06T12:00:03Z"
    assert mesh.ledger.balance_of() == 1000
    polled = await client.get(f"/v1/prediction/{prediction_id}", headers=auth_header())
    assert polled.json() == state


async def test_cancelling_a_finished_prediction_changes_nothing(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    prediction_id = await create(client)
    await mesh.predictions.succeed(prediction_id)
    response = await client.post(f"/v1/prediction/{prediction_id}/cancel", headers=api_key_header())
    assert response.json()["status"] == "success"
    assert mesh.ledger.captured() == len("Hello there.")


@pytest.mark.parametrize("method", ["GET", "POST"])
async def test_unknown_and_other_accounts_predictions_are_404(
    mesh: FakeMesh, client: httpx.AsyncClient, method: str
) -> None:
    prediction_id = await create(client)
    mesh.auth.keys[OTHER_KEY] = Principal("acct_other", "key_other")
    suffix = "/cancel" if method == "POST" else ""
    for path, key in (
        (f"/v1/prediction/{prediction_id}", OTHER_KEY),
        ("/v1/prediction/pred_9999", GOOD_KEY),
        ("/v1/prediction/" + "p" * 500, GOOD_KEY),  # refused without asking
        ("/v1/prediction/bad%20id", GOOD_KEY),
    ):
        response = await client.request(method, path + suffix, headers=api_key_header(key))
        assert_listing_error(response, 404, "prediction_not_found")
    assert mesh.predictions.predictions[prediction_id].prediction.status.value == "processing"


@pytest.mark.parametrize("gateway_settings", [{"public_url": "https://api.kokoropay.example/"}])
async def test_the_cancel_url_is_built_on_the_public_url(client: httpx.AsyncClient) -> None:
    prediction_id = await create(client)
    state = (await client.get(f"/v1/prediction/{prediction_id}", headers=api_key_header())).json()
    assert state["urls"]["cancel"] == (
        f"https://api.kokoropay.example/v1/prediction/{prediction_id}/cancel"
    )


# --- keys --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("headers", "details"),
    [
        ({}, "missing_api_key"),
        ({"Authorization": "Basic dXNlcjpwYXNz"}, "missing_api_key"),
        ({"X-API-Key": ""}, "missing_api_key"),
        (api_key_header("kp_live_garbled"), "key_invalid"),
        (api_key_header("kp_live_" + "x" * 8000), "key_invalid"),
        (api_key_header(REVOKED_KEY), "key_revoked"),
        ({**auth_header(), **api_key_header(REVOKED_KEY)}, "conflicting_credentials"),
    ],
)
@pytest.mark.parametrize(
    ("method", "path"),
    [
        ("POST", "/v1/prediction/"),
        ("POST", "/v1/prediction"),
        ("GET", "/v1/prediction/pred_0001"),
        ("POST", "/v1/prediction/pred_0001/cancel"),
    ],
)
async def test_every_prediction_endpoint_needs_one_live_key(
    mesh: FakeMesh,
    client: httpx.AsyncClient,
    method: str,
    path: str,
    headers: dict[str, str],
    details: str,
) -> None:
    response = await client.request(method, path, json=body(), headers=headers)
    assert_listing_error(response, 401, details)
    assert mesh.predictions.creates == [] and mesh.ledger.calls == []


@pytest.mark.parametrize(
    "headers",
    [api_key_header(), auth_header(), {**auth_header(), **api_key_header()}],
    ids=["x-api-key", "bearer", "both-the-same"],
)
async def test_speech_and_the_listings_take_either_header(
    mesh: FakeMesh, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    speech = await client.post("/v1/audio/speech", json={"input": "hi"}, headers=headers)
    assert speech.status_code == 200 and speech.content.startswith(b"mp3:0;")
    for path in ("/v1/balance", "/v1/models", "/v1/audio/voices"):
        assert (await client.get(path, headers=headers)).status_code == 200
    assert mesh.ledger.captured() == 2


async def test_two_different_keys_are_refused_in_speechs_own_envelope(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.auth.keys[OTHER_KEY] = Principal("acct_other", "key_other")
    headers = {**auth_header(), **api_key_header(OTHER_KEY)}
    speech = await client.post("/v1/audio/speech", json={"input": "hi"}, headers=headers)
    balance = await client.get("/v1/balance", headers=headers)
    for response in (speech, balance):
        assert response.status_code == 401
        assert response.json() == {
            "detail": "conflicting credentials: `Authorization: Bearer` and `X-API-Key` name "
            "different keys; send one of them"
        }
    assert mesh.ledger.calls == [] and mesh.synth.requests == []


async def test_the_missing_key_message_names_both_headers(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/balance")
    assert response.json() == {
        "detail": "missing API key: send `Authorization: Bearer kp_live_…` or "
        "`X-API-Key: kp_live_…`"
    }


async def test_speech_keeps_openais_speed_range_while_predictions_reach_five(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    speech = await client.post(
        "/v1/audio/speech", json={"input": "hi", "speed": 4.5}, headers=api_key_header()
    )
    assert speech.status_code == 400 and "speed" in speech.json()["detail"]
    await create(client, speed=4.5)
    assert mesh.predictions.creates[0][1].speed == 4.5


# --- the output URL ----------------------------------------------------------------------------


async def test_the_output_needs_no_key_and_is_served_whole(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    url = await finished(mesh, client)
    response = await client.get(url)  # no key
    assert response.status_code == 200
    assert response.content == AUDIO
    assert response.headers["content-type"] == "audio/mpeg"
    assert response.headers["content-length"] == "20"
    assert response.headers["accept-ranges"] == "bytes"
    assert "content-range" not in response.headers
    assert response.headers["content-disposition"] == 'inline; filename="pred_0001.mp3"'
    # Asked for from the start, to the end; sent in pieces, the stream closed after.
    (read,) = mesh.predictions.reads
    assert (read.offset, read.length) == (0, 0)
    assert mesh.predictions.streams[0].taken == 5 and mesh.predictions.streams[0].cancelled


async def test_any_key_sent_with_the_output_url_is_ignored(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    url = await finished(mesh, client)
    response = await client.get(url, headers={**auth_header("junk"), **api_key_header("other")})
    assert response.status_code == 200 and response.content == AUDIO


@pytest.mark.parametrize(
    ("header", "content_range", "content", "read"),
    [
        ("bytes=0-3", "bytes 0-3/20", b"0123", (0, 4)),
        ("bytes=5-9", "bytes 5-9/20", b"56789", (5, 5)),
        ("bytes=5-", "bytes 5-19/20", AUDIO[5:], (5, 0)),
        ("bytes=18-500", "bytes 18-19/20", b"ij", (18, 483)),
        ("bytes=19-19", "bytes 19-19/20", b"j", (19, 1)),
        ("bytes=-5", "bytes 15-19/20", b"fghij", (15, 5)),
        ("bytes=-500", "bytes 0-19/20", AUDIO, (0, 20)),
        ("BYTES = 2 - 3", "bytes 2-3/20", b"23", (2, 2)),
    ],
)
async def test_one_range_is_a_206(
    mesh: FakeMesh,
    client: httpx.AsyncClient,
    header: str,
    content_range: str,
    content: bytes,
    read: tuple[int, int],
) -> None:
    url = await finished(mesh, client)
    response = await client.get(url, headers={"Range": header})
    assert response.status_code == 206
    assert response.headers["content-range"] == content_range
    assert response.headers["content-length"] == str(len(content))
    assert response.headers["accept-ranges"] == "bytes"
    assert response.content == content
    # Only the range travels from the service (a suffix first reads one byte for the size).
    last = mesh.predictions.reads[-1]
    assert (last.offset, last.length) == read
    assert all(stream.cancelled for stream in mesh.predictions.streams)


@pytest.mark.parametrize("refuse_past_the_end", [False, True], ids=["empty-answer", "refused"])
@pytest.mark.parametrize(
    "header", ["bytes=20-", "bytes=20-30", "bytes=99999999999999999999-", "bytes=-0"]
)
async def test_a_range_past_the_end_is_a_416_naming_the_size(
    mesh: FakeMesh, client: httpx.AsyncClient, header: str, refuse_past_the_end: bool
) -> None:
    mesh.predictions.refuse_offsets_past_the_end = refuse_past_the_end
    url = await finished(mesh, client)
    response = await client.get(url, headers={"Range": header})
    assert_listing_error(response, 416, "range_not_satisfiable")
    assert response.headers["content-range"] == "bytes */20"
    assert all(stream.cancelled for stream in mesh.predictions.streams)


@pytest.mark.parametrize(
    "headers",
    [
        {"Range": "bytes=0-1,5-6"},  # several ranges: the whole audio, not multipart
        {"Range": "bytes=0-1, -3"},
        {"Range": "bytes=5-2"},  # last before first: invalid, ignored
        {"Range": "bytes=abc"},
        {"Range": "items=0-5"},
        {"Range": "bytes="},
        {"Range": "bytes=0-3", "If-Range": '"an-etag-we-never-sent"'},
    ],
)
async def test_other_ranges_get_the_whole_audio(
    mesh: FakeMesh, client: httpx.AsyncClient, headers: dict[str, str]
) -> None:
    url = await finished(mesh, client)
    response = await client.get(url, headers=headers)
    assert response.status_code == 200
    assert response.content == AUDIO and response.headers["content-length"] == "20"
    assert "content-range" not in response.headers


async def test_a_header_alone_first_message_is_read_the_same(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.predictions.header_alone = True
    url = await finished(mesh, client)
    whole = await client.get(url)
    ranged = await client.get(url, headers={"Range": "bytes=3-6"})
    assert whole.content == AUDIO
    assert ranged.content == b"3456" and ranged.headers["content-range"] == "bytes 3-6/20"


@pytest.mark.parametrize("audio_format", sorted(CONTENT_TYPES))
async def test_the_content_type_is_the_services(
    mesh: FakeMesh, client: httpx.AsyncClient, audio_format: str
) -> None:
    prediction_id = await create(client, output_format=audio_format)
    done = await mesh.predictions.succeed(prediction_id, AUDIO, CONTENT_TYPES[audio_format])
    response = await client.get(done.output_url)
    assert response.headers["content-type"] == CONTENT_TYPES[audio_format]
    disposition = f'inline; filename="{prediction_id}.{audio_format}"'
    assert response.headers["content-disposition"] == disposition


async def test_an_empty_output_is_a_200_with_no_bytes(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    url = await finished(mesh, client, audio=b"")
    response = await client.get(url)
    assert response.status_code == 200
    assert response.content == b"" and response.headers["content-length"] == "0"
    ranged = await client.get(url, headers={"Range": "bytes=0-"})
    assert_listing_error(ranged, 416, "range_not_satisfiable")
    assert ranged.headers["content-range"] == "bytes */0"


async def test_a_bad_signature_is_a_403(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    url = await finished(mesh, client)
    response = await client.get(url.replace("signature=sig.", "signature=forged."))
    assert_listing_error(response, 403, "signature_invalid")


async def test_an_expired_output_is_a_410(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    prediction_id = await create(client)
    done = await mesh.predictions.succeed(prediction_id, retention=-10)
    response = await client.get(done.output_url)
    assert "expired" in assert_listing_error(response, 410, "output_expired")


async def test_an_unknown_output_is_a_404(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    processing = await create(client)
    for prediction_id in ("pred_9999", processing, "x" * 300):
        expires = 4_000_000_000
        signature = output_signature(prediction_id, expires)
        response = await client.get(
            f"/v1/prediction/{prediction_id}/output",
            params={"expires": expires, "signature": signature},
        )
        assert_listing_error(response, 404, "output_not_found")
    assert len(mesh.predictions.reads) == 2  # the malformed id was not asked about


@pytest.mark.parametrize(
    "query",
    ["", "?expires=1", "?signature=abc", "?expires=-1&signature=abc", "?expires=x&signature=a"],
)
async def test_an_output_url_missing_its_parts_is_a_400(
    mesh: FakeMesh, client: httpx.AsyncClient, query: str
) -> None:
    response = await client.get(f"/v1/prediction/pred_0001/output{query}")
    assert_listing_error(response, 400, "invalid_input")
    assert mesh.predictions.reads == []


async def test_a_service_down_is_a_503_for_the_output(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    url = await finished(mesh, client)
    mesh.predictions.failures.append(
        UpstreamError("predictions", grpc.StatusCode.UNAVAILABLE, "connection refused")
    )
    assert_listing_error(await client.get(url), 503, "unavailable")


@pytest.mark.parametrize("gateway_settings", [{"rpc_timeout_seconds": 0.05}])
async def test_an_output_that_does_not_start_is_a_504(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    url = await finished(mesh, client)
    never = asyncio.Event()
    read_output = mesh.predictions.read_output

    def stalled(request: Any) -> Any:
        stream = read_output(request)
        stream._steps.insert(0, never)
        return stream

    mesh.predictions.read_output = stalled  # type: ignore[method-assign]
    assert_listing_error(await client.get(url), 504, "upstream_timeout")
    assert mesh.predictions.streams[-1].cancelled


async def test_the_output_streams_as_the_service_sends_it(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    """Over real HTTP: the first bytes reach the client while the service still holds the rest."""
    mesh.predictions.public_url = str(http.base_url).rstrip("/")
    url = await finished(mesh, http)
    mesh.predictions.pause_after_first = asyncio.Event()
    async with http.stream("GET", url) as response:
        assert response.status_code == 200 and response.headers["content-length"] == "20"
        chunks = response.aiter_raw()
        assert await anext(chunks) == b"0123"
        assert mesh.predictions.streams[-1].taken == 1
        mesh.predictions.pause_after_first.set()
        rest = b"".join([chunk async for chunk in chunks])
    assert rest == AUDIO[4:]


async def test_an_output_that_breaks_midway_is_cut_not_completed(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    mesh.predictions.public_url = str(http.base_url).rstrip("/")
    url = await finished(mesh, http)
    mesh.predictions.break_after = 2
    with pytest.raises(httpx.RemoteProtocolError):
        await http.get(url)
    assert mesh.predictions.streams[-1].cancelled


# --- the edge: envelopes, limits, the contract ---------------------------------------------------


@pytest.mark.parametrize(
    ("method", "path", "status", "details"),
    [
        ("DELETE", "/v1/prediction/pred_0001", 405, "method_not_allowed"),
        ("GET", "/v1/prediction/", 405, "method_not_allowed"),
        ("GET", "/v1/prediction/pred_0001/nowhere", 404, "not_found"),
    ],
)
async def test_starlettes_own_answers_take_the_listing_envelope_under_its_paths(
    client: httpx.AsyncClient, method: str, path: str, status: int, details: str
) -> None:
    response = await client.request(method, path, headers=api_key_header())
    assert_listing_error(response, status, details)


async def test_an_oversized_body_is_a_413_in_the_listing_envelope(
    client: httpx.AsyncClient,
) -> None:
    huge = json.dumps(body("a" * 200_000)).encode()
    response = await client.post(CREATE, content=huge, headers=api_key_header())
    assert_listing_error(response, 413, "body_too_large")


async def test_an_unexpected_error_is_a_500_in_the_listing_envelope(mesh: FakeMesh) -> None:
    async def broken(*_: object) -> object:
        raise RuntimeError("bug")

    mesh.predictions.get_prediction = broken  # type: ignore[method-assign,assignment]
    transport = httpx.ASGITransport(app=mesh.app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        response = await client.get("/v1/prediction/pred_0001", headers=api_key_header())
    assert response.status_code == 500
    assert response.json() == {
        "status": "error",
        "message": "internal error",
        "details": "internal_error",
    }


async def test_create_reports_its_phases_in_server_timing(client: httpx.AsyncClient) -> None:
    response = await client.post(CREATE, json=body(), headers=api_key_header())
    phases = [entry.split(";")[0] for entry in response.headers["server-timing"].split(", ")]
    assert phases == ["auth", "catalog", "predictions"]


async def test_openapi_documents_the_prediction_api(client: httpx.AsyncClient) -> None:
    document = (await client.get("/openapi.json")).json()
    paths = document["paths"]
    either_key: list[dict[str, list[str]]] = [{"apiKey": []}, {"apiKeyHeader": []}]
    error_schema = {"$ref": "#/components/schemas/PredictionErrorBody"}
    for path in ("/v1/prediction/", "/v1/prediction"):
        create_operation = paths[path]["post"]
        assert create_operation["security"] == either_key
        assert set(create_operation["responses"]) == {
            "200", "400", "401", "402", "404", "429", "502", "503", "504"
        }  # fmt: skip
        assert create_operation["requestBody"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/PredictionRequest"
        }
        (idempotency_key,) = create_operation["parameters"]
        assert (idempotency_key["name"], idempotency_key["in"]) == ("Idempotency-Key", "header")
        assert idempotency_key["schema"]["anyOf"][0]["maxLength"] == 128
    for method, path in (
        ("get", "/v1/prediction/{prediction_id}"),
        ("post", "/v1/prediction/{prediction_id}/cancel"),
    ):
        operation = paths[path][method]
        assert operation["security"] == either_key
        assert operation["responses"]["200"]["content"]["application/json"]["schema"] == {
            "$ref": "#/components/schemas/PredictionState"
        }
        assert (
            operation["responses"]["404"]["content"]["application/json"]["schema"] == error_schema
        )
    output = paths["/v1/prediction/{prediction_id}/output"]["get"]
    assert "security" not in output
    assert set(output["responses"]) == {
        "200", "206", "400", "403", "404", "410", "416", "502", "503", "504"
    }  # fmt: skip
    audio_types = {*CONTENT_TYPES.values(), "application/octet-stream"}
    assert set(output["responses"]["200"]["content"]) == audio_types
    assert set(output["responses"]["206"]["content"]) == audio_types
    assert "content-range" in output["responses"]["206"]["headers"]
    assert output["responses"]["416"]["content"]["application/json"]["schema"] == error_schema
    parameters = {parameter["name"]: parameter for parameter in output["parameters"]}
    assert parameters["expires"]["required"] and parameters["signature"]["required"]
    assert not parameters["Range"]["required"]
    schemas = document["components"]["schemas"]
    spoken = schemas["PredictionRequestInput"]["properties"]
    assert spoken["text"]["maxLength"] == 4096
    assert (spoken["speed"]["minimum"], spoken["speed"]["maximum"]) == (0.5, 5.0)
    assert spoken["voice"]["default"] == "af"
    assert schemas["PredictionErrorBody"]["required"] == ["status", "message", "details"]
    assert schemas["PredictionCreated"]["required"] == ["status", "message", "predictionID"]
    assert document["components"]["securitySchemes"]["apiKeyHeader"]["name"] == "X-API-Key"


# --- Range parsing on its own --------------------------------------------------------------------


@pytest.mark.parametrize(
    ("header", "if_range", "expected"),
    [
        (None, None, None),
        ("bytes=0-0", None, ByteRange(first=0, last=0)),
        ("bytes=10-", None, ByteRange(first=10)),
        ("bytes=-7", None, ByteRange(suffix=7)),
        ("Bytes=1-2", None, ByteRange(first=1, last=2)),
        ("bytes=1-2", "Wed, 21 Oct 2015 07:28:00 GMT", None),
        ("bytes=1-2,4-5", None, None),
        ("bytes=2-1", None, None),
        ("bytes=-", None, None),
        ("bytes=١-٢", None, None),  # digits are ASCII digits
        ("bytes=0-1\x00", None, None),
    ],
)
def test_parse_range(header: str | None, if_range: str | None, expected: ByteRange | None) -> None:
    assert parse_range(header, if_range) == expected


@pytest.mark.parametrize(
    ("wanted", "size", "selected"),
    [
        (ByteRange(first=0, last=9), 20, (0, 10)),
        (ByteRange(first=15, last=99), 20, (15, 5)),
        (ByteRange(first=20), 20, None),
        (ByteRange(suffix=5), 20, (15, 5)),
        (ByteRange(suffix=50), 20, (0, 20)),
        (ByteRange(suffix=0), 20, None),
        (ByteRange(suffix=5), 0, None),
    ],
)
def test_a_range_selects_within_the_size(
    wanted: ByteRange, size: int, selected: tuple[int, int] | None
) -> None:
    assert wanted.select(size) == selected


def test_a_hostile_range_header_is_read_in_bounded_time_and_served_whole() -> None:
    import time

    from services.gateway.output import parse_range

    for header in (
        "bytes=1-" + "\t" * 60_000 + "x",
        "bytes=" + "9" * 5_000 + "-",
        "bytes= 0 - 9 ",
    ):
        started = time.perf_counter()
        parse_range(header)
        assert time.perf_counter() - started < 0.01, header[:20]
    assert parse_range("bytes=" + "9" * 5_000 + "-") is None
    assert parse_range("bytes= 0 - 9 ") is not None
