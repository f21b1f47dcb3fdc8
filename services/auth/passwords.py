"""Passwords and emails: the rules a new one must meet, and argon2id off the event loop.

A password is stored only as an argon2id PHC string (`$argon2id$v=19$m=…,t=…,p=…$salt$hash`),
which names its own cost, so raising the cost in settings leaves old hashes verifiable and
`needs_rehash` tells the sign-in to store a fresh one. Hashing takes tens of milliseconds of
CPU and `memory_kib` of memory by design: it runs in a pool of `concurrency` threads of its own,
so the event loop never waits on it and a flood of sign-ins queues instead of taking the
process's memory (at most concurrency × memory_kib is ever in use). A cancelled call that has
not started yet never starts.

An unknown email is checked against a fixed dummy hash made with the same cost, so a wrong
password and an unknown email take the same time.

The rules are deliberately few: a password is 8 to 128 characters (code points), nothing else
(NIST SP 800-63B); an email is trimmed, lower-cased, at most 254 characters, one "@" between a
non-empty local part and a domain with a dot, without whitespace or unprintable characters.
Every check is a single pass over the string: no regular expression, nothing to backtrack.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import TypeVar

from argon2 import PasswordHasher, Type
from argon2.exceptions import VerificationError

T = TypeVar("T")

MIN_PASSWORD_LENGTH = 8
MAX_PASSWORD_LENGTH = 128
MAX_EMAIL_LENGTH = 254


def password_problem(password: str) -> str | None:
    """Why `password` cannot be set, or None when it can."""
    if not password:
        return "is required"
    if len(password) < MIN_PASSWORD_LENGTH:
        return f"must be at least {MIN_PASSWORD_LENGTH} characters"
    if len(password) > MAX_PASSWORD_LENGTH:
        return f"must be at most {MAX_PASSWORD_LENGTH} characters"
    return None


def normalize_email(raw: str) -> str:
    """The form an email is stored and compared in: trimmed and lower-cased."""
    return raw.strip().lower()


def email_problem(email: str) -> str | None:
    """Why the normalized `email` cannot be a person's, or None when it can."""
    if not email:
        return "is required"
    if len(email) > MAX_EMAIL_LENGTH:
        return f"must be at most {MAX_EMAIL_LENGTH} characters"
    if any(char.isspace() or not char.isprintable() for char in email):
        return "must not contain spaces or control characters"
    local, _, domain = email.partition("@")
    if not local or not domain or "@" in domain:
        return 'must be one name, "@" and a domain'
    if "." not in domain:
        return "must have a domain with a dot"
    return None


@dataclass(frozen=True)
class HashCost:
    """argon2id's parameters: passes, memory in KiB, lanes."""

    time_cost: int = 3
    memory_kib: int = 65536
    parallelism: int = 4


class Passwords:
    """argon2id hashing and verification in a bounded pool of threads."""

    def __init__(self, cost: HashCost, concurrency: int) -> None:
        self._hasher = PasswordHasher(
            time_cost=cost.time_cost,
            memory_cost=cost.memory_kib,
            parallelism=cost.parallelism,
            hash_len=32,
            salt_len=16,
            type=Type.ID,
        )
        self._pool = ThreadPoolExecutor(max_workers=concurrency, thread_name_prefix="argon2")
        self._dummy: str | None = None

    async def hash(self, password: str) -> str:
        return await self._run(self._hasher.hash, password)

    async def verify(self, stored: str | None, password: str) -> bool:
        """Whether `password` matches `stored`; None (no such person) checks the dummy hash,
        which nothing matches, so both answers take as long."""
        if stored is None:
            await self._run(self._verify, await self._dummy_hash(), password)
            return False
        return await self._run(self._verify, stored, password)

    def needs_rehash(self, stored: str) -> bool:
        """Whether `stored` was made with other parameters than the current ones."""
        return self._hasher.check_needs_rehash(stored)

    async def warm_up(self) -> None:
        """Make the dummy hash before the first unknown email, so that one takes no longer."""
        await self._dummy_hash()

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _dummy_hash(self) -> str:
        if self._dummy is None:
            self._dummy = await self.hash(secrets.token_urlsafe(16))
        return self._dummy

    def _verify(self, stored: str, password: str) -> bool:
        # A malformed stored hash (InvalidHashError) is not a wrong password: it propagates.
        try:
            return self._hasher.verify(stored, password)
        except VerificationError:  # VerifyMismatchError included
            return False

    async def _run(self, function: Callable[..., T], *args: str) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._pool, function, *args)
