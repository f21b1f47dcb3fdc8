"""Sign up, sign in, sign out, change password.

Every refusal re-renders the form with the message beside the field it concerns (auth names the
field in its ErrorInfo) and the status a browser or a test can tell apart: 400 bad field, 401
wrong password, 403 expired form, 409 email taken, 429 throttled (with Retry-After). Each post
is counted by outcome (services/dashboard/metrics.py).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Annotated, Any

import grpc
from fastapi import APIRouter, Depends, Form, Request
from kokoropay.auth.v1 import auth_pb2
from starlette.responses import RedirectResponse, Response

from services.common.client_address import client_address, throttle_key
from services.dashboard import cookies, csrf, metrics, sessions
from services.dashboard.clients import BackendError, Backends
from services.dashboard.pages import render
from services.dashboard.sessions import Session, signed_in

router = APIRouter()
_log = logging.getLogger("dashboard")
# Pauses before each attempt at opening a new account's balance (a ledger restart takes seconds).
SIGN_UP_LEDGER_RETRIES = (0.0, 0.5, 2.0)
FormText = Annotated[str, Form()]

_EXPIRED_FORM = "This form has expired. Reload the page and try again."
# The metrics' outcome of each refusal status `_refusal` answers.
_REFUSAL_OUTCOMES = {
    400: "invalid",
    401: "wrong_credentials",
    403: "expired_form",
    409: "email_taken",
    429: "throttled",
}


def _presession_secret(request: Request) -> tuple[str, bool]:
    """The browser's pre-session CSRF secret, and whether it is new (to be set as a cookie)."""
    secret = request.app.state.cookies.read(request, cookies.PRESESSION)
    if 20 <= len(secret) <= 64:
        return secret, False
    return csrf.new_presession_secret(), True


def _signed_out_form(
    request: Request, template: str, status_code: int = 200, **context: Any
) -> Response:
    secret, new = _presession_secret(request)
    response = render(
        request,
        template,
        status_code=status_code,
        form_token=csrf.token_for(secret),
        **context,
    )
    if new:
        request.app.state.cookies.set(response, cookies.PRESESSION, secret)
    return response


def _address(request: Request) -> str:
    settings = request.app.state.settings
    peer = request.client.host if request.client else None
    forwarded = request.headers.get("x-forwarded-for")
    return throttle_key(client_address(peer, forwarded, settings.trusted_networks))


def _refusal(error: BackendError) -> tuple[int, dict[str, str], str] | None:
    """Status, field errors and a form-level message for a refused sign-in or sign-up; None for
    a failure that is no refusal (auth failed or is away)."""
    if error.code == grpc.StatusCode.INVALID_ARGUMENT and error.field:
        return 400, {error.field: _sentence(error.message)}, ""
    if error.reason == "CREDENTIALS_INVALID":
        return 401, {"password": "Wrong email or password."}, ""
    if error.reason == "EMAIL_TAKEN":
        return 409, {"email": "An account with this email already exists. Sign in instead."}, ""
    if error.code == grpc.StatusCode.RESOURCE_EXHAUSTED:
        seconds = error.retry_after_seconds
        return 429, {}, f"Too many attempts from your network. Try again in {seconds} s."
    return None


def _sentence(message: str) -> str:
    text = message.strip()
    return (text[:1].upper() + text[1:]).rstrip(".") + "." if text else "Not valid."


def _after_sign_in(request: Request, signed: auth_pb2.SignInResponse) -> Response:
    response = RedirectResponse("/", status_code=303)
    sessions.start(response, signed, request.app.state.cookies)
    return response


@router.get("/signin")
async def sign_in_page(request: Request) -> Response:
    if await sessions.current_session(request):
        return RedirectResponse("/", status_code=303)
    return _signed_out_form(request, "signin.html")


