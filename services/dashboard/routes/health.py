"""`/healthz` (the process answers) and `/readyz` (auth and ledger answer SERVING)."""

from __future__ import annotations

from fastapi import APIRouter, Request
from starlette.responses import JSONResponse

router = APIRouter()


@router.get("/healthz")
async def healthz() -> JSONResponse:
    return JSONResponse({"status": "ok"})


@router.get("/readyz")
async def readyz(request: Request) -> JSONResponse:
    if request.app.state.draining.is_set():
        return JSONResponse({"detail": "not ready: shutting down"}, status_code=503)
    answers = await request.app.state.backends.ready()
    missing = [name for name, ready in answers.items() if not ready]
    if missing:
        detail = f"not ready: {', '.join(missing)} not serving"
        return JSONResponse({"detail": detail}, status_code=503)
    return JSONResponse({"status": "ready"})
