"""Webhook tries counted once each, without a database: `delivered` and `refused` where the try
is made, a try that did not deliver by the retry strategy, as `failed` or, the last, `gave_up`.
(Creates, finishes and the queue's depth are the integration tests', on real processes.)"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import pytest
from procrastinate.jobs import Job

from services.predictions import metrics
from services.predictions.jobs import RetryWebhookUntil
from services.predictions.signing import UrlSigner
from services.predictions.store import Prediction, PredictionStore
from services.predictions.webhooks import (
    Delivery,
    WebhookDeliverer,
    WebhookNotDelivered,
    WebhookSender,
    WebhookUrlRefused,
)
from tests.support.metrics import scrape

WEBHOOKS = "kokoropay_predictions_webhook_attempts_total"
PREDICTION = Prediction(
    id="pred_01HZZZZZZZZZZZZZZZZZZZZZZZ",
    account_id="acct_1",
    key_id="key_1",
    status="error",
    text="hello",
    voice="af_sky",
    speed=1.0,
    output_format="mp3",
    webhook_url="https://hooks.example.test/in",
    characters=5,
    hold_id="hold_1",
    job_id=1,
    message="synthesis failed",
    details="boom",
    predict_time=None,
    create_time=datetime(2026, 4, 6, tzinfo=UTC),
    finish_time=datetime(2026, 4, 6, tzinfo=UTC),
    output_expire_time=None,
    settle_time=None,
)


class FakeStore:
    async def load(self, prediction_id: str) -> Prediction:
        return PREDICTION

    async def webhook_secret(self, account_id: str) -> Any:
        return SimpleNamespace(secret="whsec_" + "A" * 43)


class FakeSender:
    def __init__(self, answer: Delivery | Exception) -> None:
        self.answer = answer

    async def send(self, url: str, secret: str, msg_id: str, body: bytes) -> Delivery:
        if isinstance(self.answer, Exception):
            raise self.answer
        return self.answer


def _deliverer(answer: Delivery | Exception) -> WebhookDeliverer:
    return WebhookDeliverer(
        cast(PredictionStore, FakeStore()),
        UrlSigner("secret", "https://api.example.test"),
        cast(WebhookSender, FakeSender(answer)),
    )


@pytest.mark.parametrize(
    ("answer", "outcome"),
    [
        (Delivery(True, 204), "delivered"),
        (WebhookUrlRefused("resolves to a private address (10.0.0.1)"), "refused"),
    ],
    ids=["delivered", "refused"],
)
async def test_a_try_that_ends_the_webhook_is_counted_where_it_is_made(
    answer: Delivery | Exception, outcome: str
) -> None:
    before = scrape()
    await _deliverer(answer).deliver(PREDICTION.id, attempts=0)
    after = scrape()
    assert after.delta(before, WEBHOOKS, outcome=outcome) == 1
    assert after.delta(before, WEBHOOKS) == 1


async def test_a_try_that_did_not_deliver_is_left_to_the_retry_strategy() -> None:
    before = scrape()
    with pytest.raises(WebhookNotDelivered):
        await _deliverer(Delivery(False, 500, "answered 500")).deliver(PREDICTION.id, 0)
    assert scrape().delta(before, WEBHOOKS) == 0


@pytest.mark.parametrize(
    ("seconds_left", "outcome"), [(3600.0, "failed"), (0.0, "gave_up")], ids=["again", "last"]
)
def test_the_retry_strategy_counts_a_failed_try_once(seconds_left: float, outcome: str) -> None:
    job = Job(
        id=1,
        queue="webhooks",
        lock=None,
        queueing_lock=None,
        task_name="deliver_webhook",
        task_kwargs={"prediction_id": PREDICTION.id, "deadline": time.time() + seconds_left},
        attempts=2,
    )
    before = scrape()
    decision = RetryWebhookUntil(0.2, 1.0).get_retry_decision(
        exception=WebhookNotDelivered("answered 500"), job=job
    )
    after = scrape()
    assert (decision is None) == (outcome == "gave_up")
    assert after.delta(before, WEBHOOKS, outcome=outcome) == 1
    assert after.delta(before, WEBHOOKS) == 1


@pytest.mark.parametrize(
    ("status", "message", "expected"),
    [
        ("success", None, "succeeded"),
        ("error", "synthesis failed", "failed"),
        ("error", "expired", "failed"),
        ("error", "cancelled", "cancelled"),
    ],
)
def test_a_finished_rows_status_as_the_metrics_name_it(
    status: str, message: str | None, expected: str
) -> None:
    assert metrics.finished_status(status, message) == expected
    assert expected in metrics.STATUSES
