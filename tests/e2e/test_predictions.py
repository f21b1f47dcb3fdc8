"""The hosted listing's prediction API, as its own curl lines use it, against the mesh as
processes: create with X-API-Key, poll until success, download the output without a key;
signed webhooks that are retried; cancel refunds (docs/architecture.md, "Predictions")."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import httpx
import pytest
from standardwebhooks import Webhook

from services.cli.admin import AdminClient
from tests.e2e.conftest import NewCustomer, balance_becomes, decode

pytestmark = [pytest.mark.model, pytest.mark.slow]

# The listing's example request, word for word.
LISTING_TEXT = (
    "Hi, welcome to Eachlabs AI! We are here to help you discover the power of artificial "
    "intelligence and provide you with the best experience."
)


async def poll_until_done(http: httpx.AsyncClient, key: str, prediction_id: str) -> Any:
    deadline = time.monotonic() + 180
    while True:
        answer = await http.get(f"/prediction/{prediction_id}", headers={"X-API-Key": key})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        if body["status"] != "processing":
            return body
        assert time.monotonic() < deadline, body
        await asyncio.sleep(0.5)


async def test_the_listings_curl_lines_work_as_written(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=1_000)
    created = await http.post(
        "/prediction/",
        headers={"X-API-Key": customer.key, "Content-Type": "application/json"},
        json={"model": "kokoro-82m", "input": {"text": LISTING_TEXT}},
    )
    assert created.status_code == 200, created.text
    body = created.json()
    assert body["status"] == "success" and body["message"] == "Prediction created successfully"

    done = await poll_until_done(http, customer.key, body["predictionID"])
    assert done["status"] == "success", done
    assert done["predictionID"] == body["predictionID"]
    assert done["metrics"]["predict_time"] > 0

    async with httpx.AsyncClient() as anonymous:  # the output URL needs no key
        audio = await anonymous.get(done["output"])
        assert audio.status_code == 200
        assert audio.headers["content-type"] == "audio/mpeg"
        assert int(audio.headers["content-length"]) == len(audio.content)
        assert decode(audio.content, "mp3").seconds > 3  # about 8 s of speech
        part = await anonymous.get(done["output"], headers={"Range": "bytes=0-99"})
        assert part.status_code == 206 and part.content == audio.content[:100]
        forged = await anonymous.get(done["output"].replace("signature=", "signature=x"))
        assert forged.status_code == 403
    await balance_becomes(http, customer, 1_000 - len(LISTING_TEXT))


class Receiver:
    """A customer's webhook endpoint that fails its first `failures` deliveries."""

    def __init__(self, failures: int) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802 - http.server's naming
                body = self.rfile.read(int(self.headers.get("content-length", "0")))
                receiver.deliveries.append(({k.lower(): v for k, v in self.headers.items()}, body))
                self.send_response(500 if len(receiver.deliveries) <= failures else 204)
                self.send_header("content-length", "0")
                self.end_headers()

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/kokoro"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    receiver = Receiver(failures=2)
    yield receiver
    receiver.server.shutdown()


async def test_a_signed_webhook_is_retried_until_the_receiver_takes_it(
    http: httpx.AsyncClient, new_customer: NewCustomer, admin: AdminClient, receiver: Receiver
) -> None:
    customer = await new_customer(credits=1_000)
    created = await http.post(
        "/prediction",
        headers={"X-API-Key": customer.key},
        json={
            "model": "kokoro-82m",
            "input": {"text": "Webhooks are on their way.", "voice": "af_bella", "speed": 0.5},
            "webhook_url": receiver.url,
        },
    )
    assert created.status_code == 200, created.text
    prediction_id = created.json()["predictionID"]
    deadline = time.monotonic() + 180
    while len(receiver.deliveries) < 3:
        assert time.monotonic() < deadline, receiver.deliveries
        await asyncio.sleep(0.2)

    ids = {headers["webhook-id"] for headers, _ in receiver.deliveries}
    assert len(ids) == 1, ids  # the same id on every retry
    secret = await admin.webhook_secret(customer.account_id)
    headers, body = receiver.deliveries[-1]
    payload = Webhook(secret).verify(body, headers)
    assert payload == json.loads(body)
    assert payload["exec_id"] == prediction_id and payload["status"] == "succeeded"
    assert payload["error"] == "" and payload["output"].startswith("http")
    await asyncio.sleep(2.5)
    assert len(receiver.deliveries) == 3  # taken: no more


