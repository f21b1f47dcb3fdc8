"""Buying credits: the billing page, the checkout it opens, and the provider's webhook.

Where no payment provider is configured the page says how to get credits from the operator.
The webhook is the one route without a session or CSRF token: the provider's signature is its
proof, and a bad one is a 400 that grants nothing.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import JSONResponse, RedirectResponse, Response

from services.dashboard import csrf
from services.dashboard.clients import BackendError, Backends
from services.dashboard.pages import content_security_policy, render
from services.dashboard.payments import BadEvent, PaymentProvider
from services.dashboard.sessions import Session, signed_in

router = APIRouter()
SignedIn = Annotated[Session, Depends(signed_in)]
FormText = Annotated[str, Form()]
_log = logging.getLogger("dashboard.billing")
# Stripe's events are a few kilobytes; anything much larger is not one.
MAX_EVENT_BYTES = 64 * 1024


def _provider(request: Request) -> PaymentProvider | None:
    provider: PaymentProvider | None = request.app.state.payments
    return provider


async def _billing_page(
    request: Request, session: Session, status_code: int = 200, **context: Any
) -> Response:
    balance = await request.app.state.backends.balance(session.account.id)
    provider = _provider(request)
    page = render(
        request,
        "billing.html",
        session=session,
        balance=balance,
        offer=provider.offer if provider else None,
        active="billing",
        status_code=status_code,
        **context,
    )
    if provider is not None:
        page.headers["Content-Security-Policy"] = content_security_policy(provider.checkout_origin)
    return page


@router.get("/billing")
async def billing_page(request: Request, session: SignedIn, paid: str = "") -> Response:
    notice = "Thank you: your credits appear here once the payment is confirmed." if paid else ""
    return await _billing_page(request, session, notice=notice)


@router.post("/billing/checkout")
async def start_checkout(
    request: Request, session: SignedIn, packs: FormText = "1", csrf_token: FormText = ""
) -> Response:
    provider = _provider(request)
    if provider is None:
        return RedirectResponse("/billing", status_code=303)
    offer = provider.offer
    if not csrf.matches(session.token, csrf_token):
        return render(
            request,
            "error.html",
            session=session,
            status_code=403,
            message="This form has expired. Reload the page and try again.",
        )
    count = int(packs) if re.fullmatch(r"[0-9]{1,4}", packs) else 0
    if not 1 <= count <= offer.max_packs:
        errors = {"packs": f"Choose between 1 and {offer.max_packs} packs."}
        return await _billing_page(request, session, 400, errors=errors)
    base = request.app.state.settings.public_url.rstrip("/")
    checkout = await provider.start_checkout(
        session.account.id,
        session.user.email,
        count,
        success_url=f"{base}/billing?paid=1",
        cancel_url=f"{base}/billing",
    )
    return RedirectResponse(checkout.url, status_code=303)


@router.post("/billing/webhook")
async def payment_webhook(request: Request) -> Response:
    provider = _provider(request)
    if provider is None:
        return JSONResponse({"detail": "no payment provider is configured"}, status_code=404)
    payload = await request.body()
    if len(payload) > MAX_EVENT_BYTES:
        return JSONResponse({"detail": "event too large"}, status_code=413)
    try:
        paid = provider.paid_checkout(payload, request.headers.get("stripe-signature", ""))
    except BadEvent as error:
        _log.warning("webhook refused: %s", error)
        return JSONResponse({"detail": "invalid signature or event"}, status_code=400)
    if paid is None:
        return JSONResponse({"received": True})
    if paid.credits < 1 or paid.amount_cents < 1:
        # Signed by the provider, so ours, yet nothing to grant: say so loudly and let an
        # operator look; the provider retries.
        _log.error("a paid checkout with nothing to grant", extra={"event": paid.event_id})
        return JSONResponse({"detail": "the payment names no credits"}, status_code=422)
    backends: Backends = request.app.state.backends
    try:
        granted = await backends.grant_top_up(paid.account_id, paid.credits, paid.event_id)
    except BackendError as error:
        # Stripe retries for days; an operator must hear of anything but a passing outage.
        level = logging.WARNING if error.code == grpc.StatusCode.UNAVAILABLE else logging.ERROR
        _log.log(level, "top-up not granted: %s", error, extra={"event": paid.event_id})
        return JSONResponse({"detail": "the credits could not be granted yet"}, status_code=503)
    _log.info("top-up", extra={"event": paid.event_id, "replayed": granted.replayed})
    return JSONResponse({"received": True, "granted": not granted.replayed})
