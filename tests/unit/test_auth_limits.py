"""Limits per key without a database: what the counts mean (limits.admission), the bounds of
limits and holders, the settings, and the requests the servicer refuses before the store."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

import grpc
import pytest
from kokoropay.auth.v1 import auth_pb2

from services.auth import ids
from services.auth.keys import KeyHasher, generate_key
from services.auth.limits import (
    DEFAULT_LIMITS,
    Counted,
    KeyLimits,
    KeyUse,
    LimitPolicy,
    Refusal,
    admission,
    holder_problem,
    limit_problem,
)
from services.auth.servicer import ERRORS, AuthServicer
from services.auth.settings import AuthSettings
from services.common.settings import load_settings

HASHER = KeyHasher("unit-test-secret-long-enough")
POLICY = LimitPolicy(lease=timedelta(seconds=30), concurrency_retry_after=timedelta(seconds=1))
RESET = timedelta(seconds=42.5)
SPEECH = auth_pb2.KEY_USE_SPEECH


def counted(count: int, *, limit: int = 10, slot_taken: bool | None = None) -> Counted:
    return Counted(
        request_limit=limit,
        concurrency_limit=3,
        request_count=count,
        requests_reset=RESET,
        slot_taken=slot_taken,
    )


def test_the_numbers_are_the_protos() -> None:
    assert {use.name: int(use) for use in KeyUse} == {
        "SPEECH": auth_pb2.KEY_USE_SPEECH,
        "PREDICTION_CREATE": auth_pb2.KEY_USE_PREDICTION_CREATE,
    }
    assert {refusal.name: int(refusal) for refusal in Refusal} == {
        "REQUESTS": auth_pb2.LIMIT_REFUSAL_REQUESTS,
        "CONCURRENCY": auth_pb2.LIMIT_REFUSAL_CONCURRENCY,
    }


def test_speech_with_a_slot_is_admitted_with_it() -> None:
    admitted = admission(KeyUse.SPEECH, counted(4, slot_taken=True), "slot_x", POLICY)
    assert admitted.admitted and admitted.refusal is None and admitted.retry_after is None
    assert (admitted.request_limit, admitted.requests_remaining) == (10, 6)
    assert (admitted.requests_reset, admitted.concurrency_limit) == (RESET, 3)
    assert (admitted.slot_id, admitted.lease) == ("slot_x", timedelta(seconds=30))


def test_the_last_request_of_a_window_is_admitted_with_none_left() -> None:
    admitted = admission(KeyUse.PREDICTION_CREATE, counted(10), "slot_unused", POLICY)
    assert admitted.admitted and admitted.requests_remaining == 0
    assert admitted.slot_id is None and admitted.lease is None


def test_past_the_window_it_waits_for_the_windows_end() -> None:
    for use in KeyUse:
        refused = admission(use, counted(11), "slot_x", POLICY)
        assert (refused.admitted, refused.refusal) == (False, Refusal.REQUESTS)
        assert (refused.requests_remaining, refused.retry_after) == (0, RESET)
        assert refused.slot_id is None and refused.lease is None


def test_speech_without_a_free_slot_waits_the_configured_retry() -> None:
    refused = admission(KeyUse.SPEECH, counted(2, slot_taken=False), "slot_x", POLICY)
    assert (refused.admitted, refused.refusal) == (False, Refusal.CONCURRENCY)
    assert refused.retry_after == timedelta(seconds=1)
    assert refused.requests_remaining == 8, "the refused request is counted all the same"
    assert refused.slot_id is None


def test_a_reset_a_little_in_the_past_reads_as_zero() -> None:
    late = Counted(10, 3, 11, timedelta(microseconds=-5), None)
    assert admission(KeyUse.PREDICTION_CREATE, late, "", POLICY).requests_reset == timedelta(0)


def test_overrides_replace_the_defaults_where_set() -> None:
    overrides = KeyLimits(speech_concurrent_streams=2, predictions_concurrent=50)
    effective = DEFAULT_LIMITS.overridden_by(overrides)
    assert effective == KeyLimits(600, 2, 100, 50)
    assert effective.requests_per_minute(KeyUse.SPEECH) == 600
    assert effective.at_once(KeyUse.SPEECH) == 2
    assert effective.requests_per_minute(KeyUse.PREDICTION_CREATE) == 100
    assert effective.at_once(KeyUse.PREDICTION_CREATE) == 50
    assert DEFAULT_LIMITS.overridden_by(KeyLimits()) == DEFAULT_LIMITS


@pytest.mark.parametrize(
    ("name", "value", "override", "accepted"),
    [
        ("speech_requests_per_minute", 0, True, True),
        ("speech_requests_per_minute", 0, False, False),
        ("speech_requests_per_minute", 1_000_000, True, True),
        ("speech_requests_per_minute", 1_000_001, True, False),
        ("prediction_creates_per_minute", -1, True, False),
        ("speech_concurrent_streams", 10_000, False, True),
        ("speech_concurrent_streams", 10_001, True, False),
        ("predictions_concurrent", 1, False, True),
    ],
)
def test_limit_bounds(name: str, value: int, override: bool, accepted: bool) -> None:
    assert (limit_problem(name, value, override=override) is None) == accepted


@pytest.mark.parametrize(
    ("holder", "accepted"),
    [
        ("gateway-7f9c_0", True),
        ("x" * 64, True),
        ("", False),
        ("x" * 65, False),
        ("gw 1", False),
        ("gw.1", False),
        ("gw-\u00e9", False),
        ("gw\n", False),
    ],
)
def test_holder_shape(holder: str, accepted: bool) -> None:
    assert (holder_problem(holder) is None) == accepted


LIMIT_VARIABLES = (
    "AUTH_SPEECH_REQUESTS_PER_MINUTE",
    "AUTH_SPEECH_CONCURRENT_STREAMS",
    "AUTH_PREDICTION_CREATES_PER_MINUTE",
    "AUTH_PREDICTIONS_CONCURRENT",
    "AUTH_SLOT_LEASE_SECONDS",
    "AUTH_CONCURRENCY_RETRY_AFTER_SECONDS",
)


def test_the_settings_defaults_and_bounds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/auth")
    for name in LIMIT_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    policy = LimitPolicy.of(load_settings(AuthSettings))
    assert policy.defaults == KeyLimits(600, 8, 100, 10)
    assert (policy.lease, policy.concurrency_retry_after) == (
        timedelta(seconds=30),
        timedelta(seconds=1),
    )
    for name, value in [
        ("AUTH_SPEECH_REQUESTS_PER_MINUTE", "0"),
        ("AUTH_PREDICTION_CREATES_PER_MINUTE", "1000001"),
        ("AUTH_SPEECH_CONCURRENT_STREAMS", "10001"),
        ("AUTH_PREDICTIONS_CONCURRENT", "0"),
        ("AUTH_SLOT_LEASE_SECONDS", "3601"),
        ("AUTH_CONCURRENCY_RETRY_AFTER_SECONDS", "0"),
    ]:
        with monkeypatch.context() as env:
            env.setenv(name, value)
            with pytest.raises(SystemExit) as exited:
                load_settings(AuthSettings)
            assert name in str(exited.value)


# --- the servicer refuses before the store --------------------------------------------------


class Context:
    """Handlers raise instead of aborting; they never touch the context."""


class NoStore:
    """Any call reaching it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"the store was called: {name}")


