"""What the routes share: the two key headers and the client's address, the Idempotency-Key
header, the serving layers, documented error answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated, Any

from fastapi import Depends, Header, Request, Security
from fastapi.security import APIKeyHeader, HTTPAuthorizationCredentials, HTTPBearer

from services.common.client_address import client_address, throttle_key
from services.gateway.clients import Principal
from services.gateway.errors import conflicting_credentials
from services.gateway.predictions import PredictionDesk
from services.gateway.protocol import ErrorBody, PredictionErrorBody
from services.gateway.serving import SpeechSeller

# auto_error=False: a missing key is answered by the serving layer, in the path's envelope.
bearer = HTTPBearer(
    auto_error=False,
    scheme_name="apiKey",
    bearerFormat="kp_live_…",
    description="Your kokoro-pay API key: `Authorization: Bearer kp_live_…`.",
)
# The hosted listing's header, accepted on every endpoint that takes the Bearer one.
api_key_header = APIKeyHeader(
    name="X-API-Key",
    auto_error=False,
    scheme_name="apiKeyHeader",
    description="The same key in the hosted listing's header: `X-API-Key: kp_live_…`.",
)


@dataclass(frozen=True)
class PresentedKey:
    """The key as the request presents it, in either header or both, and where it came from:
    the client's address as the invalid-key throttle counts it."""

    bearer: str | None
    header: str | None
    address: str

    def key(self) -> str | None:
        """The one key presented; both headers naming different keys is a 401, not a guess at
        which account should pay."""
        if self.bearer and self.header and self.bearer != self.header:
            raise conflicting_credentials()
        return self.bearer or self.header


def presented_key(
    request: Request,
    bearer_credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    header: Annotated[str | None, Security(api_key_header)],
) -> PresentedKey:
    return PresentedKey(
        bearer_credentials.credentials if bearer_credentials else None,
        header,
        client_of(request),
    )


def client_of(request: Request) -> str:
    """The client's address (an IPv6 one's /64): the socket's peer, or, from a proxy named in
    GATEWAY_TRUSTED_PROXIES, the right-most untrusted hop of X-Forwarded-For."""
    peer = request.client.host if request.client else None
    # Header lines a proxy added rather than appended to count as one list, in order.
    forwarded = ", ".join(request.headers.getlist("x-forwarded-for")) or None
    return throttle_key(client_address(peer, forwarded, request.app.state.trusted_proxies))


Credentials = Annotated[PresentedKey, Depends(presented_key)]

# Printable ASCII without surrounding spaces (pydantic's patterns run in linear time); speech's
# and prediction creates' alike. A malformed one is a 400 before the key is checked.
IdempotencyKey = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=128,
        pattern=r"^[!-~]([ -~]*[!-~])?$",
        description="Makes retries safe: the key's request is paid for at most once.",
    ),
]


def speech_seller(request: Request) -> SpeechSeller:
    seller: SpeechSeller = request.app.state.seller
    return seller


Seller = Annotated[SpeechSeller, Depends(speech_seller)]


def prediction_desk(request: Request) -> PredictionDesk:
    desk: PredictionDesk = request.app.state.predictions
    return desk


Desk = Annotated[PredictionDesk, Depends(prediction_desk)]


async def authenticated(credentials: Credentials, seller: Seller) -> Principal:
    return await seller.authenticate(credentials.key(), credentials.address)


CurrentPrincipal = Annotated[Principal, Depends(authenticated)]

_ERROR_MEANINGS = {
    400: "Invalid JSON body, missing or empty `input`, or another invalid field.",
    401: "Missing, invalid, or revoked API key, or two different keys in the two headers.",
    402: "Insufficient credits — top up your balance.",
    409: "A request with the same Idempotency-Key and content is still in progress; retry "
    "once it has finished.",
    429: "Too many requests with invalid API keys from your address: every request with a key "
    "from it is refused (a valid key's too) for `Retry-After` seconds.",
    502: "Upstream synthesis error. Any charge for this request is refunded.",
    503: "A service behind the gateway is unavailable; nothing was charged. Retry later.",
    504: "A service behind the gateway did not answer in time; nothing was charged.",
}

