"""Limits per API key as the gateway meets them: VerifyKey with a use, ReleaseSlots, RenewSlots,
and the operator's account overrides, against a real auth process and a real PostgreSQL; and
auth's metrics of them, scraped from its metrics port.

One process serves the module with a 2-second slot lease, so that a lease can run out within a
test. Each test makes its own account and key (and holder), so no test meets another's counts;
"nothing counted" is read from the database as its owner. The concurrency tests hold the key's
window row as the owner until the calls queue on it, then let them go together: a slot count
that shared the snapshot of the statement that waited for the lock would admit about 20 of the
30 there, not 5.
"""

from __future__ import annotations

import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import timedelta
from functools import partial
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth import ids
from services.cli.processes import ServiceProcess
from services.common.errors import error_info
from tests.support.auth import AuthSecrets
from tests.support.metrics import Exposition
from tests.support.pki import sync_channel
from tests.support.postgres import create_database

LEASE_SECONDS = 2
# Enough connections that concurrent admissions of one key really meet in the database.
POOL_SIZE = 20
SETTINGS = {
    "AUTH_SLOT_LEASE_SECONDS": str(LEASE_SECONDS),
    "AUTH_POOL_MAX_SIZE": str(POOL_SIZE),
}
# auth's defaults, which these tests leave as they are.
SPEECH_PER_MINUTE = 600
STREAMS = 8
CREATES_PER_MINUTE = 100
PREDICTIONS_AT_ONCE = 10
SPEECH = auth_pb2.KEY_USE_SPEECH
CREATE = auth_pb2.KEY_USE_PREDICTION_CREATE


@dataclass(frozen=True)
class Key:
    account_id: str
    key_id: str
    plaintext: str


@dataclass(frozen=True)
class Auth:
    operator: auth_pb2_grpc.AuthServiceStub
    gateway: auth_pb2_grpc.AuthServiceStub
    # The schema owner's URL: tests read counts through it.
    database_url: str
    # The process's Prometheus /metrics.
    metrics_url: str

    def new_key(self, **overrides: int) -> Key:
        account = self.operator.CreateAccount(
            auth_pb2.CreateAccountRequest(name=f"limits-{uuid.uuid4().hex[:10]}"), timeout=10
        ).account
        created = self.operator.CreateKey(
            auth_pb2.CreateKeyRequest(account_id=account.id), timeout=10
        )
        if overrides:
            self.set_limits(account.id, **overrides)
        return Key(account.id, created.key.id, created.plaintext)

    def set_limits(self, account_id: str, **overrides: int) -> auth_pb2.AccountLimitsResponse:
        request = auth_pb2.SetAccountLimitsRequest(
            account_id=account_id, overrides=auth_pb2.KeyLimits(**overrides)
        )
        response: auth_pb2.AccountLimitsResponse = self.operator.SetAccountLimits(
            request, timeout=10
        )
        return response

    def get_limits(self, account_id: str) -> auth_pb2.AccountLimitsResponse:
        request = auth_pb2.GetAccountLimitsRequest(account_id=account_id)
        response: auth_pb2.AccountLimitsResponse = self.operator.GetAccountLimits(
            request, timeout=10
        )
        return response

    def verify(self, key: str, use: int = SPEECH, holder: str = "") -> auth_pb2.VerifyKeyResponse:
        request = auth_pb2.VerifyKeyRequest(key=key, use=use, holder=holder)  # type: ignore[arg-type]
        response: auth_pb2.VerifyKeyResponse = self.gateway.VerifyKey(request, timeout=10)
        return response

    def speech(self, key: Key, holder: str) -> auth_pb2.Admission:
        return self.verify(key.plaintext, SPEECH, holder).admission

    def create(self, key: Key) -> auth_pb2.Admission:
        return self.verify(key.plaintext, CREATE).admission

    def release(self, holder: str, *slot_ids: str) -> int:
        request = auth_pb2.ReleaseSlotsRequest(holder=holder, slot_ids=slot_ids)
        return int(self.gateway.ReleaseSlots(request, timeout=10).released)

    def renew(self, holder: str) -> auth_pb2.RenewSlotsResponse:
        response: auth_pb2.RenewSlotsResponse = self.gateway.RenewSlots(
            auth_pb2.RenewSlotsRequest(holder=holder), timeout=10
        )
        return response

    def metrics(self) -> str:
        with urllib.request.urlopen(self.metrics_url, timeout=5) as reply:
            return str(reply.read().decode())

    def scrape(self) -> Exposition:
        return Exposition.parse(self.metrics())

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement.encode(), params)
            return cursor.fetchall() if cursor.description else []

    def all_at_once(
        self, key: Key, use: int, calls: int, call: Callable[[int], auth_pb2.Admission]
    ) -> list[auth_pb2.Admission]:
        """`calls` concurrent calls, let go together: the key's window row for `use` is held
        (as the owner, FOR UPDATE) until as many as the pool lets in wait on it, so that they
        meet in the database rather than one after another by chance."""
        with psycopg.connect(self.database_url) as gate:
            held = gate.execute(
                "SELECT 1 FROM auth.key_request_windows WHERE key_id = %s AND use = %s FOR UPDATE",
                [key.key_id, use],
            ).fetchall()
            assert held, "the key's window must be open before it can be held"
            with ThreadPoolExecutor(calls) as pool:
                answers = [pool.submit(call, n) for n in range(calls)]
                _wait_for_waiters(gate, min(calls, POOL_SIZE))
                gate.commit()
                return [answer.result() for answer in answers]

    def counts(self, key: Key) -> tuple[list[tuple[Any, ...]], int]:
        """The key's request windows (use, count) and its live slots."""
        windows = self.query(
            "SELECT use, count FROM auth.key_request_windows WHERE key_id = %s ORDER BY use",
            key.key_id,
        )
        slots = self.query(
            "SELECT count(*) FROM auth.stream_slots WHERE key_id = %s AND expire_time > now()",
            key.key_id,
        )
        return windows, slots[0][0]