async def test_a_webhook_to_a_private_address_is_refused_unless_allowed(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    # The local run allows private receivers (PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS=true); what is
    # never a receiver is anything but http(s).
    customer = await new_customer(credits=100)
    refused = await http.post(
        "/prediction",
        headers={"X-API-Key": customer.key},
        json={"model": "kokoro-82m", "input": {"text": "x"}, "webhook_url": "file:///etc/passwd"},
    )
    assert refused.status_code == 400
    assert refused.json()["status"] == "error"


async def test_a_cancelled_prediction_is_refunded(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=5_000)
    long_text = " ".join(f"Sentence {n} keeps the worker busy for a while." for n in range(40))
    created = await http.post(
        "/prediction/",
        headers={"X-API-Key": customer.key},
        json={"model": "kokoro-82m", "input": {"text": long_text}},
    )
    assert created.status_code == 200, created.text
    prediction_id = created.json()["predictionID"]
    cancelled = await http.post(
        f"/prediction/{prediction_id}/cancel", headers={"X-API-Key": customer.key}
    )
    assert cancelled.status_code == 200
    done = await poll_until_done(http, customer.key, prediction_id)
    assert done["status"] == "error" and "cancel" in done["message"]
    await balance_becomes(http, customer, 5_000)


async def test_another_accounts_prediction_is_unknown(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    owner, stranger = await new_customer(credits=100), await new_customer(credits=100)
    created = await http.post(
        "/prediction/",
        headers={"X-API-Key": owner.key},
        json={"model": "kokoro-82m", "input": {"text": "Mine."}},
    )
    prediction_id = created.json()["predictionID"]
    for request in (
        http.get(f"/prediction/{prediction_id}", headers={"X-API-Key": stranger.key}),
        http.post(f"/prediction/{prediction_id}/cancel", headers={"X-API-Key": stranger.key}),
    ):
        answer = await request
        assert answer.status_code == 404 and answer.json()["status"] == "error"
    await poll_until_done(http, owner.key, prediction_id)


async def test_a_create_retried_under_its_idempotency_key_is_one_prediction_paid_once(
    http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    """A client that lost the answer to its create (a timeout, a 5xx) sends it again with the
    same Idempotency-Key: it gets the same prediction and pays once; the key with another
    request is refused and changes nothing."""
    customer = await new_customer(credits=1_000)
    headers = {"X-API-Key": customer.key, "Idempotency-Key": "order-2026-11-30-0001"}
    order = {"model": "kokoro-82m", "input": {"text": LISTING_TEXT}}
    first = await http.post("/prediction/", headers=headers, json=order)
    again = await http.post("/prediction/", headers=headers, json=order)
    assert first.status_code == again.status_code == 200, (first.text, again.text)
    prediction_id = first.json()["predictionID"]
    assert again.json()["predictionID"] == prediction_id

    other = {"model": "kokoro-82m", "input": {"text": LISTING_TEXT, "speed": 1.5}}
    refused = await http.post("/prediction/", headers=headers, json=other)
    assert refused.status_code == 400, refused.text
    assert "Idempotency-Key" in refused.json()["message"]

    done = await poll_until_done(http, customer.key, prediction_id)
    assert done["status"] == "success", done
    await balance_becomes(http, customer, 1_000 - len(LISTING_TEXT))
