"""`GET /v1/balance`: what the key's account can still spend."""

from __future__ import annotations

from fastapi import APIRouter

from services.gateway.protocol import BalanceBody
from services.gateway.routes.common import CurrentPrincipal, Seller, error_responses

router = APIRouter(tags=["account"])


@router.get(
    "/v1/balance",
    summary="Show the balance",
    response_model=BalanceBody,
    responses=error_responses(401, 429, 502, 503, 504),
)
async def get_balance(principal: CurrentPrincipal, seller: Seller) -> BalanceBody:
    balance = await seller.balance(principal)
    return BalanceBody(balance=balance.balance, unlimited=balance.unlimited)
