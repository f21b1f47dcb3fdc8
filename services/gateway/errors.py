"""Two error envelopes, one per contract, for every failure the gateway answers.

The OpenAI-compatible endpoints answer `{"detail": "…"}`; the hosted listing's prediction API
(every path under /v1/prediction) answers its own `{"status": "error", "message": "…",
"details": "<code>"}`, where `message` is the same sentence and `details` a stable snake_case
code naming the failure (`invalid_input`, `insufficient_credits`, `prediction_not_found`, …):
the ErrorInfo reason when an upstream gave one, else one per status. Which envelope an answer
takes follows its path alone, so validation errors, unknown methods and 500s agree with the
route's own refusals.

FastAPI's own 422 never reaches a client: request validation failures become the contract's 400.
Upstream failures are translated by one table from gRPC status (and ErrorInfo reason, where the
caller must branch on it) to HTTP status; the few calls whose failures read differently to the
client (synth's, Reserve's) and the gateway's own refusals are named below it, so every status
the gateway answers is chosen in this module. Messages of 4xx answers are written for the caller
and passed on; 5xx answers say which service failed and nothing about its insides.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Mapping, Sequence
from typing import Any

import grpc
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from services.gateway import metrics
from services.gateway.clients import Admission, KeyUse, LimitRefusal, UpstreamError
from services.gateway.fingerprint import fields_that_differ

_log = logging.getLogger("gateway.errors")

# gRPC status → HTTP status, after AIP-193, with the mesh's own uses noted.
GRPC_TO_HTTP: dict[grpc.StatusCode, int] = {
    grpc.StatusCode.INVALID_ARGUMENT: 400,  # synth: empty text, unknown voice/model, bad speed
    grpc.StatusCode.OUT_OF_RANGE: 400,
    grpc.StatusCode.FAILED_PRECONDITION: 400,
    # synth: input longer than it allows; gRPC itself: a message over the size limit. Both are
    # the caller's input, so 400 rather than AIP-193's 429.
    grpc.StatusCode.RESOURCE_EXHAUSTED: 400,
    grpc.StatusCode.UNAUTHENTICATED: 401,
    grpc.StatusCode.PERMISSION_DENIED: 403,
    grpc.StatusCode.NOT_FOUND: 404,
    grpc.StatusCode.ALREADY_EXISTS: 409,
    grpc.StatusCode.ABORTED: 409,
    grpc.StatusCode.CANCELLED: 502,
    grpc.StatusCode.UNKNOWN: 502,
    grpc.StatusCode.INTERNAL: 502,
    grpc.StatusCode.DATA_LOSS: 502,
    grpc.StatusCode.UNIMPLEMENTED: 502,
    grpc.StatusCode.UNAVAILABLE: 503,
    grpc.StatusCode.DEADLINE_EXCEEDED: 504,
}

# ErrorInfo reasons that refine the status: the ones a REST client must tell apart.
REASON_TO_HTTP: dict[str, int] = {
    "KEY_INVALID": 401,
    "KEY_REVOKED": 401,
    "INSUFFICIENT_CREDITS": 402,
    "IDEMPOTENCY_KEY_REUSED": 409,
    "REQUEST_KEY_REUSED": 400,
    "ATTEMPT_IN_PROGRESS": 409,
    "REQUEST_COMPLETED": 409,
    # A service starting up or draining: nothing happened, retry soon.
    "NOT_SERVING": 503,
    # predictions: the key has its most predictions queued or running.
    "CONCURRENCY_LIMITED": 429,
}

# Seconds a client is told to wait when a service is not serving yet (warm-up takes longer on a
# CPU, but the official client retries with backoff, and its retries are free).
RETRY_AFTER_SECONDS = 5

# Whether the official openai client should retry (it reads `x-should-retry` before the status).
# Client errors never succeed on a retry. 502/503/504 are transient and nothing was charged for
# them (a failed synthesis is refunded before the 502 is sent), so retrying is safe and useful.
_RETRYABLE = frozenset({408, 429, 502, 503, 504})


def should_retry(status: int) -> bool | None:
    """The `x-should-retry` value for a status; None leaves the client's default."""
    if status in _RETRYABLE:
        return True
    if 400 <= status < 500:
        return False
    return None


