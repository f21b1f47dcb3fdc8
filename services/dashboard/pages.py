"""Rendering a page: the templates, what every page knows, and the headers every page carries."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import Request
from fastapi.templating import Jinja2Templates
from starlette.responses import HTMLResponse

from services.dashboard import csrf
from services.dashboard.sessions import Session

TEMPLATES = Jinja2Templates(directory=Path(__file__).with_name("templates"))


def content_security_policy(form_targets: str = "") -> str:
    """No script or style from anywhere but here, no framing; forms post only back here (and,
    on the billing page, may be redirected on to the payment provider's checkout)."""
    return (
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        "media-src 'self' blob:; connect-src 'self'; frame-ancestors 'none'; "
        f"form-action 'self'{' ' + form_targets if form_targets else ''}; base-uri 'none'; "
        "object-src 'none'"
    )


SECURITY_HEADERS = {
    "Content-Security-Policy": content_security_policy(),
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "same-origin",
    "X-Frame-Options": "DENY",
    # Pages show balances and keys: never from a shared cache or the back button's copy.
    "Cache-Control": "no-store",
}


def render(
    request: Request,
    template: str,
    *,
    session: Session | None = None,
    status_code: int = 200,
    form_token: str | None = None,
    **context: Any,
) -> HTMLResponse:
    """The page `template`; forms get the session's CSRF token, or `form_token` signed out."""
    settings = request.app.state.settings
    response = TEMPLATES.TemplateResponse(
        request,
        template,
        {
            "session": session,
            "csrf_field": csrf.FIELD,
            "csrf_token": session.csrf_token if session else (form_token or ""),
            "signup_enabled": settings.signup_enabled,
            "api_url": settings.public_api_url,
            "status_code": status_code,
            **context,
        },
        status_code=status_code,
    )
    return response
