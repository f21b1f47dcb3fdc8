"""The hosted listing's prediction API: create, poll, cancel, and the output URL (no key)."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Header, Query, Request
from starlette.responses import StreamingResponse

from services.gateway.clients import KeyUse, OutputRequest, Prediction, PredictionStatus
from services.gateway.output import MAX_OFFSET, OutputResponse, parse_range
from services.gateway.protocol import (
    OUTPUT_CONTENT_TYPES,
    PredictionCreated,
    PredictionInputEcho,
    PredictionMetrics,
    PredictionRequest,
    PredictionState,
    PredictionUrls,
)
from services.gateway.routes.common import (
    RATE_LIMIT_HEADERS,
    Credentials,
    CurrentPrincipal,
    Desk,
    IdempotencyKey,
    Seller,
    prediction_error_responses,
)

router = APIRouter(tags=["predictions"])

_CREATE_DESCRIPTION = (
    "Queue a text-to-speech job, as the hosted Kokoro listing's API takes it; poll "
    "`GET /v1/prediction/{predictionID}` or pass `webhook_url`. len(input.text) credits are "
    "reserved now, charged when it succeeds and returned if it fails or is cancelled. "
    "Authenticate with `X-API-Key` or `Authorization: Bearer`. Errors are "
    '`{"status": "error", "message", "details"}`. A key may create so many a minute and have '
    "so many queued or running at once: over either, 429 (`rate_limited`, "
    "`concurrency_limited`) with `Retry-After`; every answer once the key is verified carries "
    "`x-ratelimit-limit-requests`, `x-ratelimit-remaining-requests` and "
    "`x-ratelimit-reset-requests`. "
    "With an `Idempotency-Key` (1–128 printable ASCII characters), the key names one prediction "
    "of the account for 24 hours: a retry of the same request gets the same `predictionID` and "
    "is not charged again (one sent while the first is still being created waits for it); the "
    "same key on a different request is a 400 (`idempotency_key_reused`)."
)


async def create_prediction(
    body: PredictionRequest,
    credentials: Credentials,
    seller: Seller,
    desk: Desk,
    idempotency_key: IdempotencyKey = None,
) -> PredictionCreated:
    # As for speech: a malformed body (or Idempotency-Key) is a 400 whoever sends it, then the
    # key, then the checks that need synth's lists.
    admitted = await seller.admit(credentials.key(), credentials.address, KeyUse.PREDICTION_CREATE)
    order = await desk.validate(body)
    prediction = await desk.create(
        admitted.principal, order, admitted.concurrency_limit, idempotency_key
    )
    return PredictionCreated(predictionID=prediction.id)


# Both spellings, each documented: the listing's examples post to the one with the slash, and
# a redirect would lose the body for many clients.
for _path, _operation_id in (
    ("/v1/prediction/", "create_prediction"),
    ("/v1/prediction", "create_prediction_without_slash"),
):
    router.add_api_route(
        _path,
        create_prediction,
        methods=["POST"],
        operation_id=_operation_id,
        summary="Create a prediction",
        description=_CREATE_DESCRIPTION,
        response_model=PredictionCreated,
        responses={
            200: {
                "description": "Created and queued: poll it by its `predictionID`.",
                "headers": RATE_LIMIT_HEADERS,
            },
            **prediction_error_responses(400, 401, 402, 404, 429, 502, 503, 504, limited=True),
        },
    )


def _state(prediction: Prediction, request: Request) -> PredictionState:
    public_url: str = request.app.state.public_url
    base = public_url or str(request.base_url)
    status = prediction.status
    # Set only on error, so that they are left out of the answer otherwise (exclude_unset).
    extras: dict[str, Any] = {}
    if status is PredictionStatus.ERROR:
        extras = {"message": prediction.message, "details": prediction.details}
    return PredictionState(
        status=status.value,
        predictionID=prediction.id,
        output=prediction.output_url if status is PredictionStatus.SUCCESS else "",
        metrics=PredictionMetrics(predict_time=prediction.predict_time),
        input=PredictionInputEcho(
            text=prediction.input.text,
            voice=prediction.input.voice,
            speed=prediction.input.speed,
            output_format=prediction.input.output_format,
        ),
        created_at=prediction.created_at,
        finished_at=None if status is PredictionStatus.PROCESSING else prediction.finished_at,
        urls=PredictionUrls(cancel=f"{base.rstrip('/')}/v1/prediction/{prediction.id}/cancel"),
        **extras,
    )


@router.get(
    "/v1/prediction/{prediction_id}",
    summary="Get a prediction",
    description=(
        "Where the prediction stands: `processing` (poll again), `success` (`output` is the "
        "audio's URL, which works without the key) or `error` (`message`, `details`)."
    ),
    response_model=PredictionState,
    response_model_exclude_unset=True,
    responses=prediction_error_responses(401, 404, 429, 502, 503, 504),
)
async def get_prediction(
    prediction_id: str, request: Request, principal: CurrentPrincipal, desk: Desk
) -> PredictionState:
    return _state(await desk.get(principal, prediction_id), request)


@router.post(
    "/v1/prediction/{prediction_id}/cancel",
    summary="Cancel a prediction",
    description=(
        "A queued or running prediction stops, its credits are returned, and it ends as "
        "`error` with a message saying it was cancelled. A finished one is unchanged. The "
        "answer is the prediction's state, as `GET` gives it."
    ),
    response_model=PredictionState,
    response_model_exclude_unset=True,
    responses=prediction_error_responses(401, 404, 429, 502, 503, 504),
)
async def cancel_prediction(
    prediction_id: str, request: Request, principal: CurrentPrincipal, desk: Desk
) -> PredictionState:
    return _state(await desk.cancel(principal, prediction_id), request)


_AUDIO = {
    media_type: {"schema": {"type": "string", "format": "binary"}}
    for media_type in OUTPUT_CONTENT_TYPES
}
_OUTPUT_HEADERS = {
    "content-length": {"schema": {"type": "integer"}, "description": "Bytes in this body."},
    "accept-ranges": {"schema": {"type": "string", "enum": ["bytes"]}},
}
_OUTPUT_OK: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The whole audio, streamed; its type follows the prediction's format.",
        "content": _AUDIO,
        "headers": _OUTPUT_HEADERS,
    },
    206: {
        "description": "The one byte range asked for with `Range: bytes=a-b`, `a-` or `-n`.",
        "content": _AUDIO,
        "headers": {
            **_OUTPUT_HEADERS,
            "content-range": {
                "schema": {"type": "string"},
                "description": "`bytes first-last/size`.",
            },
        },
    },
}


@router.get(
    "/v1/prediction/{prediction_id}/output",
    summary="Download a prediction's audio",
    description=(
        "The URL a successful prediction's `output` names: signed and expiring, so it needs no "
        "API key. One byte range at a time is served (206); several ranges, an `If-Range`, or a "
        "malformed `Range` get the whole audio (200)."
    ),
    response_class=StreamingResponse,
    responses={**_OUTPUT_OK, **prediction_error_responses(400, 403, 404, 410, 416, 502, 503, 504)},
)
async def read_output(
    prediction_id: str,
    desk: Desk,
    expires: Annotated[
        int, Query(ge=0, le=MAX_OFFSET, description="Unix time the URL stops working.")
    ],
    signature: Annotated[
        str, Query(min_length=1, max_length=512, description="The URL's signature.")
    ],
    range_header: Annotated[
        str | None,
        Header(alias="Range", description="One range: `bytes=a-b`, `bytes=a-` or `bytes=-n`."),
    ] = None,
    if_range: Annotated[
        str | None, Header(alias="If-Range", description="Makes the answer the whole audio.")
    ] = None,
) -> OutputResponse:
    url = OutputRequest(prediction_id, expires, signature)
    return await desk.open_output(url, parse_range(range_header, if_range))