# Paths under this prefix answer errors in the hosted listing's envelope.
LISTING_PREFIX = "/v1/prediction"

# The listing envelope's `details` for an answer that names no more specific code.
_STATUS_CODES = {
    400: "invalid_input",
    401: "unauthorized",
    402: "insufficient_credits",
    403: "forbidden",
    404: "not_found",
    405: "method_not_allowed",
    409: "conflict",
    410: "gone",
    413: "body_too_large",
    416: "range_not_satisfiable",
    429: "too_many_requests",
    500: "internal_error",
    502: "upstream_error",
    503: "unavailable",
    504: "upstream_timeout",
}


def uses_listing_envelope(path: str) -> bool:
    return path == LISTING_PREFIX or path.startswith(LISTING_PREFIX + "/")


class ApiError(Exception):
    """A failure answered with `status`, its message (`detail`), and any extra `headers`;
    `code` is the listing envelope's `details` (default: one per status)."""

    def __init__(
        self,
        status: int,
        detail: str,
        headers: dict[str, str] | None = None,
        *,
        code: str | None = None,
    ) -> None:
        super().__init__(f"{status}: {detail}")
        self.status = status
        self.detail = detail
        self.headers = headers or {}
        self.code = code or status_code_name(status)


def status_code_name(status: int) -> str:
    return _STATUS_CODES.get(status, "client_error" if status < 500 else "server_error")


def http_status(error: UpstreamError) -> int:
    if error.reason is not None and error.reason in REASON_TO_HTTP:
        return REASON_TO_HTTP[error.reason]
    return GRPC_TO_HTTP.get(error.code, 502)


def rejects_the_key(error: UpstreamError) -> bool:
    """Whether a failed VerifyKey was auth refusing the key (invalid, revoked), rather than auth
    failing: the former is the client's doing, and counts against its address."""
    return http_status(error) == 401


def api_error(error: UpstreamError) -> ApiError:
    """The answer to a failed upstream call."""
    if error.reason == "NOT_SERVING":
        return not_serving(error.service)
    status = http_status(error)
    if status >= 500:
        _log.warning(
            "upstream %s failed: %s %s",
            error.service,
            error.code.name,
            error.message,
            extra={"upstream": error.service, "grpc_code": error.code.name},
        )
        what = "speech synthesis" if error.service == "synth" else f"the {error.service} service"
        return ApiError(status, f"{what} failed ({error.code.name.lower()}); please retry")
    code = error.reason.lower() if error.reason else None
    return ApiError(status, error.message or error.code.name.lower(), code=code)


def synthesis_error(error: UpstreamError) -> ApiError:
    """A synth failure as the client sees it: its own mistakes as 4xx; synth saying it is not
    serving (warming up, draining) 503; failing or vanishing, the contract's 502."""
    if error.reason == "NOT_SERVING":
        return not_serving("synth")
    status = http_status(error)
    if status < 500:
        return ApiError(status, error.message or "invalid request")
    _log.warning("synthesis failed: %s", error, extra={"grpc_code": error.code.name})
    return ApiError(502, "upstream synthesis error; any charge for this request was refunded")


def insufficient_credits(cost: int, billing_url: str) -> ApiError:
    """The 402: the contract's sentence, with where to top up (GATEWAY_BILLING_URL) when there
    is such a place, then what the request costs."""
    where = f" at {billing_url}" if billing_url else ""
    return ApiError(
        402,
        f"Insufficient credits — top up your balance{where}. "
        f"This request costs {cost} credits (one per character of input).",
        code="insufficient_credits",
    )


