"""The service's guards on their own, no process needed: where webhooks may go, how retries
spread out, what an output URL's signature accepts, which settings fit together."""

from __future__ import annotations

import ipaddress
import random

import pytest

from services.predictions.settings import PredictionsSettings
from services.predictions.signing import SignatureInvalid, UrlSigner
from services.predictions.webhooks import (
    WebhookHostUnresolved,
    WebhookUrlRefused,
    check_webhook_url,
    payload,
    refusal,
    retry_delay,
    signed_headers,
)


@pytest.mark.parametrize(
    ("address", "why"),
    [
        ("127.0.0.1", "loopback"),
        ("10.0.0.8", "private"),
        ("192.168.1.1", "private"),
        ("172.16.0.1", "private"),
        ("169.254.169.254", "link-local"),
        ("100.64.0.1", "not public"),
        ("224.0.0.1", "multicast"),
        ("0.0.0.0", "unspecified"),
        ("::1", "loopback"),
        ("fe80::1", "link-local"),
        ("fc00::1", "private"),
        ("::ffff:10.0.0.1", "private"),
        ("93.184.215.14", None),
        ("2606:4700::6810:84e5", None),
    ],
)
def test_refused_addresses(address: str, why: str | None) -> None:
    assert refusal(ipaddress.ip_address(address)) == why


async def test_checked_urls_keep_their_host_and_connect_to_the_address() -> None:
    target = await check_webhook_url("https://93.184.215.14:8443/h?x=1", allow_private=False)
    assert target.request_url(target.addresses[0]) == "https://93.184.215.14:8443/h?x=1"
    assert target.host_header == "93.184.215.14:8443"
    local = await check_webhook_url("http://localhost/hook", allow_private=True)
    assert all(refusal(address) == "loopback" for address in local.addresses)
    assert local.host_header == "localhost" and local.path == "/hook"
    with pytest.raises(WebhookUrlRefused, match="loopback"):
        await check_webhook_url("http://localhost/hook", allow_private=False)
    for bad in ("ftp://example.com/", "http:///nohost", "http://user:pw@example.com/"):
        with pytest.raises(WebhookUrlRefused):
            await check_webhook_url(bad, allow_private=True)
    # A name that does not resolve now may later: retried at delivery, refused at create.
    with pytest.raises(WebhookHostUnresolved, match="does not resolve"):
        await check_webhook_url("http://no-such-host.invalid/", allow_private=True)


def test_ipv4_inside_ipv6_and_site_local_addresses_are_refused() -> None:
    import ipaddress

    for text, kind in (
        ("::ffff:127.0.0.1", "loopback"),
        ("2002:7f00:1::", "loopback"),  # 6to4 of 127.0.0.1
        ("2002:a00:1::", "private"),  # 6to4 of 10.0.0.1
        ("fec0::1", "site-local"),
    ):
        assert refusal(ipaddress.ip_address(text)) == kind, text


def test_retries_back_off_with_jitter_up_to_the_cap() -> None:
    rng = random.Random(7)
    for attempt, ceiling in [(0, 30), (1, 60), (2, 120), (7, 3600), (40, 3600)]:
        delays = [retry_delay(attempt, 30, 3600, rng) for _ in range(200)]
        assert all(ceiling / 2 <= delay <= ceiling for delay in delays)
        assert len(set(delays)) > 100  # spread, not in lockstep


def test_payload_and_headers_are_standard_webhooks() -> None:
    from standardwebhooks import Webhook

    secret = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw" + "0123456789a="
    body = payload("pred_X", False, "", "cancelled")
    assert body == b'{"exec_id":"pred_X","status":"failed","output":"","error":"cancelled"}'
    import time

    headers = signed_headers(secret, "msg_pred_X", body, int(time.time()))
    assert Webhook(secret).verify(body, headers)["exec_id"] == "pred_X"


def test_output_url_signatures() -> None:
    signer = UrlSigner("s3cret", "https://api.example/")
    url = signer.url("pred_A", 1700000000)
    signature = url.rsplit("signature=", 1)[1]
    assert url.startswith("https://api.example/v1/prediction/pred_A/output?expires=1700000000&")
    assert "=" not in signature and len(signature) == 43
    signer.check("pred_A", 1700000000, signature)
    signer.check("pred_A", 1700000000, signature + "=")  # padded base64url is the same
    for prediction_id, expires, given in [
        ("pred_B", 1700000000, signature),
        ("pred_A", 1700000001, signature),
        ("pred_A", 1700000000, signature[:-1] + ("A" if signature[-1] != "A" else "B")),
        ("pred_A", 1700000000, ""),
        ("pred_A", 1700000000, "é" * 43),
    ]:
        with pytest.raises(SignatureInvalid):
            signer.check(prediction_id, expires, given)
    with pytest.raises(SignatureInvalid):
        UrlSigner("another", "https://api.example").check("pred_A", 1700000000, signature)


@pytest.mark.parametrize(
    ("env", "problem"),
    [
        ({"PREDICTIONS_CHECKPOINT_INTERVAL_SECONDS": "700"}, "CHECKPOINT_INTERVAL"),
        ({"PREDICTIONS_STALLED_WORKER_SECONDS": "5"}, "twice"),
        ({"PREDICTIONS_STALLED_WORKER_SECONDS": "590"}, "HOLD_EXTEND"),
        ({"PREDICTIONS_HOLD_TTL_SECONDS": "30000"}, "hold_ttl"),
        ({"PREDICTIONS_PUBLIC_BASE_URL": "ftp://x"}, "http"),
    ],
)
def test_settings_that_do_not_fit_together_are_refused(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], problem: str
) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nowhere/db")
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=f"(?i){problem}"):
        PredictionsSettings()


def test_default_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://nowhere/db")
    settings = PredictionsSettings()
    assert (settings.port, settings.worker_health_port) == (50054, 50065)
    assert settings.output_retention_seconds == 86400
    assert settings.public_base_url == "http://127.0.0.1:8000"
    assert (settings.webhook_timeout_seconds, settings.webhook_retry_hours) == (30, 24)
    assert (settings.max_input_chars, settings.allow_private_webhooks) == (4096, False)


async def test_a_receiver_cannot_hold_a_worker_nor_fill_its_memory() -> None:
    import asyncio
    import time

    from services.predictions.webhooks import WebhookSender

    async def trickle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        await reader.read(65536)
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-length: 1000000000\r\n\r\n")
        for _ in range(100):  # a byte now and then, for ever as far as the sender knows
            writer.write(b"x")
            await writer.drain()
            await asyncio.sleep(0.2)

    server = await asyncio.start_server(trickle, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    sender = WebhookSender(timeout=1.0, allow_private=True)
    try:
        started = time.monotonic()
        delivery = await sender.send(f"http://127.0.0.1:{port}/h", "whsec_" + "A" * 43, "m", b"{}")
        # The status is all that is read: a 2xx, in well under the trickle's 20 s.
        assert delivery.delivered and time.monotonic() - started < 2.0
    finally:
        await sender.close()
        server.close()
