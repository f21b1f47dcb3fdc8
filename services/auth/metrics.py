"""auth's own metrics: what VerifyKey made of each key the gateway presented, and what the key's
limits made of each request it admitted or refused.

Counted in the servicer once the answer is known (the store's statement has run): a key check
per VerifyKey that reached one (a malformed `use` or `holder` is the caller's bug, not a check),
an admission per VerifyKey with a `use` whose key verified. Served with the gRPC server metrics
on `AUTH_METRICS_PORT`. No label carries an account, a key, a holder or an address.
"""

from __future__ import annotations

from prometheus_client import Counter

# valid: a live key; invalid: no such key (or a string that cannot be one); revoked: revoked,
# or a playground key whose session ended.
KEY_CHECK_OUTCOMES = ("valid", "invalid", "revoked")
# auth.proto's KeyUse, as limits.KeyUse names them.
USES = ("speech", "prediction_create")
# admitted: within every limit (speech: a slot taken); requests_limited: past the key's requests
# a minute; concurrency_limited: speech with every stream slot of the key taken.
ADMISSION_OUTCOMES = ("admitted", "requests_limited", "concurrency_limited")

KEY_CHECKS = Counter(
    "kokoropay_auth_key_checks", "API keys VerifyKey looked at, by outcome.", ["outcome"]
)
ADMISSIONS = Counter(
    "kokoropay_auth_admissions",
    "Requests of a verified key judged under its limits, by use and outcome.",
    ["use", "outcome"],
)

# Labelled once, so every series reads 0 before it first happens.
_KEY_CHECKS = {outcome: KEY_CHECKS.labels(outcome) for outcome in KEY_CHECK_OUTCOMES}
_ADMISSIONS = {
    (use, outcome): ADMISSIONS.labels(use, outcome)
    for use in USES
    for outcome in ADMISSION_OUTCOMES
}


def count_key_check(outcome: str) -> None:
    _KEY_CHECKS[outcome].inc()


def count_admission(use: str, outcome: str) -> None:
    _ADMISSIONS[use, outcome].inc()
