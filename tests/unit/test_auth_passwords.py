"""Passwords and emails: the rules, and argon2id hashing kept off the event loop and bounded."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Callable

import pytest
from argon2.exceptions import InvalidHashError

from services.auth.passwords import (
    HashCost,
    Passwords,
    email_problem,
    normalize_email,
    password_problem,
)

# Cheap enough to hash hundreds of times; the default cost has one test of its own.
CHEAP = HashCost(time_cost=1, memory_kib=64, parallelism=1)


class FakeHasher:
    """Stands in for argon2's PasswordHasher where only the threading is under test."""

    def __init__(self, hash_: Callable[[str], str]) -> None:
        self.hash = hash_


@pytest.mark.parametrize(
    ("password", "accepted"),
    [
        ("", False),
        ("x" * 7, False),
        ("x" * 8, True),
        ("correct horse", True),
        ("é" * 8, True),  # 16 bytes, 8 characters
        ("😀" * 128, True),  # 512 bytes, 128 code points
        ("x" * 128, True),
        ("x" * 129, False),
        ("12345678", True),  # no composition rules
        ("        ", True),  # nor any on spaces: eight of them are a password
    ],
)
def test_password_rule_is_length_in_code_points_only(password: str, accepted: bool) -> None:
    assert (password_problem(password) is None) == accepted


@pytest.mark.parametrize(
    ("raw", "stored"),
    [
        ("Alice@Example.COM", "alice@example.com"),
        ("  bob@example.org\t\n", "bob@example.org"),
        ("ÉLODIE@exemple.fr", "élodie@exemple.fr"),
    ],
)
def test_emails_are_trimmed_and_lower_cased(raw: str, stored: str) -> None:
    assert normalize_email(raw) == stored
    assert email_problem(stored) is None


@pytest.mark.parametrize(
    "email",
    [
        "",
        "plainaddress",
        "@example.com",
        "alice@",
        "alice@localhost",
        "a@b@example.com",
        "alice smith@example.com",
        "alice@exa\tmple.com",
        "alice\x00@example.com",
        "alice\u200b@example.com",  # zero-width space: unprintable
        "alice\u2028@example.com",  # line separator
        "a" * 243 + "@example.com",  # 255 characters
    ],
)
def test_malformed_emails_are_refused(email: str) -> None:
    assert email_problem(normalize_email(email)) is not None


def test_the_longest_email_is_254_characters() -> None:
    assert email_problem("a" * 242 + "@example.com") is None


def test_email_checks_take_linear_time_on_hostile_input() -> None:
    # Shapes that make a backtracking regular expression explode, each a megabyte.
    hostile = ["a" * 1_000_000 + "@", "@" * 1_000_000, "a." * 500_000 + "@", "a@" + "." * 999_998]
    started = time.perf_counter()
    for email in hostile:
        assert email_problem(normalize_email(email)) is not None
    assert time.perf_counter() - started < 1.0


async def test_a_hash_verifies_its_password_only() -> None:
    passwords = Passwords(CHEAP, concurrency=2)
    try:
        stored = await passwords.hash("correct horse")
        assert stored.startswith("$argon2id$v=19$m=64,t=1,p=1$")
        assert await passwords.verify(stored, "correct horse")
        assert not await passwords.verify(stored, "correct horsf")
        assert not await passwords.verify(stored, "")
        assert await passwords.hash("correct horse") != stored, "salted"
    finally:
        passwords.close()


async def test_the_default_cost_is_rfc_9106s_second_recommendation() -> None:
    passwords = Passwords(HashCost(), concurrency=1)
    try:
        stored = await passwords.hash("correct horse")
        assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
        assert await passwords.verify(stored, "correct horse")
        assert not passwords.needs_rehash(stored)
    finally:
        passwords.close()


async def test_a_changed_cost_asks_for_a_rehash() -> None:
    cheap, dearer = Passwords(CHEAP, 1), Passwords(HashCost(2, 128, 1), 1)
    try:
        stored = await cheap.hash("correct horse")
        assert not cheap.needs_rehash(stored)
        assert dearer.needs_rehash(stored)
        assert await dearer.verify(stored, "correct horse"), "old hashes still verify"
    finally:
        cheap.close()
        dearer.close()


async def test_an_unknown_person_is_checked_against_the_dummy_hash() -> None:
    passwords = Passwords(CHEAP, 1)
    checked: list[str] = []
    verify = passwords._verify

    def recording(stored: str, password: str) -> bool:
        checked.append(stored)
        return verify(stored, password)

    passwords._verify = recording  # type: ignore[method-assign]
    try:
        await passwords.warm_up()
        assert not await passwords.verify(None, "anything at all")
        assert not await passwords.verify(None, "anything else")
        assert len(checked) == 2 and checked[0] == checked[1]
        assert checked[0].startswith("$argon2id$v=19$m=64,t=1,p=1$"), "the current cost"
    finally:
        passwords.close()


async def test_a_corrupt_stored_hash_is_an_error_not_a_wrong_password() -> None:
    passwords = Passwords(CHEAP, 1)
    try:
        with pytest.raises(InvalidHashError):
            await passwords.verify("not a hash", "correct horse")
    finally:
        passwords.close()


async def test_hashing_runs_off_the_loop_at_most_concurrency_at_a_time() -> None:
    passwords = Passwords(CHEAP, concurrency=2)
    lock = threading.Lock()
    running, most = 0, 0
    loop_thread = threading.get_ident()
    threads: set[int] = set()

    def slow_hash(password: str) -> str:
        nonlocal running, most
        with lock:
            running += 1
            most = max(most, running)
            threads.add(threading.get_ident())
        time.sleep(0.05)
        with lock:
            running -= 1
        return "$argon2id$fake"

    passwords._hasher = FakeHasher(slow_hash)  # type: ignore[assignment]
    ticks = 0

    async def ticker() -> None:
        nonlocal ticks
        while True:
            ticks += 1
            await asyncio.sleep(0.005)

    ticking = asyncio.create_task(ticker())
    try:
        await asyncio.gather(*(passwords.hash(str(n)) for n in range(8)))
    finally:
        ticking.cancel()
        passwords.close()
    assert most == 2
    assert loop_thread not in threads
    assert ticks >= 20, "the event loop kept running while passwords were hashed"


async def test_a_cancelled_hash_that_has_not_started_never_runs() -> None:
    passwords = Passwords(CHEAP, concurrency=1)
    started: list[str] = []
    release = threading.Event()

    def blocking_hash(password: str) -> str:
        started.append(password)
        release.wait(5)
        return "$argon2id$fake"

    passwords._hasher = FakeHasher(blocking_hash)  # type: ignore[assignment]
    try:
        first = asyncio.create_task(passwords.hash("first"))
        queued = asyncio.create_task(passwords.hash("queued"))
        await asyncio.sleep(0.05)
        queued.cancel()
        await asyncio.sleep(0.01)  # the cancellation reaches the pool's queue
        release.set()
        await first
        with pytest.raises(asyncio.CancelledError):
            await queued
        await asyncio.sleep(0.05)
    finally:
        passwords.close()
    assert started == ["first"]
