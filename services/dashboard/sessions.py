"""The signed-in person behind a request: the session cookie, resolved by auth on every page.

The cookie holds auth's session token and nothing else; auth decides whether it is still good
(signed out, idle too long, too old) and whose it is. Pages for signed-in people depend on
`signed_in`; without a good session it raises `SignedOut`, which the app answers with a
redirect to the sign-in page, so a signed-out browser reaches nothing else.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

import grpc
from fastapi import Request
from kokoropay.auth.v1 import auth_pb2
from starlette.responses import Response

from services.dashboard import cookies, csrf
from services.dashboard.clients import BackendError, Backends

# Auth's tokens are 43 characters; anything much longer is not one, and is not sent on.
MAX_TOKEN_LENGTH = 128


class SignedOut(Exception):
    """The page needs a session and the request has none that auth accepts."""


@dataclass(frozen=True)
class Session:
    token: str
    user: auth_pb2.User
    account: auth_pb2.Account

    @property
    def csrf_token(self) -> str:
        return csrf.token_for(self.token)


async def current_session(request: Request) -> Session | None:
    """The request's session if auth accepts it, else None (auth unreachable raises)."""
    token = request.app.state.cookies.read(request, cookies.SESSION)
    if not token or len(token) > MAX_TOKEN_LENGTH:
        return None
    backends: Backends = request.app.state.backends
    try:
        resolved = await backends.resolve_session(token)
    except BackendError as error:
        if error.code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.INVALID_ARGUMENT):
            return None
        raise
    return Session(token, resolved.user, resolved.account)


async def signed_in(request: Request) -> Session:
    """FastAPI dependency of every page behind sign-in."""
    session = await current_session(request)
    if session is None:
        raise SignedOut()
    return session


def start(response: Response, signed: auth_pb2.SignInResponse, jar: cookies.Cookies) -> None:
    """Hand the browser its session cookie, kept until the session's absolute end."""
    expires = signed.expire_time.ToDatetime(dt.UTC)
    max_age = max(0, int((expires - dt.datetime.now(dt.UTC)).total_seconds()))
    jar.set(response, cookies.SESSION, signed.session_token, max_age=max_age)
    jar.delete(response, cookies.PRESESSION)


def end(response: Response, jar: cookies.Cookies) -> None:
    jar.delete(response, cookies.SESSION)
