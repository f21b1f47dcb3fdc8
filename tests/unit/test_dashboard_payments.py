"""Reading Stripe's webhook events: only a genuine, paid checkout becomes a grant."""

from __future__ import annotations

import hashlib
import hmac
import json
import time

import pytest

from services.dashboard.payments import BadEvent, Offer, StripePayments, payments_from
from services.dashboard.settings import DashboardSettings
from tests.support.fake_stripe import WEBHOOK_SECRET, completed_checkout_event, signed

OFFER = Offer(credits_per_pack=10_000, cents_per_pack=500, currency="usd", max_packs=100)
SESSION = {
    "line_items[0][price_data][currency]": "usd",
    "client_reference_id": "acct_1",
    "metadata[account_id]": "acct_1",
    "metadata[credits]": "30000",
    "metadata[amount_cents]": "1500",
    "metadata[currency]": "usd",
}


@pytest.fixture
def stripe_payments() -> StripePayments:
    return StripePayments("sk_test_x", WEBHOOK_SECRET, OFFER, api_base="http://127.0.0.1:9")


def test_a_signed_paid_checkout_names_the_account_packs_and_amount(
    stripe_payments: StripePayments,
) -> None:
    event = completed_checkout_event(SESSION, "cs_1", amount_total=1500, event_id="evt_1")
    paid = stripe_payments.paid_checkout(*signed(event))
    assert paid is not None
    assert (paid.event_id, paid.account_id, paid.credits, paid.amount_cents, paid.currency) == (
        "evt_1",
        "acct_1",
        30_000,
        1500,
        "usd",
    )


def test_a_delayed_payment_grants_when_it_succeeds(stripe_payments: StripePayments) -> None:
    event = completed_checkout_event(SESSION, "cs_1", amount_total=1500)
    event["data"]["object"]["payment_status"] = "unpaid"
    assert stripe_payments.paid_checkout(*signed(event)) is None  # completed, not yet paid
    event["type"] = "checkout.session.async_payment_succeeded"
    event["data"]["object"]["payment_status"] = "paid"
    assert stripe_payments.paid_checkout(*signed(event)) is not None


def test_blank_secrets_leave_payments_off() -> None:
    settings = DashboardSettings(stripe_secret_key=" ", stripe_webhook_secret="whsec_x")
    assert payments_from(settings) is None
    assert payments_from(DashboardSettings()) is None


def test_other_events_and_unpaid_checkouts_grant_nothing(stripe_payments: StripePayments) -> None:
    event = completed_checkout_event(SESSION, "cs_1", amount_total=1500)
    assert stripe_payments.paid_checkout(*signed({**event, "type": "charge.refunded"})) is None
    event["data"]["object"]["payment_status"] = "unpaid"
    assert stripe_payments.paid_checkout(*signed(event)) is None


@pytest.mark.parametrize(
    "mangle",
    [
        lambda body, header: (body, header.replace("v1=", "v1=00")),  # wrong signature
        lambda body, header: (body + b" ", header),  # another body
        lambda body, header: (body, ""),  # no signature
    ],
)
def test_a_bad_signature_is_a_bad_event(stripe_payments: StripePayments, mangle: object) -> None:
    body, header = signed(completed_checkout_event(SESSION, "cs_1", amount_total=1500))
    with pytest.raises(BadEvent):
        stripe_payments.paid_checkout(*mangle(body, header))  # type: ignore[operator]


def test_an_old_event_correctly_signed_is_refused(stripe_payments: StripePayments) -> None:
    event = completed_checkout_event(SESSION, "cs_1", amount_total=1500)
    payload = json.dumps(event).encode()
    then = int(time.time()) - 3600
    mac = hmac.new(WEBHOOK_SECRET.encode(), f"{then}.".encode() + payload, hashlib.sha256)
    with pytest.raises(BadEvent):
        stripe_payments.paid_checkout(payload, f"t={then},v1={mac.hexdigest()}")


def test_a_paid_amount_unlike_the_checkouts_is_refused(stripe_payments: StripePayments) -> None:
    cheap = completed_checkout_event(SESSION, "cs_1", amount_total=1)
    with pytest.raises(BadEvent):
        stripe_payments.paid_checkout(*signed(cheap))


def test_a_signed_event_without_the_fields_is_a_bad_event(stripe_payments: StripePayments) -> None:
    event = completed_checkout_event(SESSION, "cs_1", amount_total=1500)
    del event["data"]["object"]["metadata"]
    with pytest.raises(BadEvent):
        stripe_payments.paid_checkout(*signed(event))
