"""The account's webhook signing secret: read it to verify prediction webhooks, rotate it.

Webhooks of the prediction API are signed per the Standard Webhooks specification with this
secret (the predictions service keeps it). Rotating replaces it at once: webhooks sent from then
on, retries of earlier ones included, carry the new signature.
"""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from services.dashboard import csrf
from services.dashboard.pages import render
from services.dashboard.sessions import Session, signed_in

router = APIRouter()
SignedIn = Annotated[Session, Depends(signed_in)]
FormText = Annotated[str, Form()]


@router.get("/webhooks")
async def webhooks_page(request: Request, session: SignedIn, rotated: str = "") -> Response:
    secret = await request.app.state.backends.webhook_secret(session.account.id)
    notice = "A new secret is in use: update your receivers." if rotated else ""
    return render(
        request, "webhooks.html", session=session, secret=secret, notice=notice, active="webhooks"
    )


@router.get("/webhooks/rotate")
async def rotate_page(request: Request, session: SignedIn) -> Response:
    return render(request, "webhooks_rotate.html", session=session, active="webhooks")


@router.post("/webhooks/rotate")
async def rotate(request: Request, session: SignedIn, csrf_token: FormText = "") -> Response:
    if not csrf.matches(session.token, csrf_token):
        return render(
            request,
            "error.html",
            session=session,
            status_code=403,
            message="This form has expired. Reload the page and try again.",
        )
    await request.app.state.backends.webhook_secret(session.account.id, rotate=True)
    return RedirectResponse("/webhooks?rotated=1", status_code=303)
