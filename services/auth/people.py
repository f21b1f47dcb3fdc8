"""People and their sessions: sign-up, sign-in, and what a session may do.

The rules in the order they apply: fields are checked by the servicer before anything here runs;
then the window of the client address (a sign-in, a sign-up) or of the session (a password
change) (throttle.py), before any password is hashed; then the email's slowing, before its
password is checked; then the password, in a thread (passwords.py); then one statement or
transaction of the store. A wrong password and an unknown email take the same path, the same
time and the same answer, CREDENTIALS_INVALID.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass
from datetime import timedelta

from services.auth.passwords import Passwords
from services.auth.sessions import Lifetimes, could_be_token, new_token, token_digest
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore, Credentials, Session, User
from services.auth.throttle import Slowing, WindowLimit
from services.common.errors import ServiceError

_log = logging.getLogger("auth.people")


class CredentialsInvalid(ServiceError):
    """An email and password (or a session's current password) that do not match."""

    def __init__(self) -> None:
        super().__init__("wrong email or password", reason="CREDENTIALS_INVALID")


class SessionInvalid(ServiceError):
    """A session token that names no open session: unknown, signed out, idle or too old."""

    def __init__(self) -> None:
        super().__init__("no such session, or it has ended", reason="SESSION_INVALID")


@dataclass(frozen=True)
class SignedIn:
    """A new session: the token exists only here and in the response."""

    token: str
    session: Session


@dataclass(frozen=True)
class Rules:
    """The people settings, as the operations need them."""

    lifetimes: Lifetimes
    sign_ins: WindowLimit
    sign_ups: WindowLimit
    # ChangePassword attempts, per session.
    password_changes: WindowLimit
    slowing: Slowing

    @classmethod
    def of(cls, settings: AuthSettings) -> Rules:
        return cls(
            lifetimes=Lifetimes.of_seconds(
                settings.session_idle_seconds, settings.session_max_seconds
            ),
            sign_ins=WindowLimit(
                "sign-in",
                settings.sign_ins_per_address_per_minute,
                timedelta(minutes=1),
                "SIGN_IN_THROTTLED",
                "too many sign-ins from this address",
            ),
            sign_ups=WindowLimit(
                "sign-up",
                settings.sign_ups_per_address_per_hour,
                timedelta(hours=1),
                "SIGN_UP_THROTTLED",
                "too many sign-ups from this address",
            ),
            password_changes=WindowLimit(
                "password",
                settings.password_changes_per_session_per_hour,
                timedelta(hours=1),
                "PASSWORD_CHANGE_THROTTLED",
                "too many password changes in this session",
            ),
            slowing=Slowing(
                settings.sign_in_free_failures,
                settings.sign_in_base_delay_seconds,
                settings.sign_in_delay_cap_seconds,
            ),
        )


class People:
    """Sign-up, sign-in, sessions and passwords over the store. Takes checked fields: emails
    already normalized, passwords already within the rules."""

    def __init__(self, store: AuthStore, passwords: Passwords, rules: Rules) -> None:
        self._store = store
        self._passwords = passwords
        self._rules = rules

    async def sign_up(self, email: str, password: str, client_address: str) -> SignedIn:
        limit = self._rules.sign_ups
        attempt = await self._store.count_attempt(limit.key(client_address), limit.window)
        limit.check(attempt.count, attempt.retry_after_seconds)
        password_hash = await self._passwords.hash(password)
        token = new_token()
        session = await self._store.sign_up(
            email, password_hash, token.digest, self._rules.lifetimes
        )
        return SignedIn(token.plaintext, session)

    async def sign_in(self, email: str, password: str, client_address: str) -> SignedIn:
        limit = self._rules.sign_ins
        attempt = await self._store.password_attempt(
            limit.key(client_address), limit.window, limit.limit, email
        )
        limit.check(attempt.window.count, attempt.window.retry_after_seconds)
        await self._slow_down(attempt.failures or 0)
        credentials = await self._check_password(email, password)
        token = new_token()
        session = await self._store.open_session(credentials, token.digest, self._rules.lifetimes)
        if session is None:  # the password changed while this one was being checked
            raise CredentialsInvalid()
        if self._passwords.needs_rehash(credentials.password_hash):
            await self._rehash(credentials, password)
        return SignedIn(token.plaintext, session)

    async def resolve(self, token: str) -> Session:
        """The open session `token` names, which counts as its use; SessionInvalid if none."""
        if not could_be_token(token):
            raise SessionInvalid()
        session = await self._store.resolve_session(token_digest(token), self._rules.lifetimes)
        if session is None:
            raise SessionInvalid()
        return session

    async def sign_out(self, token: str) -> None:
        if could_be_token(token):
            await self._store.end_session(token_digest(token))

    async def change_password(self, token: str, current: str, new: str) -> int:
        """Set the session's person's password, checked and slowed like a sign-in, within the
        session's own window (a stolen session must not become a way to guess the password);
        end their other sessions."""
        session = await self.resolve(token)
        email = session.user.email
        limit = self._rules.password_changes
        attempt = await self._store.password_attempt(
            limit.key(session.id), limit.window, limit.limit, email
        )
        limit.check(attempt.window.count, attempt.window.retry_after_seconds)
        await self._slow_down(attempt.failures or 0)
        credentials = await self._check_password(email, current)
        new_hash = await self._passwords.hash(new)
        ended = await self._store.change_password(credentials, new_hash, session.id)
        if ended is None:  # changed meanwhile by another request
            raise CredentialsInvalid()
        return ended

    async def create_user(self, account_id: str, email: str, password: str) -> User:
        return await self._store.create_user(
            account_id, email, await self._passwords.hash(password)
        )

    async def reset_password(self, email: str, password: str) -> tuple[User, int]:
        return await self._store.reset_password(email, await self._passwords.hash(password))

    async def _rehash(self, credentials: Credentials, password: str) -> None:
        """Store the password under the current cost; the session is open already, so a
        failure here is only logged (the next sign-in tries again)."""
        try:
            await self._store.rehash(credentials, await self._passwords.hash(password))
        except Exception:
            _log.warning("could not rehash a password under the new cost", exc_info=True)

    async def _slow_down(self, failures: int) -> None:
        delay = self._rules.slowing.delay(failures)
        if delay > 0:
            await asyncio.sleep(delay)

    async def _check_password(self, email: str, password: str) -> Credentials:
        """The person with `email` if `password` is theirs; an unknown email costs the same."""
        credentials = await self._store.credentials(email)
        stored = credentials.password_hash if credentials is not None else None
        if not await self._passwords.verify(stored, password) or credentials is None:
            raise CredentialsInvalid()
        return credentials
