"""What a limited endpoint tells its caller about the key's requests a minute, as OpenAI does.

Every answer of /v1/audio/speech and of a prediction's create carries, once auth has admitted
or refused the request (so not a 401, nor a 400 found before the key was checked):

    x-ratelimit-limit-requests: 600         requests a minute for this key and use
    x-ratelimit-remaining-requests: 599     what is left of them in this window
    x-ratelimit-reset-requests: 59.4s       until the window ends and the count starts again

The reset is written like OpenAI's, a Go duration ("12ms", "8.64s", "6m0s"), to the millisecond.
"""

from __future__ import annotations

from services.gateway.clients import Admission


def rate_limit_headers(admission: Admission) -> dict[str, str]:
    """The headers for an admission; none when auth named no request limit."""
    if admission.request_limit <= 0:
        return {}
    return {
        "x-ratelimit-limit-requests": str(admission.request_limit),
        "x-ratelimit-remaining-requests": str(max(admission.requests_remaining, 0)),
        "x-ratelimit-reset-requests": go_duration(admission.requests_reset),
    }


def go_duration(seconds: float) -> str:
    """`seconds` as Go's time.Duration prints it, rounded to the millisecond: what OpenAI's
    x-ratelimit-reset-* carry and what clients written against them parse."""
    millis = max(round(seconds * 1000), 0)
    if millis == 0:
        return "0s"
    if millis < 1000:
        return f"{millis}ms"
    hours, rest = divmod(millis, 3_600_000)
    minutes, rest = divmod(rest, 60_000)
    whole, fraction = divmod(rest, 1000)
    text = f"{whole}.{fraction:03d}".rstrip("0").rstrip(".") + "s"
    if hours:
        return f"{hours}h{minutes}m{text}"
    if minutes:
        return f"{minutes}m{text}"
    return text