async def _check_credentials(
    request: Request,
    template: str,
    email: str,
    csrf_token: str,
    call: Callable[[str], Awaitable[auth_pb2.SignInResponse]],
    count: Callable[[str], None],
) -> auth_pb2.SignInResponse | Response:
    """Run a signed-out form's call (SignIn or SignUp, given the client's address): its session,
    or the form again with the refusal beside the field it concerns. `count` gets the outcome."""
    if not csrf.matches(request.app.state.cookies.read(request, cookies.PRESESSION), csrf_token):
        count("expired_form")
        return _signed_out_form(request, template, 403, email=email, form_error=_EXPIRED_FORM)
    try:
        signed = await call(_address(request))
    except BackendError as error:
        refusal = _refusal(error)
        if refusal is None:
            count("error")
            raise
        status, errors, message = refusal
        count(_REFUSAL_OUTCOMES[status])
        response = _signed_out_form(
            request, template, status, email=email, errors=errors, form_error=message
        )
        if status == 429:
            response.headers["Retry-After"] = str(error.retry_after_seconds)
        return response
    except Exception:
        count("error")
        raise
    count("success")
    return signed


@router.post("/signin")
async def sign_in(
    request: Request, email: FormText = "", password: FormText = "", csrf_token: FormText = ""
) -> Response:
    backends: Backends = request.app.state.backends
    signed = await _check_credentials(
        request,
        "signin.html",
        email,
        csrf_token,
        lambda address: backends.sign_in(email, password, address),
        metrics.count_sign_in,
    )
    if isinstance(signed, Response):
        return signed
    return _after_sign_in(request, signed)


@router.get("/signup")
async def sign_up_page(request: Request) -> Response:
    if await sessions.current_session(request):
        return RedirectResponse("/", status_code=303)
    status = 200 if request.app.state.settings.signup_enabled else 403
    return _signed_out_form(request, "signup.html", status)


@router.post("/signup")
async def sign_up(
    request: Request, email: FormText = "", password: FormText = "", csrf_token: FormText = ""
) -> Response:
    if not request.app.state.settings.signup_enabled:
        metrics.count_sign_up("disabled")
        return _signed_out_form(request, "signup.html", 403)
    backends: Backends = request.app.state.backends
    signed = await _check_credentials(
        request,
        "signup.html",
        email,
        csrf_token,
        lambda address: backends.sign_up(email, password, address),
        metrics.count_sign_up,
    )
    if isinstance(signed, Response):
        return signed
    # The account exists and is signed in; its balance and sign-up credits come next, retried
    # since both steps are idempotent. If the ledger stays away, the overview opens the balance
    # (and grants the credits) when it finds none.
    for pause in SIGN_UP_LEDGER_RETRIES:
        await asyncio.sleep(pause)
        try:
            await backends.start_account(signed.account.id)
            break
        except BackendError as error:
            _log.warning("sign-up: the ledger step failed: %s", error)
    return _after_sign_in(request, signed)


@router.post("/signout")
async def sign_out(
    request: Request, session: Annotated[Session, Depends(signed_in)], csrf_token: FormText = ""
) -> Response:
    if not csrf.matches(session.token, csrf_token):
        return render(
            request, "error.html", session=session, status_code=403, message=_EXPIRED_FORM
        )
    await request.app.state.backends.sign_out(session.token)
    response = RedirectResponse("/signin", status_code=303)
    sessions.end(response, request.app.state.cookies)
    return response


@router.get("/account")
async def account_page(
    request: Request, session: Annotated[Session, Depends(signed_in)]
) -> Response:
    return render(request, "account.html", session=session)


@router.post("/account/password")
async def change_password(
    request: Request,
    session: Annotated[Session, Depends(signed_in)],
    current_password: FormText = "",
    new_password: FormText = "",
    csrf_token: FormText = "",
) -> Response:
    if not csrf.matches(session.token, csrf_token):
        return render(
            request, "account.html", session=session, status_code=403, form_error=_EXPIRED_FORM
        )
    try:
        await request.app.state.backends.change_password(
            session.token, current_password, new_password
        )
    except BackendError as error:
        if error.reason == "CREDENTIALS_INVALID":
            errors = {"current_password": "That is not your current password."}
            return render(request, "account.html", session=session, status_code=401, errors=errors)
        if error.reason == "PASSWORD_CHANGE_THROTTLED":
            seconds = error.retry_after_seconds
            response = render(
                request,
                "account.html",
                session=session,
                status_code=429,
                form_error=f"Too many attempts to change the password. Try again in {seconds} s.",
            )
            response.headers["Retry-After"] = str(seconds)
            return response
        if error.code == grpc.StatusCode.INVALID_ARGUMENT:
            errors = {error.field or "new_password": _sentence(error.message)}
            return render(request, "account.html", session=session, status_code=400, errors=errors)
        raise
    return render(request, "account.html", session=session, notice="Password changed.")