@pytest.mark.parametrize(
    ("request_", "field"),
    [
        (auth_pb2.VerifyKeyRequest(key=generate_key().plaintext, use=7), "use"),  # type: ignore[arg-type]
        (auth_pb2.VerifyKeyRequest(key=generate_key().plaintext, use=SPEECH), "holder"),
        (auth_pb2.VerifyKeyRequest(key="junk", use=SPEECH, holder="gw 1"), "holder"),
        (auth_pb2.ReleaseSlotsRequest(holder="", slot_ids=[ids.new_id(ids.SLOT)]), "holder"),
        (auth_pb2.ReleaseSlotsRequest(holder="gw", slot_ids=[ids.new_id(ids.KEY)]), "slot_ids"),
        (
            auth_pb2.ReleaseSlotsRequest(
                holder="gw", slot_ids=[ids.new_id(ids.SLOT) for _ in range(1001)]
            ),
            "slot_ids",
        ),
        (auth_pb2.RenewSlotsRequest(holder="x" * 65), "holder"),
        (auth_pb2.GetAccountLimitsRequest(account_id="acme"), "account_id"),
        (
            auth_pb2.SetAccountLimitsRequest(
                account_id=ids.new_id(ids.ACCOUNT),
                overrides=auth_pb2.KeyLimits(predictions_concurrent=-1),
            ),
            "overrides.predictions_concurrent",
        ),
    ],
)
async def test_malformed_requests_never_reach_the_store(request_: Any, field: str) -> None:
    servicer = AuthServicer(NoStore(), HASHER)  # type: ignore[arg-type]
    handler = getattr(servicer, type(request_).__name__.removesuffix("Request"))

    with pytest.raises(Exception) as raised:
        await handler(request_, Context())

    assert ERRORS.status_of(raised.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert getattr(raised.value, "metadata", {}) == {"field": field}


async def test_releasing_no_slots_asks_nothing_of_the_store() -> None:
    servicer = AuthServicer(NoStore(), HASHER)  # type: ignore[arg-type]
    request = auth_pb2.ReleaseSlotsRequest(holder="gw")
    assert (await servicer.ReleaseSlots(request, Context())).released == 0
