"""The gateway's metrics over fakes: requests by route template and status, the first audio
byte timed once, audio relayed by format, characters charged as the ledger captured them and
refunded by how the request ended, 402s and 429s by kind, and no key, account or text in any
label. Metrics live in the test process's registry and only grow: each test compares two
scrapes."""

from __future__ import annotations

import asyncio

import httpx
import pytest
from prometheus_client import REGISTRY, generate_latest

from services.gateway import metrics
from services.gateway.billing import Outcome
from services.gateway.clients import AudioPiece, KeyUse, SynthesisRequest
from tests.support.gateway_fakes import (
    ACCOUNT,
    GOOD_KEY,
    FakeKeyLimits,
    FakeMesh,
    Step,
    auth_header,
    fake_key,
    pieces_with,
    synth_error,
)
from tests.support.gateway_fixtures import eventually
from tests.support.metrics import Exposition, scrape

SPEECH = "/v1/audio/speech"
CREATE = "/v1/prediction/"
TEXT = "The quick brown fox."
REQUESTS = "kokoropay_gateway_http_requests_total"
FIRST_AUDIO = "kokoropay_gateway_first_audio_seconds_count"
CHARGED = "kokoropay_gateway_characters_charged_total"
REFUNDED = "kokoropay_gateway_characters_refunded_total"


