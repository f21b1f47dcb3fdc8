"""The gateway's own metrics: HTTP requests, the audio it relays, and what speech was charged.

Served with the process's gRPC client metrics on `GATEWAY_METRICS_PORT`
(services/common/metrics.py), never on the public port. Each is recorded where the event is
known to have happened: requests by the outermost middleware once the response is over (the
route as matched, never the raw path); audio when a piece has been handed to the server; the
characters charged and refunded once the ledger has settled the hold (billing.py); 402s and 429s
where the error answer is made (errors.py).

Labels are fixed sets: route templates, methods, statuses, formats, outcomes. No account, key,
hold, request id or text ever labels a series.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

from prometheus_client import Counter, Gauge, Histogram

# A path that matched no route (a scanner's 404) is one series, not one per path.
OTHER_ROUTE = "other"
# Methods worth a series of their own; anything else a client sends is `other`.
_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
OTHER_METHOD = "other"

# response_format values (protocol.py's CONTENT_TYPES).
AUDIO_FORMATS = ("mp3", "opus", "aac", "flac", "wav", "pcm")
# billing.Outcome values: how a speech request's hold was settled.
SETTLEMENT_OUTCOMES = ("completed", "failed", "client_left", "time_limit")
# Which 402: a speech request's Reserve, or a prediction's create.
PAYMENT_ENDPOINTS = ("speech", "prediction")
# Which 429: the key's requests a minute, its streams or predictions at once, or the
# address's invalid keys (key_floods.py). Keyed by the error's listing code (errors.py).
RATE_LIMITS = {
    "rate_limited": "requests",
    "concurrency_limited": "concurrency",
    "too_many_invalid_keys": "invalid_keys",
}

HTTP_REQUESTS = Counter(
    "kokoropay_gateway_http_requests",
    "HTTP requests answered, by route template (`other`: no route), method and status.",
    ["route", "method", "status"],
)
HTTP_REQUEST_SECONDS = Histogram(
    "kokoropay_gateway_http_request_seconds",
    "From a request's arrival to its response's end (a stream's last byte), by route template"
    " and method.",
    ["route", "method"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 300.0),
)
FIRST_AUDIO_SECONDS = Histogram(
    "kokoropay_gateway_first_audio_seconds",
    "Speech: from the request's arrival to its first audio byte handed to the server (auth,"
    " reserve, the wait for a synth slot and the first model call).",
    buckets=(0.01, 0.025, 0.05, 0.1, 0.2, 0.35, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0),
)
AUDIO_BYTES = Counter(
    "kokoropay_gateway_audio_bytes",
    "Encoded audio bytes handed to clients (before SSE's base64), by response_format.",
    ["format"],
)
AUDIO_SECONDS = Counter(
    "kokoropay_gateway_audio_seconds",
    "Seconds of audio handed to clients: the duration synth gave each piece relayed.",
)
CHARACTERS_CHARGED = Counter(
    "kokoropay_gateway_characters_charged",
    "Speech: characters (credits) the ledger captured when a request was settled, unlimited"
    " accounts included.",
)
CHARACTERS_REFUNDED = Counter(
    "kokoropay_gateway_characters_refunded",
    "Speech: characters held and given back when a request was settled, by how it ended.",
    ["outcome"],
)
PAYMENT_REQUIRED = Counter(
    "kokoropay_gateway_payment_required",
    "402 answers (too few credits), by endpoint.",
    ["endpoint"],
)
RATE_LIMITED = Counter(
    "kokoropay_gateway_rate_limited",
    "429 answers, by the limit that refused.",
    ["limit"],
)
ACTIVE_STREAMS = Gauge(
    "kokoropay_gateway_active_streams",
    "Speech responses streaming now (from their first audio to their end).",
)


# Labelled once, so that recording is a dict lookup and every series reads 0 from the start.
_AUDIO_BYTES = {name: AUDIO_BYTES.labels(name) for name in AUDIO_FORMATS}
_REFUNDED = {outcome: CHARACTERS_REFUNDED.labels(outcome) for outcome in SETTLEMENT_OUTCOMES}
_PAYMENT_REQUIRED = {endpoint: PAYMENT_REQUIRED.labels(endpoint) for endpoint in PAYMENT_ENDPOINTS}
_RATE_LIMITED = {limit: RATE_LIMITED.labels(limit) for limit in RATE_LIMITS.values()}

# The HTTP series' children, made at their first request: routes, methods and statuses are
# bounded sets, so these stay small.
_requests: dict[tuple[str, str, int], Counter] = {}
_durations: dict[tuple[str, str], Histogram] = {}


def method_label(method: str) -> str:
    return method if method in _METHODS else OTHER_METHOD


def record_request(route: str, method: str, status: int, seconds: float) -> None:
    """One HTTP exchange, once its response is over. `route` is a template or OTHER_ROUTE."""
    method = method_label(method)
    counter = _requests.get((route, method, status))
    if counter is None:
        counter = _requests[route, method, status] = HTTP_REQUESTS.labels(
            route, method, str(status)
        )
    counter.inc()
    histogram = _durations.get((route, method))
    if histogram is None:
        histogram = _durations[route, method] = HTTP_REQUEST_SECONDS.labels(route, method)
    histogram.observe(seconds)


@contextmanager
def streaming() -> Iterator[None]:
    """Counts a speech response in ACTIVE_STREAMS while the block runs."""
    ACTIVE_STREAMS.inc()
    try:
        yield
    finally:
        ACTIVE_STREAMS.dec()


def record_first_audio(seconds: float) -> None:
    FIRST_AUDIO_SECONDS.observe(seconds)


def record_audio(audio_format: str, size: int, seconds: float) -> None:
    """A piece of audio handed to the client."""
    _AUDIO_BYTES[audio_format].inc(size)
    if seconds > 0:
        AUDIO_SECONDS.inc(seconds)


def record_settlement(outcome: str, refunded: int, charged: int) -> None:
    """A speech request's hold, settled: `charged` characters captured by the settlement (not
    what a lapsed hold's expiry captured before it: the ledger counts that), `refunded` held and
    not owed (characters owed but unpaid, past a short balance, are neither)."""
    if charged > 0:
        CHARACTERS_CHARGED.inc(charged)
    if refunded > 0:
        _REFUNDED[outcome].inc(refunded)


def record_payment_required(endpoint: str) -> None:
    _PAYMENT_REQUIRED[endpoint].inc()


def record_rate_limited(code: str) -> None:
    """A 429 whose listing code (errors.py) says which limit refused."""
    limit = RATE_LIMITS.get(code)
    if limit is not None:
        _RATE_LIMITED[limit].inc()
