"""What the routes share: the bearer scheme, the serving layer, documented error answers."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Depends, Request, Security
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from services.gateway.clients import Principal
from services.gateway.protocol import ErrorBody
from services.gateway.serving import SpeechSeller

# auto_error=False: a missing key is answered by the serving layer, in the one error envelope.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    bearerFormat="kp_live_…",
    description="Your kokoro-pay API key: `Authorization: Bearer kp_live_…`.",
)
Credentials = Annotated[HTTPAuthorizationCredentials | None, Security(bearer)]


def speech_seller(request: Request) -> SpeechSeller:
    seller: SpeechSeller = request.app.state.seller
    return seller


Seller = Annotated[SpeechSeller, Depends(speech_seller)]


async def authenticated(credentials: Credentials, seller: Seller) -> Principal:
    return await seller.authenticate(credentials.credentials if credentials else None)


CurrentPrincipal = Annotated[Principal, Depends(authenticated)]

_ERROR_MEANINGS = {
    400: "Invalid JSON body, missing or empty `input`, or another invalid field.",
    401: "Missing, invalid, or revoked API key.",
    402: "Insufficient credits — top up your balance.",
    409: "A request with the same Idempotency-Key and content is still in progress; retry "
    "once it has finished.",
    502: "Upstream synthesis error. Any charge for this request is refunded.",
    503: "A service behind the gateway is unavailable; nothing was charged. Retry later.",
    504: "A service behind the gateway did not answer in time; nothing was charged.",
}


def error_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the given error statuses, all with the `{"detail": …}` body."""
    return {
        status: {"model": ErrorBody, "description": _ERROR_MEANINGS[status]} for status in statuses
    }