@pytest.fixture(scope="module")
def auth(postgres_url: str, log_dir: Path) -> Iterator[Auth]:
    database = create_database(postgres_url, prefix="limits")
    process = ServiceProcess(
        "auth", {**AuthSecrets.generate().env(database), **SETTINGS}, log_dir
    ).start()
    try:
        with (
            sync_channel(process.address, "operator") as operator,
            sync_channel(process.address, "gateway") as gateway,
        ):
            yield Auth(
                auth_pb2_grpc.AuthServiceStub(operator),
                auth_pb2_grpc.AuthServiceStub(gateway),
                database,
                process.metrics_url,
            )
    finally:
        process.stop()


def _wait_for_waiters(conn: psycopg.Connection, count: int, timeout: float = 10) -> None:
    """Until `count` other sessions wait for a lock (the row `conn` holds)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        row = conn.execute(
            "SELECT count(DISTINCT pid) FROM pg_locks WHERE NOT granted AND pid <> pg_backend_pid()"
        ).fetchone()
        if row is not None and row[0] >= count:
            return
        time.sleep(0.02)
    raise TimeoutError(f"{count} admissions never queued on the held window")


def new_holder() -> str:
    """A gateway replica of the test's own, so that renewals count only its slots."""
    return f"gw-{uuid.uuid4().hex[:12]}"


def seconds(duration: Any) -> float:
    return float(duration.ToTimedelta().total_seconds())