def reserve_error(
    error: UpstreamError, cost: int, fingerprint: str, billing_url: str = ""
) -> ApiError:
    """A refused Reserve: no credits (or no account opened yet) is a 402 naming the cost and
    the billing page (settings.billing_url; none when not given); an Idempotency-Key already
    naming another request, in progress, or completed is a 400 or 409."""
    if error.reason == "INSUFFICIENT_CREDITS" or error.code == grpc.StatusCode.NOT_FOUND:
        return insufficient_credits(cost, billing_url)
    if error.reason == "REQUEST_KEY_REUSED":
        return request_key_reused(error, fingerprint)
    if error.reason == "ATTEMPT_IN_PROGRESS":
        return still_in_progress()
    if error.reason == "REQUEST_COMPLETED":
        return ApiError(
            409,
            "the request with this Idempotency-Key already completed and its audio was served "
            "again as often as a key allows; use a new key for a new request",
        )
    return api_error(error)


def request_key_reused(error: UpstreamError, fingerprint: str) -> ApiError:
    """The 400 for an Idempotency-Key that names a different request (REQUEST_KEY_REUSED, from
    the ledger for speech, from the predictions service for a prediction's create), naming the
    fields in which this request differs from the stored one's fingerprint."""
    differing = fields_that_differ(error.metadata.get("fingerprint", ""), fingerprint)
    return ApiError(
        400,
        "this Idempotency-Key was used in the last 24 hours for a different request "
        f"(it differs in: {', '.join(differing) or 'content'}); use a new key",
        code="idempotency_key_reused",
    )


# The gateway's own refusals, decided before or instead of an upstream call.


def missing_key() -> ApiError:
    return ApiError(
        401,
        "missing API key: send `Authorization: Bearer kp_live_…` or `X-API-Key: kp_live_…`",
        code="missing_api_key",
    )


def invalid_key() -> ApiError:
    return ApiError(401, "invalid API key", code="key_invalid")


def too_many_invalid_keys(retry_after: int) -> ApiError:
    """The 429 for an address whose keys failed too often (key_floods.py): every keyed request
    from it, a valid key's included, until its window has passed."""
    return ApiError(
        429,
        "too many requests with invalid API keys from your address; requests with a key are "
        f"refused for {retry_after} more seconds",
        headers={"Retry-After": str(retry_after)},
        code="too_many_invalid_keys",
    )


def retry_after_seconds(seconds: float) -> int:
    """A wait as `Retry-After` carries it: whole seconds, rounded up, at least one (the official
    openai client honours it up to two minutes; 0 would make it fall back to its backoff)."""
    return max(math.ceil(seconds), 1)


# What a key may have at once, per use, as the 429 names it.
_AT_ONCE = {
    KeyUse.SPEECH: ("streams", "when one ends"),
    KeyUse.PREDICTION_CREATE: ("predictions queued or running", "when one finishes"),
}


def limit_reached(use: KeyUse, admission: Admission) -> ApiError:
    """The 429 for a request auth refused under its key's limits: which limit, its value, and
    how long to wait (`Retry-After`); the listing's `details` is `rate_limited` or
    `concurrency_limited`."""
    wait = retry_after_seconds(admission.retry_after)
    if admission.refusal is LimitRefusal.CONCURRENCY:
        return concurrency_limited(use, admission.concurrency_limit, wait)
    return ApiError(
        429,
        f"rate limit reached for requests: {admission.request_limit} per minute for this key; "
        f"retry in {wait} s",
        headers={"Retry-After": str(wait)},
        code="rate_limited",
    )


def concurrency_limited(use: KeyUse, limit: int | None, wait: int) -> ApiError:
    what, when = _AT_ONCE[use]
    most = f"{limit} {what}" if limit else f"the most {what}"
    return ApiError(
        429,
        f"concurrency limit reached: {most} at once for this key; retry {when}",
        headers={"Retry-After": str(wait)},
        code="concurrency_limited",
    )


def _number(metadata: Mapping[str, str], name: str) -> float | None:
    try:
        value = float(metadata.get(name, ""))
    except ValueError:
        return None
    return value if math.isfinite(value) and value >= 0 else None


