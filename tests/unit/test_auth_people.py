"""people.py against a fake store and fake passwords: what happens before a password is hashed
or checked, and what never reaches the database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from services.auth.people import CredentialsInvalid, People, Rules, SessionInvalid
from services.auth.sessions import Lifetimes
from services.auth.store import (
    Account,
    AttemptCount,
    Credentials,
    PasswordAttempt,
    Session,
    User,
)
from services.auth.throttle import Slowing, Throttled, WindowLimit

NOW = datetime.now(UTC)
USER = User("usr_1", "acct_1", "alice@example.com", NOW)
SESSION = Session("ses_1", USER, Account("acct_1", "alice@example.com", NOW), NOW, NOW)
RULES = Rules(
    lifetimes=Lifetimes.of_seconds(60, 600),
    sign_ins=WindowLimit("sign-in", 2, timedelta(minutes=1), "SIGN_IN_THROTTLED", "too many"),
    sign_ups=WindowLimit("sign-up", 1, timedelta(hours=1), "SIGN_UP_THROTTLED", "too many"),
    password_changes=WindowLimit(
        "password", 2, timedelta(hours=1), "PASSWORD_CHANGE_THROTTLED", "too many"
    ),
    slowing=Slowing(free_failures=3, base_delay_seconds=0, cap_seconds=0),
)


class FakeStore:
    def __init__(
        self, count: int = 1, known: Credentials | None = None, session: Session | None = None
    ) -> None:
        self.count = count
        self.known = known
        self.session = session
        self.calls: list[str] = []

    async def count_attempt(self, key: str, window: timedelta) -> AttemptCount:
        self.calls.append(f"count_attempt {key}")
        return AttemptCount(self.count, 42.0)

    async def password_attempt(
        self, key: str, window: timedelta, limit: int, email: str
    ) -> PasswordAttempt:
        self.calls.append(f"password_attempt {key} {email}")
        within = self.count <= limit
        return PasswordAttempt(AttemptCount(self.count, 42.0), 0 if within else None)

    async def credentials(self, email: str) -> Credentials | None:
        self.calls.append(f"credentials {email}")
        return self.known

    async def open_session(self, *args: Any) -> Session:
        self.calls.append("open_session")
        return SESSION

    async def sign_up(self, *args: Any) -> Session:
        self.calls.append("sign_up")
        return SESSION

    async def resolve_session(self, *args: Any) -> Session | None:
        self.calls.append("resolve_session")
        return self.session

    async def change_password(self, *args: Any) -> int:
        self.calls.append("change_password")
        return 0

    async def end_session(self, *args: Any) -> None:
        self.calls.append("end_session")


class FakePasswords:
    def __init__(self) -> None:
        self.calls: list[tuple[str, str | None]] = []

    async def hash(self, password: str) -> str:
        self.calls.append(("hash", None))
        return "$argon2id$fake"

    async def verify(self, stored: str | None, password: str) -> bool:
        self.calls.append(("verify", stored))
        return stored == "$argon2id$right" and password == "right password"

    def needs_rehash(self, stored: str) -> bool:
        return False


def people(store: FakeStore) -> tuple[People, FakePasswords]:
    passwords = FakePasswords()
    return People(store, passwords, RULES), passwords  # type: ignore[arg-type]


async def test_a_throttled_sign_in_hashes_nothing_and_counts_nothing_against_the_email() -> None:
    store = FakeStore(count=3)
    subject, passwords = people(store)

    with pytest.raises(Throttled) as raised:
        await subject.sign_in("alice@example.com", "right password", "203.0.113.7")

    assert raised.value.metadata == {"retry_after_seconds": "42"}
    assert store.calls == ["password_attempt sign-in:203.0.113.7 alice@example.com"]
    assert passwords.calls == []


async def test_a_throttled_sign_up_hashes_nothing() -> None:
    store = FakeStore(count=2)
    subject, passwords = people(store)

    with pytest.raises(Throttled) as raised:
        await subject.sign_up("alice@example.com", "right password", "")

    assert raised.value.reason == "SIGN_UP_THROTTLED"
    assert store.calls == ["count_attempt sign-up:unknown"]
    assert passwords.calls == []


async def test_an_unknown_email_is_checked_against_the_dummy_hash_and_refused() -> None:
    store = FakeStore(known=None)
    subject, passwords = people(store)

    with pytest.raises(CredentialsInvalid):
        await subject.sign_in("nobody@example.com", "right password", "")

    assert passwords.calls == [("verify", None)]
    assert "open_session" not in store.calls


async def test_the_right_password_opens_a_session_the_wrong_one_does_not() -> None:
    store = FakeStore(known=Credentials(USER, "$argon2id$right"))
    subject, _ = people(store)

    with pytest.raises(CredentialsInvalid):
        await subject.sign_in("alice@example.com", "wrong password", "")
    assert "open_session" not in store.calls
    signed_in = await subject.sign_in("alice@example.com", "right password", "")

    assert signed_in.session == SESSION and len(signed_in.token) == 43
    assert store.calls[-1] == "open_session"


@pytest.mark.parametrize("token", ["", "t" * 129, "t" * 1_000_000])
async def test_tokens_that_cannot_be_tokens_never_reach_the_store(token: str) -> None:
    store = FakeStore()
    subject, _ = people(store)

    with pytest.raises(SessionInvalid):
        await subject.resolve(token)
    await subject.sign_out(token)

    assert store.calls == []


async def test_a_password_change_past_its_sessions_limit_checks_and_hashes_nothing() -> None:
    """The session's window comes before the email's slowing, the check and the hash, so a
    stolen session cannot buy more guesses by sending them at once."""
    store = FakeStore(count=3, known=Credentials(USER, "$argon2id$right"), session=SESSION)
    subject, passwords = people(store)

    with pytest.raises(Throttled) as raised:
        await subject.change_password("t" * 43, "right password", "a new password")

    assert raised.value.reason == "PASSWORD_CHANGE_THROTTLED"
    assert raised.value.metadata == {"retry_after_seconds": "42"}
    assert store.calls == ["resolve_session", "password_attempt password:ses_1 alice@example.com"]
    assert passwords.calls == []


async def test_a_password_change_within_its_sessions_limit_is_checked_then_made() -> None:
    store = FakeStore(count=2, known=Credentials(USER, "$argon2id$right"), session=SESSION)
    subject, passwords = people(store)

    with pytest.raises(CredentialsInvalid):
        await subject.change_password("t" * 43, "wrong password", "a new password")
    assert await subject.change_password("t" * 43, "right password", "a new password") == 0

    assert store.calls[:3] == [
        "resolve_session",
        "password_attempt password:ses_1 alice@example.com",
        "credentials alice@example.com",
    ]
    assert store.calls[-1] == "change_password"
    assert passwords.calls[-2:] == [("verify", "$argon2id$right"), ("hash", None)]
