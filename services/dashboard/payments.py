"""Buying credits: a payment-provider interface, and Stripe behind it.

The dashboard never decides that money arrived. A purchase starts as a hosted checkout page at
the provider (Checkout Session); the credits are granted only when the provider's signed
event says it was paid, through the ledger's GrantTopUp, which grants each event once however
often it is delivered. What a pack costs and holds comes from settings when the checkout opens;
the dashboard writes the account and the credits bought into the session's metadata, which only
it can set and Stripe signs back in the event. So a price changed in between does not change a
purchase already made: the customer gets what they paid for.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any, Protocol

import stripe

from services.dashboard.settings import DashboardSettings

# A checkout paid at once completes paid; one paid by a delayed method (a bank debit) completes
# unpaid and is paid later, with the second event. Each event grants at most once, and only a
# paid session grants at all, so the two never grant the same purchase twice.
PAID_EVENTS = ("checkout.session.completed", "checkout.session.async_payment_succeeded")


class BadEvent(Exception):
    """A webhook delivery that is not a genuine, well-formed event from the provider."""


@dataclass(frozen=True)
class Checkout:
    id: str
    # Where to send the browser to pay.
    url: str


@dataclass(frozen=True)
class PaidCheckout:
    """A completed, paid checkout: what the ledger is asked to grant."""

    event_id: str
    account_id: str
    credits: int
    amount_cents: int
    currency: str


@dataclass(frozen=True)
class Offer:
    """What one pack costs and holds (DASHBOARD_TOPUP_* settings)."""

    credits_per_pack: int
    cents_per_pack: int
    currency: str
    max_packs: int


class PaymentProvider(Protocol):
    offer: Offer
    # Where start_checkout's URLs lead: the billing page's form may be redirected there (its
    # Content-Security-Policy's form-action names it).
    checkout_origin: str

    async def start_checkout(
        self, account_id: str, email: str, packs: int, success_url: str, cancel_url: str
    ) -> Checkout: ...

    def paid_checkout(self, payload: bytes, signature: str) -> PaidCheckout | None:
        """The paid checkout an event reports; None for an event that grants nothing (another
        type, or not paid yet); BadEvent for a bad signature or shape."""
        ...


class StripePayments:
    """Stripe Checkout, one line item per purchase: `packs` × the pack's price."""

    def __init__(
        self, secret_key: str, webhook_secret: str, offer: Offer, *, api_base: str | None = None
    ) -> None:
        addresses: Any = {"api": api_base} if api_base else None
        self._client = stripe.StripeClient(
            secret_key,
            base_addresses=addresses,
            http_client=stripe.HTTPXClient(),
            max_network_retries=2,
        )
        self._webhook_secret = webhook_secret
        self.offer = offer
        # Stripe's hosted checkout; a stand-in API (tests) serves its own pages.
        self.checkout_origin = _origin(api_base) if api_base else "https://checkout.stripe.com"

    async def start_checkout(
        self, account_id: str, email: str, packs: int, success_url: str, cancel_url: str
    ) -> Checkout:
        offer = self.offer
        session = await self._client.v1.checkout.sessions.create_async(
            params={
                "mode": "payment",
                "customer_email": email,
                "client_reference_id": account_id,
                "line_items": [
                    {
                        "quantity": packs,
                        "price_data": {
                            "currency": offer.currency,
                            "unit_amount": offer.cents_per_pack,
                            "product_data": {
                                "name": f"{offer.credits_per_pack:,} kokoro-pay credits"
                            },
                        },
                    }
                ],
                "metadata": {
                    "account_id": account_id,
                    "credits": str(packs * offer.credits_per_pack),
                    # What the credits cost: checked against what Stripe says was paid.
                    "amount_cents": str(packs * offer.cents_per_pack),
                    "currency": offer.currency,
                },
                "success_url": success_url,
                "cancel_url": cancel_url,
            }
        )
        return Checkout(id=session.id, url=str(session.url))

    def paid_checkout(self, payload: bytes, signature: str) -> PaidCheckout | None:
        try:
            # Checks the HMAC and that the event is at most five minutes old (replays of old
            # deliveries are refused here; the ledger refuses repeats of recent ones).
            stripe.WebhookSignature.verify_header(payload, signature, self._webhook_secret, 300)
            event = json.loads(payload)
        except (stripe.SignatureVerificationError, ValueError) as error:
            raise BadEvent(str(error)) from error
        if not isinstance(event, dict) or event.get("type") not in PAID_EVENTS:
            return None
        try:
            session = event["data"]["object"]
            if session.get("payment_status") != "paid":
                return None  # delayed methods complete later with another event
            metadata = session["metadata"]
            if (
                int(session["amount_total"]) != int(metadata["amount_cents"])
                or str(session["currency"]).lower() != str(metadata["currency"]).lower()
            ):
                raise BadEvent("the amount paid is not what the checkout asked")
            return PaidCheckout(
                event_id=str(event["id"]),
                account_id=str(metadata["account_id"]),
                credits=int(metadata["credits"]),
                amount_cents=int(session["amount_total"]),
                currency=str(session["currency"]),
            )
        except (KeyError, TypeError, ValueError) as error:
            raise BadEvent(f"a checkout.session.completed without {error}") from error


def payments_from(settings: DashboardSettings) -> PaymentProvider | None:
    """Stripe when both of its secrets are set; else None (the billing page then says how to get
    credits from the operator)."""
    secret_key = settings.stripe_secret_key.get_secret_value() if settings.stripe_secret_key else ""
    webhook_secret = (
        settings.stripe_webhook_secret.get_secret_value() if settings.stripe_webhook_secret else ""
    )
    # Empty counts as unset: a Secret with a blank value must not switch payments on.
    if not secret_key.strip() or not webhook_secret.strip():
        return None
    offer = Offer(
        credits_per_pack=settings.topup_credits_per_pack,
        cents_per_pack=settings.topup_cents_per_pack,
        currency=settings.topup_currency,
        max_packs=settings.topup_max_packs,
    )
    return StripePayments(
        secret_key.strip(),
        webhook_secret.strip(),
        offer,
        api_base=settings.stripe_api_base,
    )


def _origin(url: str) -> str:
    scheme, _, rest = url.partition("://")
    return f"{scheme}://{rest.split('/', 1)[0]}"
