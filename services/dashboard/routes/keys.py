"""API keys of the signed-in account: list, create (shown once), revoke (after a confirmation).

A new key's plaintext reaches the browser once. The create form posts, auth returns the
plaintext, and the dashboard hands it over in a cookie scoped to /keys/new that lives two
minutes and is deleted by the page that shows it: a reload, the back button or another tab
finds nothing, and the dashboard itself keeps no copy.
"""

from __future__ import annotations

from typing import Annotated

import grpc
from fastapi import APIRouter, Depends, Form, Request
from starlette.responses import RedirectResponse, Response

from services.dashboard import cookies, csrf
from services.dashboard.clients import BackendError
from services.dashboard.pages import render
from services.dashboard.sessions import Session, signed_in

router = APIRouter()
SignedIn = Annotated[Session, Depends(signed_in)]
FormText = Annotated[str, Form()]

NEW_KEY_PATH = "/keys/new"
_EXPIRED_FORM = "This form has expired. Reload the page and try again."


@router.get("/keys")
async def keys_page(request: Request, session: SignedIn, revoked: str = "") -> Response:
    keys = await request.app.state.backends.list_keys(session.token)
    notice = ""
    if revoked:
        name = next((key.name for key in keys if key.id == revoked), "")
        notice = f"Key “{name}” revoked." if name else ""
    return render(request, "keys.html", session=session, keys=keys, notice=notice)


@router.post("/keys")
async def create_key(
    request: Request, session: SignedIn, name: FormText = "", csrf_token: FormText = ""
) -> Response:
    backends = request.app.state.backends
    if not csrf.matches(session.token, csrf_token):
        keys = await backends.list_keys(session.token)
        return render(
            request,
            "keys.html",
            session=session,
            keys=keys,
            status_code=403,
            form_error=_EXPIRED_FORM,
            name=name,
        )
    try:
        created = await backends.create_key(session.token, name.strip())
    except BackendError as error:
        if error.reason == "KEY_LIMIT_REACHED":
            message = (
                f"You have {error.metadata.get('limit', 'the most')} active keys, the most an "
                "account may have. Revoke one you no longer use first."
            )
            status = 409
        elif error.code == grpc.StatusCode.INVALID_ARGUMENT:
            message = "Give the key a name (at most 64 characters) so you can recognise it later."
            status = 400
        else:
            raise
        keys = await backends.list_keys(session.token)
        return render(
            request,
            "keys.html",
            session=session,
            keys=keys,
            status_code=status,
            errors={"name": message},
            name=name,
        )
    response = RedirectResponse(NEW_KEY_PATH, status_code=303)
    request.app.state.cookies.set(
        response,
        cookies.NEW_KEY,
        f"{session.account.id}|{created.key.id}|{created.plaintext}",
        path=NEW_KEY_PATH,
        max_age=120,
        samesite="strict",
    )
    return response


@router.get(NEW_KEY_PATH)
async def new_key_page(request: Request, session: SignedIn) -> Response:
    account_id, _, rest = request.app.state.cookies.read(
        request, cookies.NEW_KEY, NEW_KEY_PATH
    ).partition("|")
    key_id, _, plaintext = rest.partition("|")
    # Only the account that created it sees it: another person signed in on this browser since
    # gets the list instead.
    if account_id != session.account.id or not plaintext:
        response: Response = RedirectResponse("/keys", status_code=303)
    else:
        keys = await request.app.state.backends.list_keys(session.token)
        key = next((key for key in keys if key.id == key_id), None)
        response = render(
            request, "key_created.html", session=session, key=key, plaintext=plaintext
        )
    request.app.state.cookies.delete(
        response, cookies.NEW_KEY, path=NEW_KEY_PATH, samesite="strict"
    )
    return response


@router.get("/keys/{key_id}/revoke")
async def revoke_page(request: Request, session: SignedIn, key_id: str) -> Response:
    keys = await request.app.state.backends.list_keys(session.token)
    key = next((key for key in keys if key.id == key_id), None)
    if key is None:
        return render(
            request,
            "error.html",
            session=session,
            status_code=404,
            message="There is no such key on your account.",
        )
    return render(request, "revoke.html", session=session, key=key)


@router.post("/keys/{key_id}/revoke")
async def revoke_key(
    request: Request, session: SignedIn, key_id: str, csrf_token: FormText = ""
) -> Response:
    if not csrf.matches(session.token, csrf_token):
        return render(
            request, "error.html", session=session, status_code=403, message=_EXPIRED_FORM
        )
    try:
        await request.app.state.backends.revoke_key(session.token, key_id[:64])
    except BackendError as error:
        if error.code not in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
            raise
        return render(
            request,
            "error.html",
            session=session,
            status_code=404,
            message="There is no such key on your account.",
        )
    return RedirectResponse(f"/keys?revoked={key_id}", status_code=303)