_PREDICTION_ERROR_MEANINGS = {
    400: "Invalid input: malformed JSON, a missing or empty `input.text`, text over the limit, "
    "an unknown voice, a speed outside 0.5–5, a webhook URL that is not http(s) or is refused; "
    "a malformed `Idempotency-Key`, or one used in the last 24 hours for a different request "
    "(`idempotency_key_reused`).",
    401: "Missing, invalid, or revoked API key (`X-API-Key` or `Authorization: Bearer`), or two "
    "different keys in the two headers.",
    402: "Insufficient credits for len(text) — top up your balance on the billing page.",
    403: "The output URL's signature is not valid.",
    404: "Unknown model or prediction (another account's prediction is unknown to you), or no "
    "such output.",
    410: "The output's retention has passed: the audio was deleted.",
    416: "The requested byte range starts past the output's end; `Content-Range: bytes */size`.",
    429: "Too many requests with invalid API keys from your address: every request with a key "
    "from it is refused (a valid key's too) for `Retry-After` seconds "
    "(`too_many_invalid_keys`).",
    502: "A service behind the gateway failed. Retry with backoff.",
    503: "A service behind the gateway is unavailable. Retry with backoff.",
    504: "A service behind the gateway did not answer in time. Retry with backoff.",
}


# The 429 of an endpoint with per-key limits: those, and the invalid-key throttle every keyed
# endpoint has.
_LIMITED_429 = (
    "Over a limit of the key: its requests a minute, or {at_once} at once. The message names "
    "the limit; `Retry-After` says when to try again (the window's end; for {at_once}, a short "
    "pause). Also: too many requests with invalid API keys from your address (every request "
    "with a key from it, a valid key's too, for `Retry-After` seconds)."
)
_LIMITED_429_SPEECH = _LIMITED_429.format(at_once="streams open")
_LIMITED_429_PREDICTIONS = (
    _LIMITED_429.format(at_once="predictions queued or running")
    + " `details`: `rate_limited`, `concurrency_limited` or `too_many_invalid_keys`."
)

_RETRY_AFTER = {
    "schema": {"type": "integer"},
    "description": "Seconds until requests with a key from this address are served again.",
}
_LIMITED_RETRY_AFTER = {
    "schema": {"type": "integer"},
    "description": "Whole seconds to wait before trying again (at least 1).",
}

# On every answer of a limited endpoint once auth has counted the request: its 200, its 429,
# and its errors found after the key was checked (400, 402, 409, 5xx). Never on a 401, nor on a
# 400 for a body that could not be read: no key was counted for those.
RATE_LIMIT_HEADERS: dict[str, dict[str, Any]] = {
    "x-ratelimit-limit-requests": {
        "schema": {"type": "integer"},
        "description": "Requests a minute this key may make to this endpoint.",
    },
    "x-ratelimit-remaining-requests": {
        "schema": {"type": "integer"},
        "description": "What is left of them in the current window, this request counted.",
    },
    "x-ratelimit-reset-requests": {
        "schema": {"type": "string"},
        "description": "Until the window ends and the count starts again, as OpenAI writes it "
        "(a Go duration: `350ms`, `59.4s`, `1m0s`).",
    },
}


def error_responses(*statuses: int, limited: bool = False) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the given error statuses, all with the `{"detail": …}` body;
    `limited`: the endpoint has per-key limits (its 429, the x-ratelimit-* headers)."""
    meanings = {**_ERROR_MEANINGS, 429: _LIMITED_429_SPEECH} if limited else _ERROR_MEANINGS
    return {status: _entry(ErrorBody, meanings[status], status, limited) for status in statuses}


def prediction_error_responses(
    *statuses: int, limited: bool = False
) -> dict[int | str, dict[str, Any]]:
    """OpenAPI entries for the prediction API's error statuses, in the listing's envelope;
    `limited` as for error_responses."""
    meanings = _PREDICTION_ERROR_MEANINGS
    if limited:
        meanings = {**meanings, 429: _LIMITED_429_PREDICTIONS}
    return {
        status: _entry(PredictionErrorBody, meanings[status], status, limited)
        for status in statuses
    }


def _entry(model: type, description: str, status: int, limited: bool) -> dict[str, Any]:
    entry: dict[str, Any] = {"model": model, "description": description}
    headers: dict[str, Any] = {}
    if status == 429:
        headers["Retry-After"] = dict(_LIMITED_RETRY_AFTER if limited else _RETRY_AFTER)
    if limited and status != 401:
        headers.update(RATE_LIMIT_HEADERS)
    if headers:
        entry["headers"] = headers
    return entry
