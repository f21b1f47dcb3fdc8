"""`/healthz` (the process answers) and `/readyz` (it can serve: upstreams SERVING)."""

from __future__ import annotations

import asyncio
from typing import Any

from fastapi import APIRouter, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel

from services.gateway.clients import Upstreams
from services.gateway.errors import error_response
from services.gateway.routes.common import error_responses

router = APIRouter(tags=["health"])


class Status(BaseModel):
    status: str


@router.get("/healthz", summary="Liveness", response_model=Status)
async def healthz() -> Status:
    return Status(status="ok")


@router.get(
    "/readyz",
    summary="Readiness: auth, ledger and synth answer SERVING",
    response_model=Status,
    responses={503: error_responses(503)[503]},
)
async def readyz(request: Request) -> Any:
    if request.app.state.draining.is_set():
        return error_response(503, "not ready: shutting down")
    upstreams: Upstreams = request.app.state.upstreams
    names = ("auth", "ledger", "synth")
    answers = await asyncio.gather(
        upstreams.auth.ready(), upstreams.ledger.ready(), upstreams.synth.ready()
    )
    missing = [name for name, ready in zip(names, answers, strict=True) if not ready]
    if missing:
        return error_response(503, f"not ready: {', '.join(missing)} not serving")
    return JSONResponse({"status": "ready"})
