"""The home page: balance, credits on hold, characters per day by key, recent requests."""

from __future__ import annotations

import asyncio
import datetime as dt
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from services.dashboard.clients import Backends
from services.dashboard.pages import render
from services.dashboard.sessions import Session, signed_in
from services.dashboard.usage import daily_chart, request_rows

router = APIRouter()
USAGE_DAYS = 30
RECENT_REQUESTS = 50


@router.get("/")
async def overview(request: Request, session: Annotated[Session, Depends(signed_in)]) -> Response:
    backends: Backends = request.app.state.backends
    account_id = session.account.id
    balance = await backends.balance(account_id)
    keys, usage = await asyncio.gather(
        backends.list_keys(session.token, include_playground=True),
        backends.usage(account_id, USAGE_DAYS, RECENT_REQUESTS),
    )
    names = {key.id: "Playground" if key.playground else key.name or key.prefix for key in keys}
    today = dt.datetime.now(dt.UTC).date()
    return render(
        request,
        "overview.html",
        session=session,
        balance=balance,
        chart=daily_chart(usage.summary.usage, names, today, USAGE_DAYS),
        rows=request_rows(usage.holds, names),
        has_keys=any(not key.playground for key in keys),
    )