def timed_pieces(request: SynthesisRequest) -> list[Step]:
    """Three pieces of 0.5 s of audio each, the last one reaching the whole text."""
    n = len(request.text)
    return [AudioPiece(b"x" * (10 * (i + 1)), (n * (i + 1)) // 3, 0.5) for i in range(3)]


async def _counted(before: Exposition, name: str, expected: float, **labels: str) -> Exposition:
    """A scrape once `name` has grown by `expected`: the middleware counts as the response
    ends, settlement just after."""
    latest = scrape()

    def grown() -> bool:
        nonlocal latest
        latest = scrape()
        return latest.delta(before, name, **labels) >= expected

    await eventually(grown)
    return latest


async def test_a_stream_counts_its_route_first_audio_bytes_seconds_and_charge(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.synth.script = timed_pieces
    before = scrape()
    captured_before = mesh.ledger.captured()
    response = await client.post(
        SPEECH, json={"input": TEXT, "response_format": "flac"}, headers=auth_header()
    )
    assert response.status_code == 200
    after = await _counted(before, CHARGED, len(TEXT))

    route = {"route": SPEECH, "method": "POST"}
    assert after.delta(before, REQUESTS, status="200", **route) == 1
    assert after.delta(before, "kokoropay_gateway_http_request_seconds_count", **route) == 1
    assert after.delta(before, FIRST_AUDIO) == 1
    assert after.delta(before, "kokoropay_gateway_audio_bytes_total", format="flac") == 60
    assert after.delta(before, "kokoropay_gateway_audio_bytes_total") == 60
    assert after.delta(before, "kokoropay_gateway_audio_seconds_total") == pytest.approx(1.5)
    # What the ledger captured, no more, and nothing refunded.
    assert after.delta(before, CHARGED) == mesh.ledger.captured() - captured_before == len(TEXT)
    assert after.delta(before, REFUNDED) == 0
    assert after.total("kokoropay_gateway_active_streams") == 0


async def test_sse_counts_the_audio_bytes_before_base64(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.synth.script = timed_pieces
    before = scrape()
    body = {"input": TEXT, "response_format": "pcm", "stream_format": "sse"}
    response = await client.post(SPEECH, json=body, headers=auth_header())
    assert response.status_code == 200
    after = await _counted(before, CHARGED, len(TEXT))
    assert after.delta(before, "kokoropay_gateway_audio_bytes_total", format="pcm") == 60
    assert after.delta(before, FIRST_AUDIO) == 1


async def test_a_synth_failure_before_audio_is_a_refund_marked_failed_and_no_charge(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    mesh.synth.script = lambda request: [synth_error()]
    before = scrape()
    response = await client.post(SPEECH, json={"input": TEXT}, headers=auth_header())
    assert response.status_code == 502
    after = await _counted(before, REFUNDED, len(TEXT), outcome="failed")

    assert after.delta(before, REFUNDED, outcome="failed") == len(TEXT)
    assert after.delta(before, REFUNDED) == len(TEXT)
    assert after.delta(before, CHARGED) == 0
    assert after.delta(before, FIRST_AUDIO) == 0
    assert after.delta(before, REQUESTS, route=SPEECH, status="502") == 1
    assert mesh.ledger.captured() == 0


async def test_a_client_that_leaves_pays_for_what_it_got_and_the_rest_is_refunded(
    mesh: FakeMesh, http: httpx.AsyncClient
) -> None:
    text = "hello world"  # in pieces of 3, 7 and 11 characters
    mesh.synth.script = pieces_with(asyncio.Event(), after=2)  # 7 of them, then never
    before = scrape()
    async with http.stream("POST", SPEECH, json={"input": text}, headers=auth_header()) as reply:
        received = b""
        async for chunk in reply.aiter_raw():
            received += chunk
            if received == b"mp3:0;mp3:1;":
                streaming = scrape()
                break
    after = await _counted(before, REFUNDED, 4, outcome="client_left")

    assert streaming.delta(before, "kokoropay_gateway_active_streams") == 1
    assert after.delta(before, "kokoropay_gateway_active_streams") == 0
    assert after.delta(before, CHARGED) == mesh.ledger.captured() == 7
    assert after.delta(before, REFUNDED, outcome="client_left") == 4
    assert after.delta(before, FIRST_AUDIO) == 1
    assert after.delta(before, "kokoropay_gateway_audio_bytes_total", format="mp3") == 12
    # A stream cut short still counts as the 200 it started as.
    assert after.delta(before, REQUESTS, route=SPEECH, method="POST", status="200") == 1


@pytest.mark.parametrize("checkpointed", [0, 3], ids=["expired", "checkpoint-captured"])
async def test_a_lapsed_hold_charged_anew_counts_only_what_the_settlement_captured(
    mesh: FakeMesh, client: httpx.AsyncClient, checkpointed: int
) -> None:
    gate = asyncio.Event()
    mesh.synth.script = pieces_with(gate, after=1)
    before = scrape()
    speaking = asyncio.ensure_future(
        client.post(SPEECH, json={"input": TEXT}, headers=auth_header())
    )
    await eventually(lambda: bool(mesh.ledger.holds) and bool(mesh.synth.streams))
    # The ledger missed every checkpoint but the last: the hold lapses before its capture.
    [hold] = mesh.ledger.holds.values()
    hold.checkpointed = checkpointed
    mesh.ledger.expire_before_capture = True
    gate.set()
    assert (await speaking).status_code == 200
    after = await _counted(before, CHARGED, len(TEXT) - checkpointed)

    assert len(mesh.ledger.holds) == 2  # the lapsed one and the late charge
    assert mesh.ledger.captured() == len(TEXT)
    # The lapse's capture of the checkpoint is the ledger's to count (its expiry metrics): the
    # gateway counts the late charge alone, so the two added up count each credit once.
    assert after.delta(before, CHARGED) == len(TEXT) - checkpointed
    assert after.delta(before, REFUNDED) == 0


async def test_402s_are_counted_by_endpoint(mesh: FakeMesh, client: httpx.AsyncClient) -> None:
    mesh.ledger.balances[ACCOUNT] = 3
    before = scrape()
    speech = await client.post(SPEECH, json={"input": TEXT}, headers=auth_header())
    created = await client.post(
        CREATE, json={"input": {"text": TEXT}}, headers={"X-API-Key": GOOD_KEY}
    )
    assert (speech.status_code, created.status_code) == (402, 402)
    after = scrape()
    required = "kokoropay_gateway_payment_required_total"
    assert after.delta(before, required, endpoint="speech") == 1
    assert after.delta(before, required, endpoint="prediction") == 1
    assert after.delta(before, REQUESTS, route=CREATE, method="POST", status="402") == 1


@pytest.mark.parametrize("gateway_settings", [{"invalid_keys_per_address": 1}])
async def test_429s_are_counted_by_the_limit_that_refused(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    limited = "kokoropay_gateway_rate_limited_total"
    before = scrape()
    # The key's speech requests a minute: one.
    mesh.auth.limits[KeyUse.SPEECH] = FakeKeyLimits(1, 100)
    assert (await client.post(SPEECH, json={"input": TEXT}, headers=auth_header())).is_success
    second = await client.post(SPEECH, json={"input": TEXT}, headers=auth_header())
    assert second.status_code == 429
    # Streams at once: none.
    mesh.auth.limits[KeyUse.SPEECH] = FakeKeyLimits(1000, 0)
    mesh.auth.windows.clear()
    third = await client.post(SPEECH, json={"input": TEXT}, headers=auth_header())
    assert third.status_code == 429
    # Invalid keys from one address: the second refused before auth.
    wrong = {"Authorization": f"Bearer {fake_key('z')}"}
    assert (await client.get("/v1/models", headers=wrong)).status_code == 401
    assert (await client.get("/v1/models", headers=wrong)).status_code == 429
    after = scrape()

    assert after.delta(before, limited, limit="requests") == 1
    assert after.delta(before, limited, limit="concurrency") == 1
    assert after.delta(before, limited, limit="invalid_keys") == 1
    assert after.delta(before, REQUESTS, route=SPEECH, status="429") == 2
    assert after.delta(before, REQUESTS, route="/v1/models", method="GET", status="429") == 1


async def test_routes_are_templates_and_unknown_paths_are_other(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    before = scrape()
    await client.get("/v1/prediction/pred_0001", headers={"X-API-Key": GOOD_KEY})
    await client.get("/wp-admin/setup-config.php")
    await client.request("BREW", "/v1/models")
    # Refused before routing (its Content-Length is over the limit), still named by its route.
    assert (await client.post(SPEECH, content=b" " * 200_000)).status_code == 413
    after = scrape()

    prediction = {"route": "/v1/prediction/{prediction_id}", "method": "GET"}
    assert after.delta(before, REQUESTS, status="404", **prediction) == 1
    assert after.delta(before, REQUESTS, route="other", method="GET", status="404") == 1
    assert after.delta(before, REQUESTS, route="/v1/models", method="other", status="405") == 1
    assert after.delta(before, REQUESTS, route=SPEECH, method="POST", status="413") == 1
    routes = after.label_values("route")
    assert not any("pred_0001" in route or "wp-admin" in route for route in routes)
    assert after.label_values("method") <= {
        "GET",
        "HEAD",
        "POST",
        "PUT",
        "PATCH",
        "DELETE",
        "OPTIONS",
        "other",
    }


async def test_no_key_account_or_text_is_in_any_label(
    mesh: FakeMesh, client: httpx.AsyncClient
) -> None:
    secret_text = "Zebras whisper quietly."
    await client.post(SPEECH, json={"input": secret_text}, headers=auth_header())
    await client.post(CREATE, json={"input": {"text": secret_text}}, headers=auth_header())
    mesh.ledger.balances[ACCOUNT] = 0
    await client.post(SPEECH, json={"input": secret_text}, headers=auth_header())
    await client.get("/v1/models", headers={"Authorization": f"Bearer {fake_key('q')}"})
    await client.get(f"/v1/prediction/{GOOD_KEY}", headers=auth_header())
    exposition = generate_latest(REGISTRY).decode()

    principal = mesh.auth.keys[GOOD_KEY]
    for secret in (GOOD_KEY, fake_key("q"), principal.key_id, principal.account_id, "Zebras"):
        assert secret not in exposition
    for hold in mesh.ledger.holds:
        assert hold not in exposition


def test_the_refund_outcomes_are_the_settlement_outcomes() -> None:
    assert set(metrics.SETTLEMENT_OUTCOMES) == {outcome.value for outcome in Outcome}
