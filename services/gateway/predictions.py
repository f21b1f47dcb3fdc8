"""The serving layer of the hosted listing's prediction API: create, poll, cancel, the output.

    create:  admit ─▶ validate ─────────▶ CreatePrediction ─▶ id
          401, 429    404 model, 400         402 (it reserves len(text)), 400 webhook,
                                             429 max_active queued or running,
                                             400 Idempotency-Key reused for another request
    poll, cancel: authenticate ─▶ Get/CancelPrediction ─▶ state      404 unknown or not yours
    output (no key): Range ─▶ ReadOutput (signature checked there) ─▶ 200/206 streamed
                                  403 bad signature, 410 expired, 404 unknown, 416 range

The gateway keeps nothing: predictions, their money (reserved at create, captured or released
by the service's workers) and their audio belong to the predictions service. What can be checked
here before anything is reserved is (model, length, voice against synth's lists), as for speech.
An Idempotency-Key travels to the service with the order's fingerprint (fingerprint.py, as for
speech): the service keeps the key and answers a repeat with the prediction it already created.
"""

from __future__ import annotations

import asyncio
import dataclasses
import re
from dataclasses import dataclass

from services.gateway.catalog import Catalog
from services.gateway.clients import (
    KeyedCreate,
    OutputPiece,
    OutputRequest,
    OutputStream,
    Prediction,
    PredictionInput,
    PredictionsClient,
    Principal,
    UpstreamError,
)
from services.gateway.errors import (
    ApiError,
    api_error,
    create_prediction_error,
    invalid_order,
    output_error,
    output_missing,
    output_not_found,
    output_not_started,
    prediction_error,
    prediction_not_found,
    range_not_satisfiable,
    unknown_model,
)
from services.gateway.fingerprint import fingerprint
from services.gateway.middleware import timed
from services.gateway.output import MAX_OFFSET, ByteRange, OutputResponse, content_range
from services.gateway.protocol import CONTENT_TYPES, PREDICTION_MODEL, PredictionRequest
from services.gateway.settings import GatewaySettings

# What a prediction id can look like ("pred_01J…", a UUID): anything else is unknown without
# asking, and an id that reaches a header (Content-Disposition) is always plain.
_PREDICTION_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,127}")
_EXTENSIONS = {media_type: extension for extension, media_type in CONTENT_TYPES.items()}
_FALLBACK_CONTENT_TYPE = "application/octet-stream"
# The most CreatePrediction's max_active takes: what a key has when nothing limits it.
MAX_ACTIVE_PREDICTIONS = 10_000


@dataclass(frozen=True)
class PredictionOrder:
    """A create request as validated: what the predictions service is asked to queue."""

    input: PredictionInput
    webhook_url: str

    @property
    def cost(self) -> int:
        return len(self.input.text)  # code points, as for speech

    def fingerprint(self) -> str:
        """The request as understood: one Idempotency-Key names one of these. Named as the
        request's fields, so a 400 for a reused key says which one changed."""
        spoken = self.input
        return fingerprint(
            [
                ("input.text", spoken.text),
                ("input.voice", spoken.voice),
                ("input.speed", repr(float(spoken.speed))),
                ("input.output_format", spoken.output_format),
                ("webhook_url", self.webhook_url),
            ]
        )


