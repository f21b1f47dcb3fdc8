"""The playground: hear any voice before writing code, paid like any API request.

The browser posts to this same origin; the dashboard forwards the request to the gateway's
public `/v1/audio/speech` with the session's playground key and streams the answer back as it
comes. So the playground is billed by exactly the path customers' code is (Reserve, stream,
Capture, refunds on failure), with no side door into synth and no CORS opening on the gateway.
The key is auth's: minted per session, ending with it, never shown in the keys list.
Previews are the exception, on purpose: short clips of each voice made once by synth and cached
(previews.py), which cost no one anything.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator, Callable
from typing import Annotated, Any

import httpx
from fastapi import APIRouter, Depends, Request
from starlette.responses import JSONResponse, Response, StreamingResponse

from services.common.logs import request_id_var
from services.dashboard import csrf
from services.dashboard.clients import Backends
from services.dashboard.pages import render
from services.dashboard.previews import UnknownVoice, VoicePreviews
from services.dashboard.sessions import Session, signed_in

router = APIRouter()


class SessionStreams:
    """Playground requests in flight per session (this replica's): one person cannot tie up
    the dashboard's connections to the gateway."""

    def __init__(self, limit: int = 2) -> None:
        self.limit = limit
        self._open: dict[str, int] = {}

    def acquire(self, session_token: str) -> bool:
        count = self._open.get(session_token, 0)
        if count >= self.limit:
            return False
        self._open[session_token] = count + 1
        return True

    def release(self, session_token: str) -> None:
        count = self._open.pop(session_token, 0) - 1
        if count > 0:
            self._open[session_token] = count


SignedIn = Annotated[Session, Depends(signed_in)]
_log = logging.getLogger("dashboard.playground")

CSRF_HEADER = "x-csrf-token"
FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# What the browser may send on; everything else is the gateway's to judge, as for any client.
FORWARDED_FIELDS = ("input", "voice", "response_format", "speed")


@router.get("/playground")
async def playground_page(request: Request, session: SignedIn) -> Response:
    backends: Backends = request.app.state.backends
    previews: VoicePreviews = request.app.state.previews
    balance = await backends.balance(session.account.id)
    voices = await previews.voices()
    return render(
        request,
        "playground.html",
        session=session,
        balance=balance,
        voices=voices,
        formats=FORMATS,
        max_input_chars=4096,
        active="playground",
    )


@router.get("/playground/balance")
async def playground_balance(request: Request, session: SignedIn) -> JSONResponse:
    balance = await request.app.state.backends.balance(session.account.id)
    return JSONResponse(
        {"balance": balance.balance, "held": balance.held, "unlimited": balance.unlimited}
    )


@router.get("/playground/voices/{voice}/preview")
async def voice_preview(request: Request, session: SignedIn, voice: str) -> Response:
    previews: VoicePreviews = request.app.state.previews
    try:
        clip = await previews.clip(voice[:64])
    except UnknownVoice:
        return JSONResponse({"detail": "no such voice"}, status_code=404)
    # The clip never changes for a voice; the browser may keep it (privately: it is behind
    # sign-in, like every page here).
    return Response(
        clip, media_type="audio/mpeg", headers={"Cache-Control": "private, max-age=86400"}
    )


@router.post("/playground/speech")
async def playground_speech(request: Request, session: SignedIn) -> Response:
    if not csrf.matches(session.token, request.headers.get(CSRF_HEADER)):
        return JSONResponse({"detail": "This page has expired. Reload it and try again."}, 403)
    try:
        body = await request.json()
    except ValueError:
        return JSONResponse({"detail": "the body must be JSON"}, status_code=400)
    if not isinstance(body, dict):
        return JSONResponse({"detail": "the body must be a JSON object"}, status_code=400)
    payload: dict[str, Any] = {"model": "kokoro"}
    payload.update({name: body[name] for name in FORWARDED_FIELDS if name in body})

    streams: SessionStreams = request.app.state.playground_streams
    if not streams.acquire(session.token):
        return JSONResponse(
            {"detail": f"At most {streams.limit} playground requests at once; wait for one."},
            status_code=429,
        )
    try:
        key = await request.app.state.backends.playground_key(session.token)
        gateway: httpx.AsyncClient = request.app.state.gateway
        upstream = await gateway.send(
            gateway.build_request(
                "POST",
                "/v1/audio/speech",
                json=payload,
                headers={"Authorization": f"Bearer {key}", "x-request-id": request_id_var.get()},
            ),
            stream=True,
        )
    except httpx.HTTPError as error:
        streams.release(session.token)
        _log.warning("playground: the gateway is out of reach: %s", error)
        return JSONResponse({"detail": "The API is out of reach; try again shortly."}, 503)
    except BaseException:
        streams.release(session.token)
        raise
    if upstream.status_code != 200:
        streams.release(session.token)
        # The gateway's own answer ({"detail": …}; a 402 names the billing page), as it is.
        content = await upstream.aread()
        await upstream.aclose()
        return Response(
            content,
            status_code=upstream.status_code,
            media_type=upstream.headers.get("content-type", "application/json"),
        )
    return StreamingResponse(
        _relay(upstream, lambda: streams.release(session.token)),
        media_type=upstream.headers.get("content-type", "application/octet-stream"),
        headers={"Cache-Control": "no-store"},
    )


async def _relay(upstream: httpx.Response, done: Callable[[], None]) -> AsyncIterator[bytes]:
    """The gateway's bytes as they arrive. If the browser leaves, closing the upstream makes
    the gateway stop synthesis and charge what was delivered, as for any client that leaves."""
    try:
        async for piece in upstream.aiter_raw():
            yield piece
    except httpx.HTTPError as error:
        # The gateway cut the stream (our failure: it refunds). Ending ours abruptly tells the
        # browser the audio is incomplete.
        _log.warning("playground stream cut upstream: %s", error)
        raise
    finally:
        done()
        await upstream.aclose()
