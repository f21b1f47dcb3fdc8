"""The dashboard's own metrics: what became of each sign-in and sign-up form post.

Counted once per post, by outcome; never by email, address or account (the throttle's business
is auth's, and its logs say who). Served with the process's gRPC client metrics on
`DASHBOARD_METRICS_PORT` (services/common/metrics.py), never on the dashboard's public port.
"""

from __future__ import annotations

from prometheus_client import Counter

# success: signed in (a sign-up: the account made and signed in); wrong_credentials: email or
# password wrong; throttled: too many attempts (429); invalid: a field auth refused (400);
# expired_form: the CSRF token did not match (403); email_taken: a sign-up for a known email;
# disabled: a sign-up while DASHBOARD_SIGNUP_ENABLED is off; error: auth failed or was away.
# Both forms share the set (a sign-in is never email_taken; its series stays at 0).
OUTCOMES = (
    "success",
    "wrong_credentials",
    "throttled",
    "invalid",
    "expired_form",
    "email_taken",
    "disabled",
    "error",
)

SIGN_INS = Counter("kokoropay_dashboard_sign_ins", "Sign-in form posts, by outcome.", ["outcome"])
SIGN_UPS = Counter("kokoropay_dashboard_sign_ups", "Sign-up form posts, by outcome.", ["outcome"])

# Labelled once, so every outcome reads 0 before it first happens.
_SIGN_INS = {outcome: SIGN_INS.labels(outcome) for outcome in OUTCOMES}
_SIGN_UPS = {outcome: SIGN_UPS.labels(outcome) for outcome in OUTCOMES}


def count_sign_in(outcome: str) -> None:
    _SIGN_INS[outcome].inc()


def count_sign_up(outcome: str) -> None:
    _SIGN_UPS[outcome].inc()