def conflicting_credentials() -> ApiError:
    """Both headers sent, naming different keys: which account would pay is not ours to guess."""
    return ApiError(
        401,
        "conflicting credentials: `Authorization: Bearer` and `X-API-Key` name different keys; "
        "send one of them",
        code="conflicting_credentials",
    )


def invalid_order(problem: str) -> ApiError:
    """A request pydantic accepted but the settings or synth's lists refuse."""
    return ApiError(400, problem)


def still_in_progress() -> ApiError:
    """A repeat of a keyed request while another attempt at it still runs."""
    return ApiError(
        409,
        "a request with this Idempotency-Key is still in progress; retry once it has finished",
    )


def not_serving(service: str) -> ApiError:
    """A service said it is starting up or draining: nothing was done, so nothing was charged."""
    what = "speech synthesis" if service == "synth" else f"the {service} service"
    return ApiError(
        503,
        f"{what} is starting up or restarting and not serving yet; nothing was charged; "
        f"retry in {RETRY_AFTER_SECONDS} seconds",
        headers={"Retry-After": str(RETRY_AFTER_SECONDS)},
    )


def synthesis_not_started() -> ApiError:
    return ApiError(502, "speech synthesis did not start in time; nothing was charged")


# The prediction API's answers (routes under LISTING_PREFIX).


def unknown_model(model: str, known: str) -> ApiError:
    """The listing answers an unknown model slug with 404."""
    return ApiError(
        404, f"unknown model {model!r}; this API serves {known}", code="model_not_found"
    )


def _shown(prediction_id: str) -> str:
    """An id as quoted back: no id is longer than 128 characters, so neither is the quote."""
    return repr(prediction_id if len(prediction_id) <= 128 else prediction_id[:128] + "…")


def prediction_not_found(prediction_id: str) -> ApiError:
    return ApiError(404, f"unknown prediction {_shown(prediction_id)}", code="prediction_not_found")


def create_prediction_error(
    error: UpstreamError, cost: int, fingerprint: str, billing_url: str
) -> ApiError:
    """A refused CreatePrediction: short of credits (or no ledger account yet) is the 402 with
    the billing page; the key's most predictions already queued or running (CONCURRENCY_LIMITED)
    a 429 naming the limit, with the service's wait as `Retry-After`; an Idempotency-Key naming
    another request the 400 speech answers, naming what differs from `fingerprint`; bad input
    (the webhook URL included) a 400 with the service's reason."""
    if error.reason == "INSUFFICIENT_CREDITS" or error.code == grpc.StatusCode.NOT_FOUND:
        return insufficient_credits(cost, billing_url)
    if error.reason == "REQUEST_KEY_REUSED":
        return request_key_reused(error, fingerprint)
    if error.reason == "CONCURRENCY_LIMITED":
        limit = _number(error.metadata, "limit")
        wait = _number(error.metadata, "retry_after_seconds")
        return concurrency_limited(
            KeyUse.PREDICTION_CREATE,
            None if limit is None else int(limit),
            RETRY_AFTER_SECONDS if wait is None else retry_after_seconds(wait),
        )
    return api_error(error)


def prediction_error(error: UpstreamError, prediction_id: str) -> ApiError:
    """A refused GetPrediction or CancelPrediction: not found (another account's too) is 404."""
    if error.code == grpc.StatusCode.NOT_FOUND:
        return prediction_not_found(prediction_id)
    return api_error(error)


def output_error(error: UpstreamError, prediction_id: str) -> ApiError:
    """A refused ReadOutput. A URL whose signature does not check is 403; one past its
    retention (OUTPUT_EXPIRED) is 410 Gone, so a client can tell "this link worked and has
    lapsed" from "there never was such an output" (404); an output not stored (yet) is 404."""
    if error.code == grpc.StatusCode.PERMISSION_DENIED or error.reason == "SIGNATURE_INVALID":
        return ApiError(403, "the output URL's signature is not valid", code="signature_invalid")
    if error.reason == "OUTPUT_EXPIRED":
        return ApiError(
            410,
            "this prediction's output has expired and was deleted",
            code="output_expired",
        )
    if error.code in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.FAILED_PRECONDITION):
        return output_not_found(prediction_id)
    return api_error(error)


