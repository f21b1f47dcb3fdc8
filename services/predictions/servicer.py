"""PredictionService over gRPC: checks requests, reserves credits, calls the store, answers in
the contract's terms.

Handlers raise; `ERRORS` is the one table that turns what they raise into a status
(services/common/errors.py). Who may call each RPC is declared in predictions.proto. Refusals a
caller branches on carry a google.rpc.ErrorInfo (domain "predictions.kokoropay"):

| refusal                                        | status              | reason               |
|------------------------------------------------|---------------------|----------------------|
| a bad field (metadata `field` names it)        | INVALID_ARGUMENT    | FIELD_INVALID        |
| webhook URL not http(s), unresolvable, or to a | INVALID_ARGUMENT    | WEBHOOK_URL_REFUSED  |
|   refused address (metadata `field`)           |                     |                      |
| balance too low for len(text) (or no balance)  | FAILED_PRECONDITION | INSUFFICIENT_CREDITS |
| the key already has `max_active` predictions   | RESOURCE_EXHAUSTED  | CONCURRENCY_LIMITED  |
|   queued or running (metadata `limit`,         |                     |                      |
|   `retry_after_seconds`)                       |                     |                      |
| an idempotency key naming another request      | ALREADY_EXISTS      | REQUEST_KEY_REUSED   |
|   (metadata `fingerprint`: the one stored)     |                     |                      |
| unknown prediction, or another account's       | NOT_FOUND           | PREDICTION_NOT_FOUND |
| output URL past its expiry, or audio deleted   | NOT_FOUND           | OUTPUT_EXPIRED       |
| output URL whose signature does not check      | PERMISSION_DENIED   | SIGNATURE_INVALID    |
| ReadOutput offset at or past the end           | OUT_OF_RANGE        | RANGE_NOT_SATISFIABLE|
|   (metadata `total_size`)                      |                     |                      |
| the database or the ledger cannot answer now   | UNAVAILABLE         | (none)               |

CreatePrediction with an idempotency key first looks the key up: one already naming a prediction
(in the last 24 hours) answers with that prediction as it now stands if the fingerprints agree,
and with REQUEST_KEY_REUSED if not, before any other check and without the API key's turn.
Otherwise the request is checked and the create takes its API key's turn (store.py: the key's
lock, held to the commit), in which a keyed create first claims its key for the account; a
create of the key that committed meanwhile is answered as above. Either way a repeat counts,
reserves and queues nothing, so the Reserve below happens once per key. Then it counts the API
key's predictions queued or running; at `max_active` it refuses, having reserved nothing.
Otherwise, still in its turn, it reserves len(text) credits ("prediction:<id>", labels
key/voice/format/model, a ttl of PREDICTIONS_HOLD_TTL_SECONDS: the longest a prediction waits in
the queue) and writes the prediction and its job in one statement; if that or the commit fails,
the hold is released.
CancelPrediction finishes a processing prediction as ERROR "cancelled", aborts its job (a
running worker is told at once and stops synthesis) and releases its hold; a finished one is
returned unchanged. Who settles what, and when, is in README.md ("Money"). Creates (not their
repeats under an idempotency key), and refusals by reason, are counted in metrics.py; finishes by
the store, once committed.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator

import grpc
from kokoropay.ledger.v1 import ledger_pb2
from kokoropay.predictions.v1 import predictions_pb2, predictions_pb2_grpc

from services.common.errors import (
    ErrorTable,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
    error_info,
)
from services.common.timestamps import timestamp
from services.predictions import metrics, validation
from services.predictions.clients import (
    LEDGER_TIMEOUT_SECONDS,
    TRANSIENT_CODES,
    Upstreams,
    VoiceCatalog,
)
from services.predictions.ids import is_prediction_id, new_prediction_id
from services.predictions.outputs import OutputStorage
from services.predictions.paging import decode_page_token, encode_page_token
from services.predictions.settings import PredictionsSettings
from services.predictions.signing import SignatureInvalid, UrlSigner, output_url
from services.predictions.store import (
    KeyedPrediction,
    NewPrediction,
    OutputExpired,
    Prediction,
    PredictionNotFound,
    PredictionStore,
)
from services.predictions.validation import FieldInvalid, IdempotencyKey
from services.predictions.webhooks import (
    WebhookHostUnresolved,
    WebhookUrlRefused,
    check_webhook_url,
)

SERVICE_NAME: str = predictions_pb2.DESCRIPTOR.services_by_name["PredictionService"].full_name
# What the ledger's usage labels call the model predictions run.
MODEL_LABEL = "kokoro-82m"

_log = logging.getLogger("predictions.servicer")


class InsufficientCredits(ServiceError):
    def __init__(self, message: str, metadata: dict[str, str] | None = None) -> None:
        super().__init__(message, reason="INSUFFICIENT_CREDITS", metadata=metadata)


class ConcurrencyLimited(ServiceError):
    """The key has as many predictions queued or running as it may; nothing was reserved."""

    def __init__(self, active: int, limit: int, retry_after_seconds: int) -> None:
        super().__init__(
            f"this key already has {active} predictions queued or running and may have "
            f"{limit}; retry when one of them finishes",
            reason="CONCURRENCY_LIMITED",
            metadata={"limit": str(limit), "retry_after_seconds": str(retry_after_seconds)},
        )


class RequestKeyReused(ServiceError):
    """The idempotency key names another request of the account (the ledger's reason for the
    same refusal, so the gateway answers both alike); nothing was reserved."""

    def __init__(self, stored_fingerprint: str) -> None:
        super().__init__(
            "this idempotency key was used in the last 24 hours for a different request",
            reason="REQUEST_KEY_REUSED",
            metadata={"fingerprint": stored_fingerprint},
        )


class RangeNotSatisfiable(ServiceError):
    def __init__(self, offset: int, total_size: int) -> None:
        super().__init__(
            f"offset {offset} is not within the output's {total_size} bytes",
            reason="RANGE_NOT_SATISFIABLE",
            metadata={"total_size": str(total_size)},
        )


class LedgerUnavailable(Unavailable):
    """The ledger did not answer; nothing was reserved, worth a retry."""


ERRORS = ErrorTable(
    "predictions",
    {
        InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,  # FieldInvalid, WebhookUrlRefused
        NotFound: grpc.StatusCode.NOT_FOUND,  # PredictionNotFound, OutputExpired
        InsufficientCredits: grpc.StatusCode.FAILED_PRECONDITION,
        ConcurrencyLimited: grpc.StatusCode.RESOURCE_EXHAUSTED,
        RequestKeyReused: grpc.StatusCode.ALREADY_EXISTS,
        SignatureInvalid: grpc.StatusCode.PERMISSION_DENIED,
        RangeNotSatisfiable: grpc.StatusCode.OUT_OF_RANGE,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
    },
)

_STATUSES = {
    "processing": predictions_pb2.PREDICTION_STATUS_PROCESSING,
    "success": predictions_pb2.PREDICTION_STATUS_SUCCESS,
    "error": predictions_pb2.PREDICTION_STATUS_ERROR,
}


def prediction_message(prediction: Prediction, signer: UrlSigner) -> predictions_pb2.Prediction:
    message = predictions_pb2.Prediction(
        id=prediction.id,
        account_id=prediction.account_id,
        status=_STATUSES[prediction.status],
        input=predictions_pb2.PredictionInput(
            text=prediction.text,
            voice=prediction.voice,
            speed=prediction.speed,
            output_format=prediction.output_format,
        ),
        output_url=output_url(signer, prediction),
        predict_time=prediction.predict_time or 0.0,
        message=prediction.message or "",
        details=prediction.details or "",
        create_time=timestamp(prediction.create_time),
        webhook_url=prediction.webhook_url or "",
    )
    if prediction.finish_time is not None:
        message.finish_time.CopyFrom(timestamp(prediction.finish_time))
    if prediction.output_expire_time is not None:
        message.output_expire_time.CopyFrom(timestamp(prediction.output_expire_time))
    return message


def _repeated(named: KeyedPrediction, keyed: IdempotencyKey) -> Prediction:
    """The prediction an idempotency key names, for a create that repeats its request."""
    if named.fingerprint != keyed.fingerprint:
        raise RequestKeyReused(named.fingerprint)
    _log.info("prediction create repeated", extra={"prediction_id": named.prediction.id})
    return named.prediction


class PredictionServicer(predictions_pb2_grpc.PredictionServiceServicer):
    def __init__(
        self,
        store: PredictionStore,
        outputs: OutputStorage,
        upstreams: Upstreams,
        voices: VoiceCatalog,
        signer: UrlSigner,
        settings: PredictionsSettings,
    ) -> None:
        self._store = store
        self._outputs = outputs
        self._ledger = upstreams.ledger
        self._voices = voices
        self._signer = signer
        self._max_input_chars = settings.max_input_chars
        self._hold_ttl_seconds = settings.hold_ttl_seconds
        self._concurrency_retry_after_seconds = settings.concurrency_retry_after_seconds
        self._allow_private_webhooks = settings.allow_private_webhooks
        self._webhook_retry_seconds = settings.webhook_retry_hours * 3600

    async def CreatePrediction(
        self, request: predictions_pb2.CreatePredictionRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.Prediction:
        try:
            prediction, created = await self._create(request)
        except (InvalidArgument, RequestKeyReused):
            metrics.count_refused("invalid")
            raise
        except InsufficientCredits:
            metrics.count_refused("insufficient_credits")
            raise
        except ConcurrencyLimited:
            metrics.count_refused("concurrency_limited")
            raise
        if created:
            metrics.count_created()  # committed: reserved and queued
        return prediction_message(prediction, self._signer)

    async def _create(
        self, request: predictions_pb2.CreatePredictionRequest
    ) -> tuple[Prediction, bool]:
        """The prediction, and whether this call created it (False: its idempotency key's)."""
        account_id = validation.require_id(request.account_id, "account_id")
        keyed = validation.idempotency_key(
            account_id, request.idempotency_key, request.request_fingerprint
        )
        if keyed is not None:
            # A repeat is answered from its key alone, before the checks below: they may now
            # refuse what they let through then (a voice since retired, a webhook host that no
            # longer resolves), and a repeat needs no turn, creation slot or lock.
            named = await self._store.named_by_key(keyed)
            if named is not None:
                return _repeated(named, keyed), False
        return await self._create_new(request, account_id, keyed)

    async def _create_new(
        self,
        request: predictions_pb2.CreatePredictionRequest,
        account_id: str,
        keyed: IdempotencyKey | None,
    ) -> tuple[Prediction, bool]:
        """A new prediction and True; or, when a create racing this one claimed the key first,
        what the key names and False."""
        key_id = validation.key_id(request.key_id)
        max_active = validation.max_active(request.max_active)
        given = request.input
        checked = validation.prediction_input(
            given.text, given.voice, given.speed, given.output_format, self._max_input_chars
        )
        webhook_url = validation.webhook_url_shape(request.webhook_url)
        if webhook_url is not None:
            try:
                await check_webhook_url(webhook_url, allow_private=self._allow_private_webhooks)
            except WebhookHostUnresolved as unresolved:
                # At create the customer is there to hear it; at delivery it is retried.
                raise WebhookUrlRefused("has a host that does not resolve") from unresolved
        problem = await self._voices.problem(checked.voice)
        if problem is not None:
            raise FieldInvalid("input.voice", problem)

        prediction_id = new_prediction_id()
        hold_id: str | None = None
        try:
            # The count and the insert share the key's turn, the Reserve between them, so
            # concurrent creates of one key are counted one after another and a refused one
            # never touches the ledger (store.py's header says why this order).
            async with self._store.creating(key_id) as turn:
                # Before the count and the Reserve: a create that raced the key's first (and
                # so missed it above) neither counts against the key's limit nor holds credits
                # a second time.
                if keyed is not None:
                    named = await turn.claim(keyed, prediction_id)
                    if named is not None:
                        return _repeated(named, keyed), False
                if turn.active >= max_active:
                    raise ConcurrencyLimited(
                        turn.active, max_active, self._concurrency_retry_after_seconds
                    )
                hold_id = await self._reserve(prediction_id, account_id, key_id, checked)
                prediction = await turn.create(
                    NewPrediction(
                        id=prediction_id,
                        account_id=account_id,
                        key_id=key_id,
                        text=checked.text,
                        voice=checked.voice,
                        speed=checked.speed,
                        output_format=checked.output_format,
                        webhook_url=webhook_url,
                        hold_id=hold_id,
                    )
                )
        except BaseException:
            if hold_id is not None:
                # Nothing was queued: the credits go back now rather than when the hold lapses.
                await asyncio.shield(self._release_quietly(hold_id))
            raise
        _log.info(
            "prediction created",
            extra={"prediction_id": prediction.id, "characters": prediction.characters},
        )
        return prediction, True

    async def _reserve(
        self,
        prediction_id: str,
        account_id: str,
        key_id: str,
        checked: validation.Input,
    ) -> str:
        request = ledger_pb2.ReserveRequest(
            account_id=account_id,
            amount=len(checked.text),
            idempotency_key=f"prediction:{prediction_id}",
            ttl_seconds=self._hold_ttl_seconds,
            labels=ledger_pb2.UsageLabels(
                key_id=key_id,
                voice=checked.voice,
                response_format=checked.output_format,
                model=MODEL_LABEL,
            ),
        )
        try:
            response = await self._ledger.Reserve(request, timeout=LEDGER_TIMEOUT_SECONDS)
        except grpc.RpcError as error:
            info = error_info(error)
            if info is not None and info.reason == "INSUFFICIENT_CREDITS":
                raise InsufficientCredits(
                    error.details() or "insufficient credits", dict(info.metadata)
                ) from error
            if error.code() == grpc.StatusCode.NOT_FOUND:
                # An account the ledger never opened has no credits to spend.
                raise InsufficientCredits(f"account {account_id!r} has no balance") from error
            if error.code() in TRANSIENT_CODES:
                raise LedgerUnavailable(
                    f"the ledger did not answer: {error.code().name}"
                ) from error
            raise
        return str(response.hold.id)

    async def _release_quietly(self, hold_id: str) -> bool:
        """Release a hold; False (logged) when the ledger refuses or cannot be reached, and the
        hold is left to its deadline or to the workers' settling."""
        try:
            await self._ledger.Release(
                ledger_pb2.ReleaseRequest(hold_id=hold_id), timeout=LEDGER_TIMEOUT_SECONDS
            )
        except grpc.RpcError as error:
            _log.warning(
                "could not release hold %s: %s",
                hold_id,
                error.code().name,
                extra={"hold_id": hold_id},
            )
            return False
        return True

    async def GetPrediction(
        self, request: predictions_pb2.GetPredictionRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.Prediction:
        account_id = validation.require_id(request.account_id, "account_id")
        prediction_id = self._prediction_id(request.prediction_id)
        prediction = await self._store.get(account_id, prediction_id)
        return prediction_message(prediction, self._signer)

    async def CancelPrediction(
        self, request: predictions_pb2.CancelPredictionRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.Prediction:
        account_id = validation.require_id(request.account_id, "account_id")
        prediction_id = self._prediction_id(request.prediction_id)
        deadline = time.time() + self._webhook_retry_seconds
        prediction, cancelled = await self._store.cancel(
            account_id, prediction_id, "cancelled at the customer's request", deadline
        )
        if cancelled:
            _log.info("prediction cancelled", extra={"prediction_id": prediction.id})
            if await asyncio.shield(self._release_quietly(prediction.hold_id)):
                await self._store.mark_settled(prediction.id)
        return prediction_message(prediction, self._signer)

    async def ListPredictions(
        self, request: predictions_pb2.ListPredictionsRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.ListPredictionsResponse:
        account_id = validation.require_id(request.account_id, "account_id")
        page_size = validation.page_size(request.page_size)
        before = decode_page_token(request.page_token, account_id)
        # One beyond the page says whether another page follows.
        found = await self._store.page(account_id, page_size + 1, before)
        page = found[:page_size]
        next_token = (
            encode_page_token(account_id, page[-1].create_time, page[-1].id)
            if len(found) > page_size
            else ""
        )
        return predictions_pb2.ListPredictionsResponse(
            predictions=[prediction_message(p, self._signer) for p in page],
            next_page_token=next_token,
        )

    async def ReadOutput(
        self, request: predictions_pb2.ReadOutputRequest, context: grpc.aio.ServicerContext
    ) -> AsyncIterator[predictions_pb2.OutputChunk]:
        prediction_id = request.prediction_id
        # The signature first: without one of ours, nothing about the id is revealed.
        self._signer.check(prediction_id, request.expires, request.signature)
        if request.expires <= time.time():
            raise OutputExpired(prediction_id)
        offset, length = validation.byte_range(request.offset, request.length)
        head = await self._outputs.head(prediction_id)
        if head is None:
            prediction = await self._store.load(prediction_id)
            if prediction is not None and prediction.status == "success":
                raise OutputExpired(prediction_id)
            raise PredictionNotFound(prediction_id)
        if offset > head.size or (offset == head.size and head.size > 0):
            raise RangeNotSatisfiable(offset, head.size)
        end = head.size if length == 0 else min(head.size, offset + length)
        yield predictions_pb2.OutputChunk(total_size=head.size, content_type=head.content_type)
        async for piece in self._outputs.read(prediction_id, offset, end - offset):
            yield predictions_pb2.OutputChunk(data=piece)

    async def GetWebhookSecret(
        self, request: predictions_pb2.GetWebhookSecretRequest, context: grpc.aio.ServicerContext
    ) -> predictions_pb2.WebhookSecret:
        account_id = validation.require_id(request.account_id, "account_id")
        secret = await self._store.webhook_secret(account_id)
        return predictions_pb2.WebhookSecret(
            secret=secret.secret, create_time=timestamp(secret.create_time)
        )

    async def RotateWebhookSecret(
        self,
        request: predictions_pb2.RotateWebhookSecretRequest,
        context: grpc.aio.ServicerContext,
    ) -> predictions_pb2.WebhookSecret:
        account_id = validation.require_id(request.account_id, "account_id")
        secret = await self._store.rotate_webhook_secret(account_id)
        _log.info("webhook secret rotated", extra={"account_id": account_id})
        return predictions_pb2.WebhookSecret(
            secret=secret.secret, create_time=timestamp(secret.create_time)
        )

    @staticmethod
    def _prediction_id(value: str) -> str:
        prediction_id = validation.require_id(value, "prediction_id")
        if not is_prediction_id(prediction_id):
            # No id of ours looks like this: unknown, as another account's would be.
            raise PredictionNotFound(prediction_id)
        return prediction_id