def refused(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str | None, str | None]:
    """The status, ErrorInfo reason and `field` of a call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error: Any = raised.value
    info = error_info(error)
    if info is None:
        return error.code(), None, None
    return error.code(), info.reason, info.metadata.get("field")


# --- speech: requests counted, slots taken ----------------------------------------------------


def test_concurrent_speech_requests_take_exactly_the_limits_slots(auth: Auth) -> None:
    key = auth.new_key(speech_concurrent_streams=5)
    holder = new_holder()
    opened = auth.speech(key, holder)  # opens the key's window: its row exists to be held
    auth.release(holder, opened.slot_id)

    answers = auth.all_at_once(key, SPEECH, 30, lambda _: auth.speech(key, holder))

    admitted = [a for a in answers if a.admitted]
    refused_ = [a for a in answers if not a.admitted]
    assert len(admitted) == 5
    assert len({a.slot_id for a in admitted}) == 5
    assert all(ids.is_id(ids.SLOT, a.slot_id) for a in admitted)
    assert {seconds(a.lease) for a in admitted} == {LEASE_SECONDS}
    assert {a.refusal for a in refused_} == {auth_pb2.LIMIT_REFUSAL_CONCURRENCY}
    assert {seconds(a.retry_after) for a in refused_} == {1.0}
    assert all(not a.slot_id and not a.HasField("lease") for a in refused_)
    assert {(a.request_limit, a.concurrency_limit) for a in answers} == {(SPEECH_PER_MINUTE, 5)}
    # Every request counted, each in a place of its own, refused ones too.
    assert sorted(a.requests_remaining for a in answers) == list(
        range(SPEECH_PER_MINUTE - 31, SPEECH_PER_MINUTE - 1)
    )
    assert auth.counts(key) == ([(SPEECH, 31)], 5)


def test_a_released_slot_frees_one_for_the_next_request(auth: Auth) -> None:
    key = auth.new_key(speech_concurrent_streams=1)
    holder = new_holder()
    first = auth.speech(key, holder)
    assert first.admitted
    assert auth.speech(key, holder).refusal == auth_pb2.LIMIT_REFUSAL_CONCURRENCY

    assert auth.release(holder, first.slot_id) == 1
    assert auth.release(holder, first.slot_id) == 0, "a slot is given back once"

    second = auth.speech(key, holder)
    assert second.admitted and second.slot_id != first.slot_id


def test_another_holder_cannot_release_my_slot(auth: Auth) -> None:
    key = auth.new_key(speech_concurrent_streams=1)
    mine, theirs = new_holder(), new_holder()
    slot = auth.speech(key, mine).slot_id

    assert auth.release(theirs, slot) == 0
    assert auth.renew(theirs).renewed == 0
    assert not auth.speech(key, theirs).admitted, "the slot is still mine"
    assert auth.release(mine, slot) == 1


def test_a_lease_runs_out_unless_renewed(auth: Auth) -> None:
    renewed_key = auth.new_key(speech_concurrent_streams=1)
    abandoned_key = auth.new_key(speech_concurrent_streams=1)
    renewing, dead = new_holder(), new_holder()
    kept = auth.speech(renewed_key, renewing)
    abandoned = auth.speech(abandoned_key, dead)
    assert kept.admitted and abandoned.admitted

    time.sleep(LEASE_SECONDS / 2)
    renewal = auth.renew(renewing)
    assert (renewal.renewed, seconds(renewal.lease)) == (1, LEASE_SECONDS)
    time.sleep(LEASE_SECONDS / 2 + 0.3)

    # Past the first lease: the renewed slot holds, the abandoned one has freed itself.
    assert auth.speech(renewed_key, new_holder()).refusal == auth_pb2.LIMIT_REFUSAL_CONCURRENCY
    assert auth.speech(abandoned_key, new_holder()).admitted
    # An expired slot is not revived, nor given back: it is free already.
    assert auth.renew(dead).renewed == 0
    assert auth.release(dead, abandoned.slot_id) == 0
    assert auth.release(renewing, kept.slot_id) == 1


def test_speech_over_its_requests_takes_no_slot(auth: Auth) -> None:
    key = auth.new_key(speech_requests_per_minute=2)
    holder = new_holder()
    assert [auth.speech(key, holder).admitted for _ in range(2)] == [True, True]

    over = auth.speech(key, holder)
    assert (over.admitted, over.refusal) == (False, auth_pb2.LIMIT_REFUSAL_REQUESTS)
    assert over.requests_remaining == 0 and not over.slot_id
    assert auth.counts(key) == ([(SPEECH, 3)], 2)


# --- prediction creates: requests only --------------------------------------------------------


def test_the_101st_prediction_create_within_the_window_is_refused(auth: Auth) -> None:
    key = auth.new_key()

    assert auth.create(key).requests_remaining == CREATES_PER_MINUTE - 1
    answers = auth.all_at_once(key, CREATE, CREATES_PER_MINUTE + 10, lambda _: auth.create(key))
    after = auth.create(key)

    admitted = [a for a in answers if a.admitted]
    assert len(admitted) == CREATES_PER_MINUTE - 1
    assert sorted(a.requests_remaining for a in admitted) == list(range(CREATES_PER_MINUTE - 1))
    for over in [*(a for a in answers if not a.admitted), after]:
        assert over.refusal == auth_pb2.LIMIT_REFUSAL_REQUESTS
        assert over.requests_remaining == 0
        # Until the window, opened by the key's first create moments ago, ends.
        assert 50 < seconds(over.requests_reset) <= 60
        assert over.retry_after == over.requests_reset
    assert {(a.request_limit, a.concurrency_limit) for a in answers} == {
        (CREATES_PER_MINUTE, PREDICTIONS_AT_ONCE)
    }
    assert all(not a.slot_id for a in answers)
    # Refused creates count, up to the limit + 1 and no further; no slot is ever taken.
    assert auth.counts(key) == ([(CREATE, CREATES_PER_MINUTE + 1)], 0)
    assert auth.speech(key, new_holder()).admitted, "speech has a window of its own"


def test_a_window_opens_at_the_keys_first_request_and_counts_afresh_after_it(auth: Auth) -> None:
    key = auth.new_key(prediction_creates_per_minute=1)
    assert auth.create(key).admitted
    assert not auth.create(key).admitted
    # The window's end, moved into the past as the owner: the next request opens a new one.
    auth.query(
        "UPDATE auth.key_request_windows SET window_end = now() WHERE key_id = %s", key.key_id
    )

    fresh = auth.create(key)
    assert fresh.admitted and fresh.requests_remaining == 0
    assert 59 < seconds(fresh.requests_reset) <= 60


def test_verifying_alone_counts_nothing(auth: Auth) -> None:
    key = auth.new_key()
    verified = auth.verify(key.plaintext, auth_pb2.KEY_USE_UNSPECIFIED)
    assert (verified.account_id, verified.key_id) == (key.account_id, key.key_id)
    assert not verified.HasField("admission")
    assert auth.counts(key) == ([], 0)


# --- an account's overrides -----------------------------------------------------------------


def test_an_accounts_override_is_seen_by_the_very_next_call(auth: Auth) -> None:
    key = auth.new_key(speech_concurrent_streams=1, prediction_creates_per_minute=3)
    holder = new_holder()
    assert auth.speech(key, holder).admitted
    assert not auth.speech(key, holder).admitted

    raised = auth.set_limits(key.account_id, speech_concurrent_streams=2)
    assert raised.overrides == auth_pb2.KeyLimits(speech_concurrent_streams=2)
    assert raised.effective == auth_pb2.KeyLimits(
        speech_requests_per_minute=SPEECH_PER_MINUTE,
        speech_concurrent_streams=2,
        prediction_creates_per_minute=CREATES_PER_MINUTE,
        predictions_concurrent=PREDICTIONS_AT_ONCE,
    )
    # Setting replaces every override: prediction creates are back at the default.
    assert auth.speech(key, holder).admitted
    assert auth.create(key).request_limit == CREATES_PER_MINUTE

    lowered = auth.set_limits(key.account_id, speech_requests_per_minute=4)
    assert lowered.effective.speech_concurrent_streams == STREAMS
    last = auth.speech(key, holder)  # the 4th of the window: within 4, and slots back at 8
    assert last.admitted and (last.request_limit, last.concurrency_limit) == (4, STREAMS)
    assert auth.speech(key, holder).refusal == auth_pb2.LIMIT_REFUSAL_REQUESTS

    auth.set_limits(key.account_id)
    assert auth.get_limits(key.account_id).overrides == auth_pb2.KeyLimits()
    assert auth.speech(key, holder).admitted


def test_an_override_applies_to_every_key_of_the_account(auth: Auth) -> None:
    first = auth.new_key(speech_concurrent_streams=1)
    second_plaintext = auth.operator.CreateKey(
        auth_pb2.CreateKeyRequest(account_id=first.account_id), timeout=10
    ).plaintext
    second = auth.verify(second_plaintext, SPEECH, new_holder()).admission
    assert second.admitted and second.concurrency_limit == 1
    assert auth.speech(first, new_holder()).admitted, "each key has its own slots"


# --- refusals -------------------------------------------------------------------------------


@pytest.mark.parametrize("holder", ["", "gw a", "gw/a", "x" * 65, "gw-é"])
def test_speech_needs_a_well_formed_holder_and_counts_nothing_without_one(
    auth: Auth, holder: str
) -> None:
    key = auth.new_key()
    assert refused(lambda: auth.verify(key.plaintext, SPEECH, holder)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        "holder",
    )
    assert auth.counts(key) == ([], 0)


def test_an_unknown_use_is_refused(auth: Auth) -> None:
    key = auth.new_key()
    assert refused(lambda: auth.verify(key.plaintext, 7, new_holder()))[::2] == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "use",
    )
    assert auth.counts(key) == ([], 0)


def test_invalid_and_revoked_keys_count_nothing(auth: Auth) -> None:
    key = auth.new_key()
    auth.operator.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=key.key_id), timeout=10)
    for use in (SPEECH, CREATE):
        assert refused(partial(auth.verify, key.plaintext, use, new_holder()))[:2] == (
            grpc.StatusCode.UNAUTHENTICATED,
            "KEY_REVOKED",
        )
    unknown = "kp_live_" + "A" * 43
    assert refused(lambda: auth.verify(unknown, SPEECH, new_holder()))[:2] == (
        grpc.StatusCode.UNAUTHENTICATED,
        "KEY_INVALID",
    )
    assert auth.counts(key) == ([], 0)


@pytest.mark.parametrize(
    ("holder", "slot_ids", "field"),
    [
        ("", [], "holder"),
        ("gw a", [], "holder"),
        ("gw-a", ["key_" + "0" * 26], "slot_ids"),
        ("gw-a", ["slot_not-a-ulid"], "slot_ids"),
        ("gw-a", [ids.new_id(ids.SLOT) for _ in range(1001)], "slot_ids"),
    ],
)
def test_release_refuses_bad_input_and_gives_back_nothing(
    auth: Auth, holder: str, slot_ids: list[str], field: str
) -> None:
    key = auth.new_key()
    taken = auth.speech(key, "gw-a")
    request = auth_pb2.ReleaseSlotsRequest(holder=holder, slot_ids=[taken.slot_id, *slot_ids])
    assert refused(lambda: auth.gateway.ReleaseSlots(request, timeout=10)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        field,
    )
    assert auth.counts(key)[1] == 1
    assert auth.release("gw-a", taken.slot_id) == 1


def test_renew_refuses_a_malformed_holder(auth: Auth) -> None:
    assert refused(lambda: auth.renew("no spaces"))[2] == "holder"


@pytest.mark.parametrize(
    ("overrides", "field"),
    [
        ({"speech_requests_per_minute": -1}, "overrides.speech_requests_per_minute"),
        ({"speech_requests_per_minute": 1_000_001}, "overrides.speech_requests_per_minute"),
        ({"speech_concurrent_streams": 10_001}, "overrides.speech_concurrent_streams"),
        ({"prediction_creates_per_minute": -5}, "overrides.prediction_creates_per_minute"),
        ({"predictions_concurrent": 10_001}, "overrides.predictions_concurrent"),
    ],
)
def test_limits_out_of_range_are_refused_and_change_nothing(
    auth: Auth, overrides: dict[str, int], field: str
) -> None:
    key = auth.new_key(speech_concurrent_streams=3)
    assert refused(lambda: auth.set_limits(key.account_id, **overrides)) == (
        grpc.StatusCode.INVALID_ARGUMENT,
        "FIELD_INVALID",
        field,
    )
    assert auth.get_limits(key.account_id).overrides == auth_pb2.KeyLimits(
        speech_concurrent_streams=3
    )


def test_the_largest_limits_are_accepted(auth: Auth) -> None:
    key = auth.new_key()
    largest = {
        "speech_requests_per_minute": 1_000_000,
        "speech_concurrent_streams": 10_000,
        "prediction_creates_per_minute": 1_000_000,
        "predictions_concurrent": 10_000,
    }
    assert auth.set_limits(key.account_id, **largest).effective == auth_pb2.KeyLimits(**largest)


def test_an_unknown_account_has_no_limits_to_read_or_set(auth: Auth) -> None:
    nobody = ids.new_id(ids.ACCOUNT)
    assert refused(lambda: auth.get_limits(nobody))[0] == grpc.StatusCode.NOT_FOUND
    assert refused(lambda: auth.set_limits(nobody, speech_concurrent_streams=2))[0] == (
        grpc.StatusCode.NOT_FOUND
    )
    assert auth.query("SELECT count(*) FROM auth.account_limits WHERE account_id = %s", nobody) == [
        (0,)
    ]
    assert refused(lambda: auth.get_limits("not-an-id"))[2] == "account_id"


# --- housekeeping ---------------------------------------------------------------------------


def test_spent_slots_and_windows_are_forgotten(auth: Auth) -> None:
    key = auth.new_key()
    holder = new_holder()
    live = auth.speech(key, holder).slot_id
    expired = auth.speech(key, holder).slot_id
    auth.query(
        "UPDATE auth.stream_slots SET expire_time = now() - interval '1 second' WHERE id = %s",
        expired,
    )
    auth.query(
        "UPDATE auth.key_request_windows SET window_end = now() - interval '2 days'"
        " WHERE key_id = %s",
        key.key_id,
    )

    auth.query("SELECT auth.forget_spent_limits()")

    remaining = auth.query("SELECT id FROM auth.stream_slots WHERE key_id = %s", key.key_id)
    assert remaining == [(live,)]
    assert auth.counts(key)[0] == []
    again = auth.speech(key, holder)
    assert again.requests_remaining == SPEECH_PER_MINUTE - 1
    assert seconds(again.requests_reset) > timedelta(seconds=59).total_seconds()


# --- metrics --------------------------------------------------------------------------------

KEY_CHECKS = "kokoropay_auth_key_checks_total"
ADMISSIONS = "kokoropay_auth_admissions_total"


def test_key_checks_are_counted_by_outcome(auth: Auth) -> None:
    key, revoked = auth.new_key(), auth.new_key()
    auth.operator.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=revoked.key_id), timeout=10)
    before = auth.scrape()
    auth.verify(key.plaintext, auth_pb2.KEY_USE_UNSPECIFIED)
    auth.speech(key, new_holder())
    for candidate in ("not a key", "kp_live_" + "B" * 43):
        refused(partial(auth.verify, candidate, CREATE))
    refused(partial(auth.verify, revoked.plaintext, SPEECH, new_holder()))
    # The caller's mistake, not a check: nothing counted.
    refused(partial(auth.verify, key.plaintext, SPEECH, "gw a"))
    after = auth.scrape()

    assert after.delta(before, KEY_CHECKS, outcome="valid") == 2
    assert after.delta(before, KEY_CHECKS, outcome="invalid") == 2
    assert after.delta(before, KEY_CHECKS, outcome="revoked") == 1
    assert after.delta(before, KEY_CHECKS) == 5
    # Only the verified key's speech request was judged under its limits.
    assert after.delta(before, ADMISSIONS) == 1


def test_admissions_are_counted_by_use_and_outcome(auth: Auth) -> None:
    one_stream = auth.new_key(speech_concurrent_streams=1)
    one_request = auth.new_key(speech_requests_per_minute=1, prediction_creates_per_minute=1)
    holder = new_holder()
    before = auth.scrape()
    assert auth.speech(one_stream, holder).admitted
    assert auth.speech(one_stream, holder).refusal == auth_pb2.LIMIT_REFUSAL_CONCURRENCY
    assert auth.speech(one_request, holder).admitted
    assert auth.speech(one_request, holder).refusal == auth_pb2.LIMIT_REFUSAL_REQUESTS
    assert auth.create(one_request).admitted
    assert auth.create(one_request).refusal == auth_pb2.LIMIT_REFUSAL_REQUESTS
    after = auth.scrape()

    def admissions(use: str, outcome: str) -> float:
        return after.delta(before, ADMISSIONS, use=use, outcome=outcome)

    assert admissions("speech", "admitted") == 2
    assert admissions("speech", "concurrency_limited") == 1
    assert admissions("speech", "requests_limited") == 1
    assert admissions("prediction_create", "admitted") == 1
    assert admissions("prediction_create", "requests_limited") == 1
    assert admissions("prediction_create", "concurrency_limited") == 0
    text = auth.metrics()
    for secret in (one_stream, one_request):
        assert secret.plaintext not in text
        assert secret.key_id not in text
        assert secret.account_id not in text
    assert holder not in text