def output_not_found(prediction_id: str) -> ApiError:
    return ApiError(
        404, f"no output for prediction {_shown(prediction_id)}", code="output_not_found"
    )


def range_not_satisfiable(size: int | None) -> ApiError:
    """The 416, naming the output's size (RFC 9110 14.4) when it is known."""
    headers = {} if size is None else {"Content-Range": f"bytes */{size}"}
    return ApiError(
        416,
        "the requested range is outside the output" + ("" if size is None else f" ({size} bytes)"),
        headers,
        code="range_not_satisfiable",
    )


def output_not_started() -> ApiError:
    return ApiError(504, "the predictions service did not start sending the output in time")


def output_missing() -> ApiError:
    return ApiError(502, "the predictions service sent no output")


def error_response(
    status: int, detail: str, *, path: str = "", code: str | None = None
) -> JSONResponse:
    """The error answer in the envelope `path` takes."""
    if uses_listing_envelope(path):
        body = {"status": "error", "message": detail, "details": code or status_code_name(status)}
        return JSONResponse(body, status_code=status)
    return JSONResponse({"detail": detail}, status_code=status)


def describe_validation_errors(errors: Sequence[Any]) -> str:
    """Pydantic's error list as one sentence a person can act on."""
    return "; ".join(_describe(error) for error in errors) or "invalid request"


def _describe(error: Any) -> str:
    kind = error.get("type", "")
    loc = [
        str(part)
        for part in error.get("loc", ())
        if part not in ("body", "query", "header", "path")
    ]
    message = str(error.get("msg", "invalid value")).removeprefix("Value error, ")
    if kind == "json_invalid":
        reason = error.get("ctx", {}).get("error", "malformed")
        return f"invalid JSON body: {reason}"
    if not loc:
        if kind == "missing":
            return "a JSON body is required"
        return "the body must be a JSON object (send Content-Type: application/json)"
    field = ".".join(loc)
    if kind == "missing":
        return f"`{field}` is required"
    return f"`{field}`: {message}"


def _route_path(request: Request) -> str:
    """The path as routed: under a root_path, what follows it."""
    path: str = request.scope["path"]
    root = request.scope.get("root_path", "")
    return path[len(root) :] if root and path.startswith(root) else path


async def _api_error_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, ApiError)
    path = _route_path(request)
    # Counted here, where the answer is made: every 402 and 429 the gateway decides is an
    # ApiError (Starlette's own answers are never either).
    if exc.status == 402:
        metrics.record_payment_required("prediction" if uses_listing_envelope(path) else "speech")
    elif exc.status == 429:
        metrics.record_rate_limited(exc.code)
    response = error_response(exc.status, exc.detail, path=path, code=exc.code)
    response.headers.update(exc.headers)
    return response


async def _validation_handler(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    return error_response(400, describe_validation_errors(exc.errors()), path=_route_path(request))


async def _http_exception_handler(request: Request, exc: Exception) -> JSONResponse:
    # Starlette's own answers (404 unknown path, 405 wrong method) in the same envelope.
    assert isinstance(exc, StarletteHTTPException)
    response = error_response(exc.status_code, str(exc.detail), path=_route_path(request))
    if exc.headers:
        response.headers.update(exc.headers)
    return response


async def _unexpected_handler(request: Request, exc: Exception) -> JSONResponse:
    # Starlette logs the exception itself after this response is sent.
    return error_response(500, "internal error", path=_route_path(request))


def install_error_handlers(app: FastAPI) -> None:
    app.add_exception_handler(ApiError, _api_error_handler)
    app.add_exception_handler(RequestValidationError, _validation_handler)
    app.add_exception_handler(StarletteHTTPException, _http_exception_handler)
    app.add_exception_handler(Exception, _unexpected_handler)
