"""The arithmetic of throttling, session tokens and key-use stamps, and the settings behind them."""

from __future__ import annotations

import hashlib
from datetime import timedelta

import grpc
import pytest

from services.auth.people import Rules
from services.auth.servicer import ERRORS
from services.auth.sessions import Lifetimes, could_be_token, new_token
from services.auth.settings import AuthSettings
from services.auth.store import KeyUses
from services.auth.throttle import Slowing, Throttled, WindowLimit, address_problem
from services.common.settings import load_settings


@pytest.mark.parametrize(
    ("failures", "delay"),
    [(0, 0), (2, 0), (3, 1), (4, 2), (5, 4), (7, 16), (8, 30), (50, 30), (10_000, 30)],
)
def test_slowing_doubles_past_the_free_failures_up_to_the_cap(failures: int, delay: float) -> None:
    assert Slowing(free_failures=3, base_delay_seconds=1, cap_seconds=30).delay(failures) == delay


def test_no_base_delay_means_no_slowing() -> None:
    assert Slowing(0, 0, 30).delay(100) == 0


def test_an_address_past_its_limit_is_told_when_to_come_back() -> None:
    limit = WindowLimit("sign-in", 20, timedelta(minutes=1), "SIGN_IN_THROTTLED", "too many")
    limit.check(20, 12.5)
    with pytest.raises(Throttled) as raised:
        limit.check(21, 12.2)
    assert ERRORS.status_of(raised.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.reason == "SIGN_IN_THROTTLED"
    assert raised.value.metadata == {"retry_after_seconds": "13"}
    with pytest.raises(Throttled) as at_the_turn:
        limit.check(22, 0.0)
    assert at_the_turn.value.metadata == {"retry_after_seconds": "1"}


def test_counters_are_keyed_by_kind_and_address_with_one_bucket_for_none() -> None:
    limit = WindowLimit("sign-up", 10, timedelta(hours=1), "SIGN_UP_THROTTLED", "too many")
    assert limit.key("203.0.113.7") == "sign-up:203.0.113.7"
    assert limit.key("") == "sign-up:unknown"


def test_password_changes_are_counted_per_session() -> None:
    rules = Rules.of(AuthSettings(DATABASE_URL="postgresql://localhost/auth"))
    limit = rules.password_changes
    assert (limit.key("ses_01JD3Q0000000000000000000Z"), limit.limit, limit.window) == (
        "password:ses_01JD3Q0000000000000000000Z",
        5,
        timedelta(hours=1),
    )
    limit.check(5, 10.0)
    with pytest.raises(Throttled) as raised:
        limit.check(6, 1800.2)
    assert ERRORS.status_of(raised.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert raised.value.reason == "PASSWORD_CHANGE_THROTTLED"
    assert raised.value.metadata == {"retry_after_seconds": "1801"}


@pytest.mark.parametrize(
    ("address", "accepted"),
    [
        ("", True),
        ("203.0.113.7", True),
        ("2001:db8::1", True),
        ("x" * 64, True),
        ("x" * 65, False),
        ("1.2.3.4\x00", False),
        (" 1.2.3.4", False),
    ],
)
def test_client_addresses(address: str, accepted: bool) -> None:
    assert (address_problem(address) is None) == accepted


def test_session_tokens_are_random_and_stored_as_their_sha256() -> None:
    tokens = [new_token() for _ in range(100)]
    assert len({token.plaintext for token in tokens}) == 100
    for token in tokens:
        assert len(token.plaintext) == 43 and could_be_token(token.plaintext)
        assert token.digest == hashlib.sha256(token.plaintext.encode()).digest()
    assert not could_be_token("")
    assert could_be_token("x" * 128) and not could_be_token("x" * 129)


def test_use_is_written_at_most_once_a_minute_or_a_quarter_of_the_idle_time() -> None:
    assert Lifetimes.of_seconds(86400, 7 * 86400).touch_interval == timedelta(minutes=1)
    assert Lifetimes.of_seconds(20, 60).touch_interval == timedelta(seconds=5)


def test_key_uses_are_due_once_per_interval_and_bounded() -> None:
    uses = KeyUses(interval=60, capacity=3)
    assert uses.due(b"a", now=0)
    uses.stamped(b"a", now=0)
    assert not uses.due(b"a", now=59.9)
    assert uses.due(b"a", now=60)
    for n, key in enumerate([b"b", b"c", b"d"], start=1):
        uses.stamped(key, now=n)
    assert len(uses) == 3
    assert uses.due(b"a", now=10), "the oldest stamp was forgotten to make room"
    assert not uses.due(b"b", now=10)
    uses.stamped(b"b", now=11)  # b is now the newest; c goes next
    uses.stamped(b"e", now=12)
    assert uses.due(b"c", now=13) and not uses.due(b"b", now=13)


@pytest.fixture
def database_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://localhost/auth")
    for name in (
        "AUTH_SESSION_IDLE_SECONDS",
        "AUTH_PASSWORD_MEMORY_KIB",
        "AUTH_PASSWORD_CHANGES_PER_SESSION_PER_HOUR",
        "AUTH_MAX_KEYS_PER_ACCOUNT",
    ):
        monkeypatch.delenv(name, raising=False)


def test_the_defaults(database_env: None) -> None:
    settings = AuthSettings()
    assert (
        settings.password_time_cost,
        settings.password_memory_kib,
        settings.password_parallelism,
        settings.password_hash_concurrency,
    ) == (3, 65536, 4, 4)
    assert (settings.session_idle_seconds, settings.session_max_seconds) == (86400, 604800)
    assert (
        settings.sign_ins_per_address_per_minute,
        settings.sign_ups_per_address_per_hour,
        settings.sign_in_free_failures,
        settings.sign_in_base_delay_seconds,
        settings.sign_in_delay_cap_seconds,
    ) == (20, 10, 3, 1.0, 30.0)
    assert settings.password_changes_per_session_per_hour == 5
    assert settings.max_keys_per_account == 100


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"AUTH_SESSION_IDLE_SECONDS": "700000"}, "AUTH_SESSION_IDLE_SECONDS exceeds"),
        ({"AUTH_PASSWORD_MEMORY_KIB": "16"}, "AUTH_PASSWORD_MEMORY_KIB must be at least"),
        ({"AUTH_SIGN_IN_BASE_DELAY_SECONDS": "40"}, "AUTH_SIGN_IN_BASE_DELAY_SECONDS exceeds"),
        ({"AUTH_SIGN_INS_PER_ADDRESS_PER_MINUTE": "0"}, "AUTH_SIGN_INS_PER_ADDRESS_PER_MINUTE"),
        ({"AUTH_PASSWORD_HASH_CONCURRENCY": "0"}, "AUTH_PASSWORD_HASH_CONCURRENCY"),
        (
            {"AUTH_PASSWORD_CHANGES_PER_SESSION_PER_HOUR": "0"},
            "AUTH_PASSWORD_CHANGES_PER_SESSION_PER_HOUR",
        ),
        ({"AUTH_MAX_KEYS_PER_ACCOUNT": "0"}, "AUTH_MAX_KEYS_PER_ACCOUNT"),
        # More live keys than one list shows would hide some.
        ({"AUTH_MAX_KEYS_PER_ACCOUNT": "1001"}, "AUTH_MAX_KEYS_PER_ACCOUNT"),
        # The database refuses sessions longer than 400 days (migration 0003).
        ({"AUTH_SESSION_MAX_SECONDS": str(400 * 86400 + 1)}, "AUTH_SESSION_MAX_SECONDS"),
    ],
)
def test_bad_settings_stop_the_start_naming_the_variable(
    database_env: None,
    monkeypatch: pytest.MonkeyPatch,
    env: dict[str, str],
    named: str,
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        load_settings(AuthSettings)
    assert named in str(exited.value)