class PredictionDesk:
    """Takes predictions for the predictions service and serves their outputs."""

    def __init__(
        self, predictions: PredictionsClient, catalog: Catalog, settings: GatewaySettings
    ) -> None:
        self._predictions = predictions
        self._catalog = catalog
        self._settings = settings

    async def validate(self, request: PredictionRequest) -> PredictionOrder:
        """The checks that need settings or synth's lists; pydantic has checked the shape."""
        if request.model.strip().lower() != PREDICTION_MODEL:
            raise unknown_model(request.model, PREDICTION_MODEL)
        spoken = request.input
        characters = len(spoken.text)
        limit = self._settings.max_input_chars
        if characters > limit:
            raise invalid_order(
                f"`input.text` is {characters} characters long; the limit is {limit}"
            )
        voice = spoken.voice.strip()
        try:
            with timed("catalog"):
                problem = await self._catalog.voice_problem(voice)
        except UpstreamError as error:
            raise api_error(error) from error
        if problem is not None:
            raise invalid_order(problem)
        return PredictionOrder(
            PredictionInput(spoken.text, voice, spoken.speed, spoken.output_format),
            request.webhook_url or "",
        )

    async def create(
        self,
        principal: Principal,
        order: PredictionOrder,
        max_active: int | None,
        idempotency_key: str | None = None,
    ) -> Prediction:
        """Queue it, unless the key already has `max_active` queued or running (its limit from
        the admission; None: nothing limits it) — the service counts them, under a lock. With an
        Idempotency-Key, the prediction the account's key already names, if any."""
        limit = MAX_ACTIVE_PREDICTIONS if max_active is None else max_active
        understood = order.fingerprint()
        keyed = None if idempotency_key is None else KeyedCreate(idempotency_key, understood)
        try:
            with timed("predictions"):
                return await self._predictions.create_prediction(
                    principal,
                    order.input,
                    order.webhook_url,
                    max_active=min(max(limit, 1), MAX_ACTIVE_PREDICTIONS),
                    keyed=keyed,
                )
        except UpstreamError as error:
            raise create_prediction_error(
                error, order.cost, understood, self._settings.billing_url
            ) from error

    async def get(self, principal: Principal, prediction_id: str) -> Prediction:
        if not _PREDICTION_ID.fullmatch(prediction_id):
            raise prediction_not_found(prediction_id)
        try:
            with timed("predictions"):
                return await self._predictions.get_prediction(principal.account_id, prediction_id)
        except UpstreamError as error:
            raise prediction_error(error, prediction_id) from error

    async def cancel(self, principal: Principal, prediction_id: str) -> Prediction:
        if not _PREDICTION_ID.fullmatch(prediction_id):
            raise prediction_not_found(prediction_id)
        try:
            with timed("predictions"):
                return await self._predictions.cancel_prediction(
                    principal.account_id, prediction_id
                )
        except UpstreamError as error:
            raise prediction_error(error, prediction_id) from error

    async def open_output(self, url: OutputRequest, wanted: ByteRange | None) -> OutputResponse:
        """The output behind a signed URL, whole (200) or the one range wanted (206); its first
        message is awaited here, so a refused URL or range is still a clean error answer."""
        if not _PREDICTION_ID.fullmatch(url.prediction_id):
            raise output_not_found(url.prediction_id)
        if wanted is None:
            stream, head = await self._read(url)
            return self._respond(url.prediction_id, stream, head, None)
        if wanted.first is None or wanted.first > MAX_OFFSET:
            # A suffix needs the size first; an offset past int64 is past any output's end.
            size = await self._size(url)
            selected = wanted.select(size)
            if selected is None:
                raise range_not_satisfiable(size)
            offset, length = selected
        else:
            offset = wanted.first
            length = 0 if wanted.last is None else wanted.last - wanted.first + 1
        try:
            stream, head = await self._read(
                dataclasses.replace(url, offset=offset, length=min(length, MAX_OFFSET))
            )
        except ApiError as refusal:
            if refusal.status != 400:
                raise
            # A service that refuses an offset past the end rather than sending nothing: the
            # size, for the 416, comes from a read of the first byte.
            size = await self._size(url)
            if wanted.select(size) is None:
                raise range_not_satisfiable(size) from refusal
            raise
        return self._respond(url.prediction_id, stream, head, wanted)

    def _respond(
        self,
        prediction_id: str,
        stream: OutputStream,
        head: OutputPiece,
        wanted: ByteRange | None,
    ) -> OutputResponse:
        size = head.total_size
        media_type = head.content_type or _FALLBACK_CONTENT_TYPE
        headers = {"accept-ranges": "bytes", "cache-control": "private"}
        extension = _EXTENSIONS.get(media_type.split(";")[0].strip())
        if extension is not None:
            # Played in place by a browser; saved under a name that says what it is.
            headers["content-disposition"] = f'inline; filename="{prediction_id}.{extension}"'

        status, length = 200, size
        if wanted is not None:
            selected = wanted.select(size)
            if selected is None:
                stream.cancel()
                raise range_not_satisfiable(size)
            offset, length = selected
            status = 206
            headers["content-range"] = content_range(offset, length, size)
        return OutputResponse(
            stream,
            head.data,
            length=length,
            status_code=status,
            media_type=media_type,
            headers=headers,
            send_timeout=self._settings.send_timeout_seconds,
        )

    async def _read(self, url: OutputRequest) -> tuple[OutputStream, OutputPiece]:
        """A started ReadOutput and its first message (the size and type)."""
        stream = self._predictions.read_output(url)
        try:
            first = await asyncio.wait_for(stream.next(), self._settings.rpc_timeout_seconds)
        except BaseException as failure:
            stream.cancel()
            if isinstance(failure, UpstreamError):
                raise output_error(failure, url.prediction_id) from failure
            if isinstance(failure, TimeoutError):
                raise output_not_started() from failure
            raise
        if first is None:
            stream.cancel()
            raise output_missing()
        return stream, first

    async def _size(self, url: OutputRequest) -> int:
        stream, head = await self._read(dataclasses.replace(url, offset=0, length=1))
        stream.cancel()
        return head.total_size
