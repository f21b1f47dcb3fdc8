"""People, sessions and own keys as the dashboard and operators use them: a real auth process
over mutual TLS, backed by a real PostgreSQL.

One process serves most of the module, with argon2 made cheap and the slowing made short through
its environment, so that timing is about throttling, not hashing. Tests that need a session to
be old or idle age it in the database as the owner. A second process serves as the
least-privilege role with the default argon2 cost, to prove grants.sql covers every statement
and that the default parameters are the ones stored.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import grpc
import psycopg
import pytest
from argon2 import PasswordHasher
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from psycopg import sql

from services.auth import ids
from services.auth.keys import KeyHasher
from services.auth.sessions import Lifetimes, new_token
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from services.cli.embedded_database import LOCAL_ROLES_SQL, OWNER_ROLE, SERVING_ROLES
from services.cli.processes import ServiceProcess
from services.common.errors import error_info
from tests.support.auth import AuthSecrets
from tests.support.pki import sync_channel
from tests.support.postgres import create_database

# The module's server: cheap hashes, short delays, small windows.
SETTINGS = {
    "AUTH_PASSWORD_TIME_COST": "1",
    "AUTH_PASSWORD_MEMORY_KIB": "64",
    "AUTH_PASSWORD_PARALLELISM": "1",
    "AUTH_SIGN_INS_PER_ADDRESS_PER_MINUTE": "8",
    "AUTH_SIGN_UPS_PER_ADDRESS_PER_HOUR": "5",
    "AUTH_SIGN_IN_FREE_FAILURES": "3",
    "AUTH_SIGN_IN_BASE_DELAY_SECONDS": "0.2",
    "AUTH_SIGN_IN_DELAY_CAP_SECONDS": "0.8",
    "AUTH_PASSWORD_CHANGES_PER_SESSION_PER_HOUR": "3",
    "AUTH_MAX_KEYS_PER_ACCOUNT": "3",
}
BASE_DELAY = 0.2
PASSWORD_CHANGES_PER_SESSION = 3
MAX_KEYS = 3
# AUTH_SESSION_IDLE_SECONDS, left at its default.
IDLE = timedelta(days=1)
PASSWORD = "correct horse battery"
# The same as test_database_roles.py's: the roles are the server's, shared by both modules.
ROLE_PASSWORD = "kokoropay-test-role"

CREDENTIALS_INVALID = (grpc.StatusCode.UNAUTHENTICATED, "CREDENTIALS_INVALID")
SESSION_INVALID = (grpc.StatusCode.UNAUTHENTICATED, "SESSION_INVALID")
EMAIL_TAKEN = (grpc.StatusCode.ALREADY_EXISTS, "EMAIL_TAKEN")
PASSWORD_CHANGE_THROTTLED = (grpc.StatusCode.RESOURCE_EXHAUSTED, "PASSWORD_CHANGE_THROTTLED")
KEY_LIMIT_REACHED = (grpc.StatusCode.FAILED_PRECONDITION, "KEY_LIMIT_REACHED")


def new_email(tag: str = "person") -> str:
    return f"{tag}-{uuid.uuid4().hex[:10]}@example.com"


def new_address() -> str:
    """A client address of its own, so a test's attempts meet no other test's counters."""
    return f"192.0.2.{uuid.uuid4().hex[:12]}"


@dataclass(frozen=True)
class Refusal:
    code: grpc.StatusCode
    reason: str | None
    metadata: dict[str, str]
    details: str

    @property
    def status(self) -> tuple[grpc.StatusCode, str | None]:
        return self.code, self.reason


def refusal_of(error: Any) -> Refusal:
    info = error_info(error)
    return Refusal(
        error.code(),
        info.reason if info is not None else None,
        dict(info.metadata) if info is not None else {},
        error.details(),
    )


def refused(call: Callable[[], Any]) -> Refusal:
    """How a call that must fail was refused."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    return refusal_of(raised.value)


@dataclass(frozen=True)
class Auth:
    process: ServiceProcess
    dashboard: auth_pb2_grpc.AuthServiceStub
    operator: auth_pb2_grpc.AuthServiceStub
    gateway: auth_pb2_grpc.AuthServiceStub
    # The schema owner's URL: tests read and age rows through it.
    database_url: str

    def sign_up(
        self, email: str, password: str = PASSWORD, address: str | None = None
    ) -> auth_pb2.SignInResponse:
        request = auth_pb2.SignUpRequest(
            email=email,
            password=password,
            client_address=new_address() if address is None else address,
        )
        response: auth_pb2.SignInResponse = self.dashboard.SignUp(request, timeout=10)
        return response

    def sign_in(
        self, email: str, password: str = PASSWORD, address: str | None = None
    ) -> auth_pb2.SignInResponse:
        request = auth_pb2.SignInRequest(
            email=email,
            password=password,
            client_address=new_address() if address is None else address,
        )
        response: auth_pb2.SignInResponse = self.dashboard.SignIn(request, timeout=10)
        return response

    def resolve(self, token: str) -> auth_pb2.ResolveSessionResponse:
        request = auth_pb2.ResolveSessionRequest(session_token=token)
        response: auth_pb2.ResolveSessionResponse = self.dashboard.ResolveSession(
            request, timeout=10
        )
        return response

    def own_keys(self, token: str) -> list[auth_pb2.ApiKey]:
        request = auth_pb2.ListOwnKeysRequest(session_token=token)
        return list(self.dashboard.ListOwnKeys(request, timeout=10).keys)

    def query(self, statement: str, *params: Any) -> list[tuple[Any, ...]]:
        with psycopg.connect(self.database_url, autocommit=True) as conn:
            cursor = conn.execute(statement.encode(), params)
            return cursor.fetchall() if cursor.description else []


def _stubs(process: ServiceProcess, database_url: str) -> Iterator[Auth]:
    dashboard = sync_channel(process.address, "dashboard")
    operator = sync_channel(process.address, "operator")
    gateway = sync_channel(process.address, "gateway")
    with dashboard, operator, gateway:
        yield Auth(
            process=process,
            dashboard=auth_pb2_grpc.AuthServiceStub(dashboard),
            operator=auth_pb2_grpc.AuthServiceStub(operator),
            gateway=auth_pb2_grpc.AuthServiceStub(gateway),
            database_url=database_url,
        )


@pytest.fixture(scope="module")
def people_database(postgres_url: str) -> str:
    return create_database(postgres_url, prefix="people")


@pytest.fixture(scope="module")
def auth_secrets() -> AuthSecrets:
    return AuthSecrets.generate()


@pytest.fixture(scope="module")
def auth(people_database: str, auth_secrets: AuthSecrets, log_dir: Path) -> Iterator[Auth]:
    process = ServiceProcess(
        "auth", {**auth_secrets.env(people_database), **SETTINGS}, log_dir
    ).start()
    try:
        yield from _stubs(process, people_database)
    finally:
        process.stop()


def _session_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _when(stamp: Any) -> datetime:
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


# --- signing up, in and out -------------------------------------------------------------------


def test_sign_up_then_resolve_then_sign_out(auth: Auth) -> None:
    email = new_email("lifecycle")
    before = datetime.now(UTC)
    signed_up = auth.sign_up(email)

    assert signed_up.user.id.startswith("usr_") and signed_up.account.id.startswith("acct_")
    assert signed_up.user.email == email
    assert signed_up.user.account_id == signed_up.account.id
    assert signed_up.account.name == email, "the account is named after the email"
    assert len(signed_up.session_token) == 43
    idle_deadline, deadline = _when(signed_up.idle_expire_time), _when(signed_up.expire_time)
    assert abs(idle_deadline - before - timedelta(days=1)) < timedelta(seconds=30)
    assert abs(deadline - before - timedelta(days=7)) < timedelta(seconds=30)

    resolved = auth.resolve(signed_up.session_token)
    assert (resolved.user, resolved.account) == (signed_up.user, signed_up.account)
    assert resolved.expire_time == signed_up.expire_time

    auth.dashboard.SignOut(auth_pb2.SignOutRequest(session_token=signed_up.session_token))
    assert refused(lambda: auth.resolve(signed_up.session_token)).status == SESSION_INVALID
    # Idempotent, and quiet about tokens that never were.
    auth.dashboard.SignOut(auth_pb2.SignOutRequest(session_token=signed_up.session_token))
    auth.dashboard.SignOut(auth_pb2.SignOutRequest(session_token="never issued"))
    auth.dashboard.SignOut(auth_pb2.SignOutRequest(session_token="x" * 10_000))

    signed_in = auth.sign_in(email)
    assert signed_in.user == signed_up.user
    assert signed_in.session_token != signed_up.session_token
    assert auth.resolve(signed_in.session_token).user.id == signed_up.user.id


def test_a_wrong_password_and_an_unknown_email_are_refused_alike(auth: Auth) -> None:
    email = new_email("alike")
    auth.sign_up(email)

    wrong = refused(lambda: auth.sign_in(email, "not the password"))
    unknown = refused(lambda: auth.sign_in(new_email("nobody")))

    assert wrong.status == unknown.status == CREDENTIALS_INVALID
    assert wrong.details == unknown.details
    assert wrong.metadata == unknown.metadata == {}


def test_emails_are_compared_lower_cased_and_trimmed(auth: Auth) -> None:
    local = f"Mixed.Case-{uuid.uuid4().hex[:8]}"
    signed_up = auth.sign_up(f"  {local}@Example.COM ")
    stored = f"{local.lower()}@example.com"

    assert signed_up.user.email == stored
    assert auth.sign_in(f"{local.upper()}@EXAMPLE.com").user.id == signed_up.user.id
    assert refused(lambda: auth.sign_up(f"{local}@example.COM")).status == EMAIL_TAKEN


def test_the_account_is_named_after_the_person_when_the_email_cannot_name_it(auth: Auth) -> None:
    email = new_email("named")
    auth.operator.CreateAccount(auth_pb2.CreateAccountRequest(name=email))
    long_email = "l" * 60 + new_email("long")

    taken_name = auth.sign_up(email)
    too_long = auth.sign_up(long_email)

    assert taken_name.account.name == taken_name.user.id
    assert too_long.account.name == too_long.user.id and too_long.user.email == long_email


def test_passwords_of_8_and_128_characters_are_accepted(auth: Auth) -> None:
    for password in ("p" * 8, "p" * 128, "🔑" * 128):
        email = new_email("boundary")
        auth.sign_up(email, password)
        assert auth.sign_in(email, password).user.email == email


def _bad_fields() -> list[Any]:
    token = "t" * 43
    account_id = "acct_01JD3Q0000000000000000000Z"
    cases: list[tuple[str, str, str, Any, str]] = [
        ("dashboard", "SignUp", "empty email", auth_pb2.SignUpRequest(password=PASSWORD), "email"),
        (
            "dashboard",
            "SignUp",
            "email without @",
            auth_pb2.SignUpRequest(email="nobody.example.com", password=PASSWORD),
            "email",
        ),
        (
            "dashboard",
            "SignUp",
            "email with a space",
            auth_pb2.SignUpRequest(email="no body@example.com", password=PASSWORD),
            "email",
        ),
        (
            "dashboard",
            "SignUp",
            "255-character email",
            auth_pb2.SignUpRequest(email="a" * 243 + "@example.com", password=PASSWORD),
            "email",
        ),
        (
            "dashboard",
            "SignUp",
            "7-character password",
            auth_pb2.SignUpRequest(email="seven@example.com", password="p" * 7),
            "password",
        ),
        (
            "dashboard",
            "SignUp",
            "129-character password",
            auth_pb2.SignUpRequest(email="long@example.com", password="p" * 129),
            "password",
        ),
        (
            "dashboard",
            "SignUp",
            "65-character address",
            auth_pb2.SignUpRequest(
                email="far@example.com", password=PASSWORD, client_address="1" * 65
            ),
            "client_address",
        ),
        (
            "dashboard",
            "SignIn",
            "email without a dotted domain",
            auth_pb2.SignInRequest(email="someone@localhost", password=PASSWORD),
            "email",
        ),
        (
            "dashboard",
            "SignIn",
            "empty password",
            auth_pb2.SignInRequest(email="someone@example.com"),
            "password",
        ),
        (
            "dashboard",
            "SignIn",
            "129-character password",
            auth_pb2.SignInRequest(email="someone@example.com", password="p" * 129),
            "password",
        ),
        (
            "dashboard",
            "SignIn",
            "NUL in the address",
            auth_pb2.SignInRequest(
                email="someone@example.com", password=PASSWORD, client_address="1.2.3.4\x00"
            ),
            "client_address",
        ),
        (
            "dashboard",
            "ChangePassword",
            "empty current password",
            auth_pb2.ChangePasswordRequest(session_token=token, new_password=PASSWORD),
            "current_password",
        ),
        (
            "dashboard",
            "ChangePassword",
            "short new password",
            auth_pb2.ChangePasswordRequest(
                session_token=token, current_password=PASSWORD, new_password="short"
            ),
            "new_password",
        ),
        (
            "dashboard",
            "CreateOwnKey",
            "no name",
            auth_pb2.CreateOwnKeyRequest(session_token=token),
            "name",
        ),
        (
            "dashboard",
            "CreateOwnKey",
            "65-character name",
            auth_pb2.CreateOwnKeyRequest(session_token=token, name="k" * 65),
            "name",
        ),
        (
            "dashboard",
            "RevokeOwnKey",
            "an account id for a key id",
            auth_pb2.RevokeOwnKeyRequest(session_token=token, key_id=account_id),
            "key_id",
        ),
        (
            "operator",
            "CreateUser",
            "malformed account id",
            auth_pb2.CreateUserRequest(
                account_id="acct_nope", email="op@example.com", password=PASSWORD
            ),
            "account_id",
        ),
        (
            "operator",
            "CreateUser",
            "bad email",
            auth_pb2.CreateUserRequest(account_id=account_id, email="op", password=PASSWORD),
            "email",
        ),
        (
            "operator",
            "CreateUser",
            "short password",
            auth_pb2.CreateUserRequest(
                account_id=account_id, email="op@example.com", password="short"
            ),
            "password",
        ),
        (
            "operator",
            "ResetPassword",
            "no email",
            auth_pb2.ResetPasswordRequest(new_password=PASSWORD),
            "email",
        ),
        (
            "operator",
            "ResetPassword",
            "short password",
            auth_pb2.ResetPasswordRequest(email="op@example.com", new_password="short"),
            "new_password",
        ),
        (
            "operator",
            "RevokeKey",
            "account id for a key id",
            auth_pb2.RevokeKeyRequest(key_id=account_id),
            "key_id",
        ),
        ("operator", "CreateAccount", "empty name", auth_pb2.CreateAccountRequest(), "name"),
    ]
    return [
        pytest.param(caller, method, request, field, id=f"{method}: {name}")
        for caller, method, name, request, field in cases
    ]


def _rows(auth: Auth) -> tuple[Any, ...]:
    [counts] = auth.query(
        "SELECT (SELECT count(*) FROM auth.accounts), (SELECT count(*) FROM auth.users),"
        " (SELECT count(*) FROM auth.sessions), (SELECT sum(count) FROM auth.throttle_windows),"
        " (SELECT sum(failures) FROM auth.sign_in_failures)"
    )
    return counts


@pytest.mark.parametrize(("caller", "method", "request_", "field"), _bad_fields())
def test_a_bad_field_is_named_and_nothing_is_counted_or_written(
    auth: Auth, caller: str, method: str, request_: Any, field: str
) -> None:
    stub = auth.dashboard if caller == "dashboard" else auth.operator
    before = _rows(auth)

    refusal = refused(lambda: getattr(stub, method)(request_, timeout=10))

    assert refusal.status == (grpc.StatusCode.INVALID_ARGUMENT, "FIELD_INVALID")
    assert refusal.metadata == {"field": field}
    assert refusal.details.startswith(f"{field} ")
    assert _rows(auth) == before


@pytest.mark.parametrize(
    "token",
    ["", "x", "t" * 43, "t" * 128, "t" * 129, "t" * 100_000],
    ids=["empty", "short", "unknown", "128 characters", "129 characters", "huge"],
)
def test_a_token_that_names_no_session_is_session_invalid(auth: Auth, token: str) -> None:
    assert refused(lambda: auth.resolve(token)).status == SESSION_INVALID
    keys = refused(
        lambda: auth.dashboard.ListOwnKeys(auth_pb2.ListOwnKeysRequest(session_token=token))
    )
    assert keys.status == SESSION_INVALID


# --- session lifetimes --------------------------------------------------------------------------


def _age(auth: Auth, token: str, column: str, ago: timedelta) -> None:
    auth.query(
        f"UPDATE auth.sessions SET {column} = now() - %s WHERE token_hash = %s",
        ago,
        _session_digest(token),
    )


def _last_seen(auth: Auth, token: str) -> datetime:
    [(seen,)] = auth.query(
        "SELECT last_seen_time FROM auth.sessions WHERE token_hash = %s", _session_digest(token)
    )
    moment: datetime = seen
    return moment


def test_a_session_idle_too_long_ends(auth: Auth) -> None:
    token = auth.sign_up(new_email("idle")).session_token
    _age(auth, token, "last_seen_time", timedelta(hours=23, minutes=59))
    assert auth.resolve(token).user.email  # still within the day…

    other = auth.sign_up(new_email("idle")).session_token
    _age(auth, other, "last_seen_time", timedelta(hours=24, seconds=1))
    assert refused(lambda: auth.resolve(other)).status == SESSION_INVALID


def test_use_moves_the_idle_deadline_at_most_once_a_minute(auth: Auth) -> None:
    token = auth.sign_up(new_email("touch")).session_token
    _age(auth, token, "last_seen_time", timedelta(seconds=30))
    seen = _last_seen(auth, token)

    first = auth.resolve(token)
    assert _last_seen(auth, token) == seen, "used within the minute: not written"
    assert _when(first.idle_expire_time) == seen + timedelta(days=1)

    _age(auth, token, "last_seen_time", timedelta(minutes=5))
    moved = auth.resolve(token)
    assert _last_seen(auth, token) > seen
    assert _when(moved.idle_expire_time) == _last_seen(auth, token) + timedelta(days=1)


def _insert_session(
    auth: Auth, user_id: str, created: timedelta, expires: timedelta, ended: timedelta | None
) -> str:
    """A session of `user_id` written as the owner, created `created` ago, expiring `expires`
    from now (negative: in the past), ended `ended` ago or open; its token."""
    token = new_token().plaintext
    auth.query(
        "INSERT INTO auth.sessions"
        " (id, token_hash, user_id, create_time, last_seen_time, expire_time, end_time)"
        " VALUES (%s, %s, %s, now() - %s::interval, now() - %s::interval,"
        " now() + %s::interval, now() - %s::interval)",
        ids.new_id(ids.SESSION),
        _session_digest(token),
        user_id,
        created,
        min(created, timedelta(minutes=1)),
        expires,
        ended,
    )
    return token


def test_a_session_ends_at_its_absolute_deadline_however_active(auth: Auth) -> None:
    user_id = auth.sign_up(new_email("old")).user.id
    # Used a minute ago, but signed in a week and a second ago: a session's times never change
    # (migration 0003), so the aged one is written whole rather than rewritten.
    token = _insert_session(
        auth, user_id, timedelta(days=7, seconds=1), -timedelta(seconds=1), ended=None
    )
    assert refused(lambda: auth.resolve(token)).status == SESSION_INVALID
    fresh = _insert_session(auth, user_id, timedelta(minutes=1), timedelta(days=7), ended=None)
    assert auth.resolve(fresh).user.id == user_id


@pytest.mark.parametrize(
    "change",
    [
        "end_time = NULL",
        "end_time = end_time - interval '1 second'",
        "expire_time = expire_time + interval '1 day'",
        "create_time = create_time - interval '1 day'",
        "token_hash = sha256(token_hash)",
        "user_id = (SELECT id FROM auth.users WHERE id <> %(user)s LIMIT 1)",
        "id = id || 'x'",
    ],
)
def test_a_sessions_identity_deadline_and_end_never_change(auth: Auth, change: str) -> None:
    """Even the schema's owner cannot reopen a session, move its deadline or hand it over."""
    auth.sign_up(new_email("bystander"))
    user_id = auth.sign_up(new_email("frozen")).user.id
    token = _insert_session(
        auth, user_id, timedelta(hours=1), timedelta(days=1), ended=timedelta(minutes=1)
    )
    digest = _session_digest(token)
    with psycopg.connect(auth.database_url, autocommit=True) as conn:
        before = conn.execute(
            "SELECT * FROM auth.sessions WHERE token_hash = %s", [digest]
        ).fetchone()
        with pytest.raises(psycopg.errors.CheckViolation):
            conn.execute(
                f"UPDATE auth.sessions SET {change} WHERE token_hash = %(digest)s".encode(),
                {"digest": digest, "user": user_id},
            )
        after = conn.execute(
            "SELECT * FROM auth.sessions WHERE token_hash = %s", [digest]
        ).fetchone()
    assert after == before


def test_an_open_session_may_still_be_used_and_ended_once(auth: Auth) -> None:
    token = auth.sign_up(new_email("ending")).session_token
    _age(auth, token, "last_seen_time", timedelta(minutes=5))
    auth.resolve(token)
    auth.dashboard.SignOut(auth_pb2.SignOutRequest(session_token=token))
    [(ended,)] = auth.query(
        "SELECT end_time FROM auth.sessions WHERE token_hash = %s", _session_digest(token)
    )
    assert ended is not None
    # Setting it to what it is changes nothing, so it is no change.
    auth.query(
        "UPDATE auth.sessions SET end_time = end_time, last_seen_time = last_seen_time"
        " WHERE token_hash = %s",
        _session_digest(token),
    )


def test_a_session_may_not_last_over_400_days(auth: Auth) -> None:
    user_id = auth.sign_up(new_email("eternal")).user.id
    _insert_session(auth, user_id, timedelta(days=1), timedelta(days=399), ended=None)
    with pytest.raises(psycopg.errors.CheckViolation) as raised:
        _insert_session(auth, user_id, timedelta(days=1), timedelta(days=400), ended=None)
    assert raised.value.diag.constraint_name == "sessions_last_at_most_400_days"


# --- throttling ---------------------------------------------------------------------------------


def _within_one_window(seconds: int, attempt: Callable[[], None]) -> None:
    """Run `attempt`; if a fixed window turned while it ran (its counts then straddle two),
    run it once more: it takes far less than a window, so it cannot straddle twice."""
    for _ in range(2):
        started = int(time.time()) // seconds
        try:
            attempt()
            return
        except AssertionError:
            if int(time.time()) // seconds == started:
                raise
    attempt()


def test_sign_ins_past_an_addresss_limit_are_refused_until_the_minute_turns(auth: Auth) -> None:
    email = new_email("throttled")
    auth.sign_up(email)

    def attempt() -> None:
        address = new_address()
        for _ in range(8):  # AUTH_SIGN_INS_PER_ADDRESS_PER_MINUTE, each on another email
            wrong = refused(lambda: auth.sign_in(new_email("guess"), address=address))
            assert wrong.status == CREDENTIALS_INVALID
        refusal = refused(lambda: auth.sign_in(email, address=address))  # even the right one
        assert refusal.status == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SIGN_IN_THROTTLED")
        assert 1 <= int(refusal.metadata["retry_after_seconds"]) <= 60

    _within_one_window(60, attempt)
    assert auth.sign_in(email).user.email == email, "other addresses are not held back"


def test_sign_ups_past_an_addresss_limit_are_refused_until_the_hour_turns(auth: Auth) -> None:
    def attempt() -> None:
        address = new_address()
        for _ in range(5):  # AUTH_SIGN_UPS_PER_ADDRESS_PER_HOUR
            auth.sign_up(new_email("bulk"), address=address)
        refusal = refused(lambda: auth.sign_up(new_email("bulk"), address=address))
        assert refusal.status == (grpc.StatusCode.RESOURCE_EXHAUSTED, "SIGN_UP_THROTTLED")
        assert 1 <= int(refusal.metadata["retry_after_seconds"]) <= 3600

    _within_one_window(3600, attempt)


def test_attempts_without_an_address_share_one_bucket(auth: Auth) -> None:
    auth.sign_up(new_email("nameless"), address="")
    assert auth.query("SELECT count FROM auth.throttle_windows WHERE key = 'sign-up:unknown'")


def _timed(call: Callable[[], Any]) -> tuple[float, Any]:
    started = time.perf_counter()
    try:
        result = call()
    except grpc.RpcError as error:
        result = error
    return time.perf_counter() - started, result


def test_failures_slow_an_emails_attempts_but_the_right_password_still_gets_in(
    auth: Auth,
) -> None:
    email = new_email("slowed")
    auth.sign_up(email)
    for _ in range(3):  # AUTH_SIGN_IN_FREE_FAILURES: no wait yet
        assert refused(lambda: auth.sign_in(email, "wrong password")).status == (
            CREDENTIALS_INVALID
        )

    waited, signed_in = _timed(lambda: auth.sign_in(email))
    assert waited >= BASE_DELAY, "the fourth attempt waits before it is checked"
    assert isinstance(signed_in, auth_pb2.SignInResponse), "and the right password gets in"

    fast, wrong = _timed(lambda: auth.sign_in(email, "wrong password"))
    assert fast < BASE_DELAY, "success forgave the failures"
    assert isinstance(wrong, grpc.RpcError)
    for _ in range(3):  # the failures before this one make four: 0.2 s after the third
        _timed(lambda: auth.sign_in(email, "wrong password"))
    doubled, signed_in = _timed(lambda: auth.sign_in(email))
    assert doubled >= 2 * BASE_DELAY
    assert isinstance(signed_in, auth_pb2.SignInResponse)


def test_an_unknown_email_is_slowed_like_a_known_one(auth: Auth) -> None:
    email = new_email("ghost")
    for _ in range(3):
        _timed(lambda: auth.sign_in(email))
    waited, refusal = _timed(lambda: auth.sign_in(email))
    assert waited >= BASE_DELAY
    assert isinstance(refusal, grpc.RpcError)
    assert refusal.code() == grpc.StatusCode.UNAUTHENTICATED


def test_concurrent_sign_ups_with_one_email_make_one_person(auth: Auth) -> None:
    email = new_email("race")
    [(accounts_before,)] = auth.query("SELECT count(*) FROM auth.accounts")
    start = threading.Barrier(8)

    def sign_up(n: int) -> Any:
        start.wait()
        try:
            return auth.sign_up(email.upper() if n % 2 else email)
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(sign_up, range(8)))

    winners = [r for r in results if isinstance(r, auth_pb2.SignInResponse)]
    losers = [r for r in results if isinstance(r, grpc.RpcError)]
    assert len(winners) == 1
    assert [refusal_of(loser).status for loser in losers] == [EMAIL_TAKEN] * 7
    assert auth.query("SELECT count(*) FROM auth.users WHERE email = %s", email) == [(1,)]
    assert auth.query("SELECT count(*) FROM auth.accounts") == [(accounts_before + 1,)]
    assert auth.resolve(winners[0].session_token).user.email == email


# --- passwords ------------------------------------------------------------------------------------


def test_changing_the_password_ends_the_other_sessions_and_keeps_this_one(auth: Auth) -> None:
    email = new_email("changer")
    this = auth.sign_up(email).session_token
    others = [auth.sign_in(email).session_token for _ in range(2)]
    new_password = "a new password entirely"

    def change(current: str) -> Any:
        request = auth_pb2.ChangePasswordRequest(
            session_token=this, current_password=current, new_password=new_password
        )
        return auth.dashboard.ChangePassword(request, timeout=10)

    assert refused(lambda: change("not my password")).status == CREDENTIALS_INVALID
    assert all(auth.resolve(token) for token in [this, *others]), "a wrong one changes nothing"

    assert change(PASSWORD).ended_sessions == 2
    assert auth.resolve(this).user.email == email
    for token in others:
        assert refused(lambda token=token: auth.resolve(token)).status == SESSION_INVALID
    assert refused(lambda: auth.sign_in(email)).status == CREDENTIALS_INVALID
    assert auth.sign_in(email, new_password).user.email == email
    [(changed, created)] = auth.query(
        "SELECT password_change_time, create_time FROM auth.users WHERE email = %s", email
    )
    assert changed > created


def test_change_password_needs_an_open_session(auth: Auth) -> None:
    request = auth_pb2.ChangePasswordRequest(
        session_token="t" * 43, current_password=PASSWORD, new_password="whatever it is"
    )
    assert refused(lambda: auth.dashboard.ChangePassword(request)).status == SESSION_INVALID


def test_an_operator_reset_ends_every_session(auth: Auth) -> None:
    email = new_email("forgetful")
    sessions = [auth.sign_up(email).session_token, auth.sign_in(email).session_token]

    reset = auth.operator.ResetPassword(
        auth_pb2.ResetPasswordRequest(email=email.upper(), new_password="reset by an operator")
    )

    assert (reset.user.email, reset.ended_sessions) == (email, 2)
    for token in sessions:
        assert refused(lambda token=token: auth.resolve(token)).status == SESSION_INVALID
    assert refused(lambda: auth.sign_in(email)).status == CREDENTIALS_INVALID
    assert auth.sign_in(email, "reset by an operator").user.email == email
    nobody = auth_pb2.ResetPasswordRequest(email=new_email("nobody"), new_password=PASSWORD)
    assert refused(lambda: auth.operator.ResetPassword(nobody)).code == grpc.StatusCode.NOT_FOUND


def _change_password(auth: Auth, token: str, current: str, new: str) -> Any:
    request = auth_pb2.ChangePasswordRequest(
        session_token=token, current_password=current, new_password=new
    )
    return auth.dashboard.ChangePassword(request, timeout=10)


def test_a_session_may_try_its_password_only_so_often(auth: Auth) -> None:
    """A stolen session cookie is worth AUTH_PASSWORD_CHANGES_PER_SESSION_PER_HOUR guesses an
    hour, however many it sends at once; the person's other sessions are not held back."""
    email = new_email("guessed")
    own = auth.sign_up(email).session_token
    stolen: list[str] = []
    tries = PASSWORD_CHANGES_PER_SESSION + 3

    def guess(session: str, n: int) -> Refusal:
        return refused(lambda: _change_password(auth, session, f"guess {n}!", "x" * 8))

    def attempt() -> None:
        session = auth.sign_in(email).session_token
        stolen.append(session)
        with ThreadPoolExecutor(tries) as pool:
            statuses = [r.status for r in pool.map(guess, [session] * tries, range(tries))]
        assert statuses.count(CREDENTIALS_INVALID) == PASSWORD_CHANGES_PER_SESSION
        assert statuses.count(PASSWORD_CHANGE_THROTTLED) == tries - PASSWORD_CHANGES_PER_SESSION
        # Past the limit even the right password is refused, and at once: the session's count
        # comes before the email's slowing (which its failures have earned by now) and the hash.
        waited, refusal = _timed(lambda: _change_password(auth, session, PASSWORD, "x" * 8))
        assert isinstance(refusal, grpc.RpcError)
        assert refusal_of(refusal).status == PASSWORD_CHANGE_THROTTLED
        assert 1 <= int(refusal_of(refusal).metadata["retry_after_seconds"]) <= 3600
        assert waited < BASE_DELAY

    _within_one_window(3600, attempt)
    changed = _change_password(auth, own, PASSWORD, "a password of its own")
    assert changed.ended_sessions == len(stolen)
    for token in stolen:
        assert refused(lambda token=token: auth.resolve(token)).status == SESSION_INVALID


async def _waiting_for_a_lock(database_url: str, task: asyncio.Task[Any]) -> bool:
    """Whether `task`'s statement came to wait for a row lock (polled up to 10 s), or False
    as soon as it finished without waiting."""
    async with await psycopg.AsyncConnection.connect(database_url, autocommit=True) as conn:
        for _ in range(500):
            if task.done():
                return False
            cursor = await conn.execute(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database()"
                " AND wait_event_type = 'Lock' AND query LIKE '%%INSERT INTO auth.sessions%%'"
            )
            row = await cursor.fetchone()
            if row is not None and row[0] > 0:
                return True
            await asyncio.sleep(0.02)
    return False


async def test_a_sign_in_checked_against_the_old_password_opens_no_session(auth: Auth) -> None:
    """A sign-in whose password was checked just before a ChangePassword or ResetPassword
    committed must not open a session after that change ended the others: the statement that
    opens it waits for the change's transaction, then sees the new hash and opens nothing."""
    email = new_email("raced")
    user_id = auth.sign_up(email).user.id
    store = AuthStore()
    await store.open(AuthSettings(DATABASE_URL=auth.database_url, pool_min_size=1))
    try:
        # The sign-in has read the person's hash and found the password right…
        checked = await store.credentials(email)
        assert checked is not None
        new_hash = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("new one!")
        async with await psycopg.AsyncConnection.connect(auth.database_url) as change:
            # …meanwhile a password change has set the new hash and ended the sessions, but
            # not yet committed (store.change_password's transaction, held open).
            await change.execute(
                "UPDATE auth.users SET password_hash = %s, password_change_time = now()"
                " WHERE id = %s",
                [new_hash, user_id],
            )
            await change.execute(
                "UPDATE auth.sessions SET end_time = now() WHERE user_id = %s AND end_time IS NULL",
                [user_id],
            )
            opening = asyncio.create_task(
                store.open_session(checked, new_token().digest, Lifetimes.of_seconds(60, 600))
            )
            waited = await _waiting_for_a_lock(auth.database_url, opening)
            await change.commit()
        opened = await opening
    finally:
        await store.close()

    assert opened is None, "a session opened on the old password outlived the change"
    assert waited, "the session's statement waited for the change to commit"
    assert auth.query(
        "SELECT count(*) FROM auth.sessions WHERE user_id = %s AND end_time IS NULL", user_id
    ) == [(0,)]


def test_an_operator_gives_an_existing_account_its_person(auth: Auth) -> None:
    account = auth.operator.CreateAccount(
        auth_pb2.CreateAccountRequest(name=f"team-{uuid.uuid4().hex[:8]}")
    ).account
    email = new_email("member")

    def create(account_id: str, email: str) -> Any:
        request = auth_pb2.CreateUserRequest(account_id=account_id, email=email, password=PASSWORD)
        return auth.operator.CreateUser(request, timeout=10)

    user = create(account.id, email.upper()).user
    assert (user.account_id, user.email) == (account.id, email)
    assert auth.sign_in(email).account == account

    other = auth.operator.CreateAccount(
        auth_pb2.CreateAccountRequest(name=f"team-{uuid.uuid4().hex[:8]}")
    ).account
    assert refused(lambda: create(account.id, new_email())).status == (
        grpc.StatusCode.ALREADY_EXISTS,
        "ACCOUNT_HAS_USER",
    )
    assert refused(lambda: create(other.id, email)).status == EMAIL_TAKEN
    assert refused(lambda: auth.sign_up(email)).status == EMAIL_TAKEN
    unknown = "acct_01JD3Q0000000000000000000Z"
    assert refused(lambda: create(unknown, new_email())).code == grpc.StatusCode.NOT_FOUND


# --- own keys -----------------------------------------------------------------------------------


def test_own_keys_are_the_sessions_accounts_only(auth: Auth) -> None:
    alice, bob = auth.sign_up(new_email("alice")), auth.sign_up(new_email("bob"))

    def create(person: auth_pb2.SignInResponse, name: str) -> auth_pb2.CreateKeyResponse:
        request = auth_pb2.CreateOwnKeyRequest(session_token=person.session_token, name=name)
        response: auth_pb2.CreateKeyResponse = auth.dashboard.CreateOwnKey(request, timeout=10)
        return response

    def revoke(person: auth_pb2.SignInResponse, key_id: str) -> Any:
        request = auth_pb2.RevokeOwnKeyRequest(session_token=person.session_token, key_id=key_id)
        return auth.dashboard.RevokeOwnKey(request, timeout=10)

    first, second = create(alice, "laptop"), create(alice, "ci")
    assert first.key.account_id == alice.account.id and first.key.name == "laptop"
    assert first.plaintext.startswith(first.key.prefix)
    verified = auth.gateway.VerifyKey(auth_pb2.VerifyKeyRequest(key=first.plaintext))
    assert verified.account_id == alice.account.id

    assert [key.id for key in auth.own_keys(alice.session_token)] == [second.key.id, first.key.id]
    assert auth.own_keys(bob.session_token) == []

    # Another account's key is NOT_FOUND in the very words of a key that does not exist.
    theirs = refused(lambda: revoke(bob, first.key.id))
    unknown = refused(lambda: revoke(bob, "key_01JD3Q0000000000000000000Z"))
    assert theirs.code == grpc.StatusCode.NOT_FOUND
    assert (theirs.reason, theirs.details) == (unknown.reason, unknown.details)
    assert not auth.own_keys(alice.session_token)[1].HasField("revoke_time")
    auth.gateway.VerifyKey(auth_pb2.VerifyKeyRequest(key=first.plaintext))

    revoked = revoke(alice, first.key.id).key
    assert revoked.HasField("revoke_time")
    assert revoke(alice, first.key.id).key.revoke_time == revoked.revoke_time, "idempotent"
    listed = auth.operator.ListKeys(auth_pb2.ListKeysRequest(account_id=alice.account.id)).keys
    assert [key.HasField("revoke_time") for key in listed] == [False, True]


def test_an_account_keeps_at_most_its_limit_of_live_keys(auth: Auth) -> None:
    person = auth.sign_up(new_email("collector"))

    def create_own(name: str) -> auth_pb2.CreateKeyResponse:
        request = auth_pb2.CreateOwnKeyRequest(session_token=person.session_token, name=name)
        response: auth_pb2.CreateKeyResponse = auth.dashboard.CreateOwnKey(request, timeout=10)
        return response

    def create(name: str) -> Any:
        request = auth_pb2.CreateKeyRequest(account_id=person.account.id, name=name)
        return auth.operator.CreateKey(request, timeout=10)

    keys = [create_own(f"key {n}") for n in range(MAX_KEYS)]  # AUTH_MAX_KEYS_PER_ACCOUNT
    before = _rows(auth)
    own = refused(lambda: create_own("one too many"))
    operators = refused(lambda: create("one too many"))
    assert own.status == operators.status == KEY_LIMIT_REACHED
    assert own.metadata == operators.metadata == {"limit": str(MAX_KEYS)}
    assert _rows(auth) == before
    assert len(auth.own_keys(person.session_token)) == MAX_KEYS

    # Revoked keys do not count.
    auth.dashboard.RevokeOwnKey(
        auth_pb2.RevokeOwnKeyRequest(session_token=person.session_token, key_id=keys[0].key.id)
    )
    replacement = create("replacement")
    assert refused(lambda: create_own("again one too many")).status == KEY_LIMIT_REACHED
    listed = auth.own_keys(person.session_token)
    assert [key.id for key in listed][:2] == [replacement.key.id, keys[-1].key.id]
    assert len(listed) == MAX_KEYS + 1

    unknown = auth_pb2.CreateKeyRequest(account_id="acct_01JD3Q0000000000000000000Z")
    assert refused(lambda: auth.operator.CreateKey(unknown)).code == grpc.StatusCode.NOT_FOUND


def test_concurrent_key_creations_never_pass_the_limit(auth: Auth) -> None:
    account = auth.operator.CreateAccount(
        auth_pb2.CreateAccountRequest(name=f"crowded-{uuid.uuid4().hex[:8]}")
    ).account
    start = threading.Barrier(12)

    def create(n: int) -> Any:
        start.wait()
        try:
            request = auth_pb2.CreateKeyRequest(account_id=account.id, name=f"key {n}")
            return auth.operator.CreateKey(request, timeout=10)
        except grpc.RpcError as error:
            return error

    with ThreadPoolExecutor(12) as pool:
        results = list(pool.map(create, range(12)))

    created = [r for r in results if isinstance(r, auth_pb2.CreateKeyResponse)]
    refusals = [refusal_of(r).status for r in results if isinstance(r, grpc.RpcError)]
    assert len(created) == MAX_KEYS
    assert refusals == [KEY_LIMIT_REACHED] * (12 - MAX_KEYS)
    assert auth.query("SELECT count(*) FROM auth.api_keys WHERE account_id = %s", account.id) == [
        (MAX_KEYS,)
    ]


def test_a_key_list_holds_every_live_key_and_the_newest_revoked_up_to_1000(auth: Auth) -> None:
    person = auth.sign_up(new_email("hoarder"))
    account_id = person.account.id
    live = auth.dashboard.CreateOwnKey(
        auth_pb2.CreateOwnKeyRequest(session_token=person.session_token, name="oldest, live")
    ).key
    # 1,200 revoked keys, all newer than the live one (written as the owner, which is quicker
    # than creating and revoking them one by one).
    auth.query(
        "INSERT INTO auth.api_keys"
        " (id, account_id, name, prefix, key_hash, create_time, revoke_time)"
        " SELECT 'key_revoked_' || a || '_' || n, a, 'revoked ' || n, 'kp_live_xxxx',"
        " sha256(convert_to(a || n, 'UTF8')),"
        " now() + n * interval '1 millisecond', now() + n * interval '1 millisecond'"
        " FROM generate_series(1, 1200) AS n, (SELECT %s::text AS a) AS account",
        account_id,
    )
    own = auth.own_keys(person.session_token)
    operators = list(
        auth.operator.ListKeys(auth_pb2.ListKeysRequest(account_id=account_id), timeout=10).keys
    )

    assert own == operators
    assert len(own) == 1000
    assert own[0].name == "revoked 1200" and own[-2].name == "revoked 202"
    assert own[-1].id == live.id, "a live key is listed however many newer revoked ones there are"


def test_a_keys_use_is_stamped_at_most_once_a_minute(auth: Auth) -> None:
    person = auth.sign_up(new_email("user-of-keys"))
    created = auth.dashboard.CreateOwnKey(
        auth_pb2.CreateOwnKeyRequest(session_token=person.session_token, name="stamped")
    )
    assert not auth.own_keys(person.session_token)[0].HasField("last_use_time")

    auth.gateway.VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext))
    [first] = auth.own_keys(person.session_token)
    assert first.HasField("last_use_time")
    assert abs(_when(first.last_use_time) - datetime.now(UTC)) < timedelta(seconds=30)

    auth.gateway.VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext))
    assert auth.own_keys(person.session_token)[0].last_use_time == first.last_use_time

    # Even an old stamp is left alone within the minute: this process wrote it lately.
    auth.query(
        "UPDATE auth.api_keys SET last_use_time = now() - interval '1 hour' WHERE id = %s",
        created.key.id,
    )
    [aged] = auth.own_keys(person.session_token)
    auth.gateway.VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext))
    assert auth.own_keys(person.session_token)[0].last_use_time == aged.last_use_time


async def test_replicas_stamp_a_keys_use_about_once_a_minute_between_them(
    auth: Auth, auth_secrets: AuthSecrets
) -> None:
    account = auth.operator.CreateAccount(
        auth_pb2.CreateAccountRequest(name=f"replicas-{uuid.uuid4().hex[:8]}")
    ).account
    created = auth.operator.CreateKey(auth_pb2.CreateKeyRequest(account_id=account.id))
    key_hash = KeyHasher(auth_secrets.key_hash_secret).hash(created.plaintext)
    settings = AuthSettings(DATABASE_URL=auth.database_url, pool_min_size=1)
    replicas = [AuthStore(), AuthStore(), AuthStore()]

    def stamp() -> Any:
        [(stamped,)] = auth.query(
            "SELECT last_use_time FROM auth.api_keys WHERE id = %s", created.key.id
        )
        return stamped

    try:
        for replica in replicas:
            await replica.open(settings)
        assert await replicas[0].find_key(key_hash, session_idle=IDLE) is not None
        first = stamp()
        assert first is not None
        assert await replicas[1].find_key(key_hash, session_idle=IDLE) is not None
        assert stamp() == first, "stamped by another replica within the minute"

        auth.query(
            "UPDATE auth.api_keys SET last_use_time = now() - interval '2 minutes' WHERE id = %s",
            created.key.id,
        )
        await replicas[2].find_key(key_hash, session_idle=IDLE)
        assert stamp() > first
    finally:
        for replica in replicas:
            await replica.close()


# --- who may call what --------------------------------------------------------------------------

DASHBOARD_CALLS: list[tuple[str, Any]] = [
    ("SignUp", auth_pb2.SignUpRequest(email="intruder@example.com", password=PASSWORD)),
    ("SignIn", auth_pb2.SignInRequest(email="intruder@example.com", password=PASSWORD)),
    ("ResolveSession", auth_pb2.ResolveSessionRequest(session_token="t" * 43)),
    ("SignOut", auth_pb2.SignOutRequest(session_token="t" * 43)),
    (
        "ChangePassword",
        auth_pb2.ChangePasswordRequest(
            session_token="t" * 43, current_password=PASSWORD, new_password=PASSWORD
        ),
    ),
    ("CreateOwnKey", auth_pb2.CreateOwnKeyRequest(session_token="t" * 43, name="k")),
    ("ListOwnKeys", auth_pb2.ListOwnKeysRequest(session_token="t" * 43)),
    (
        "RevokeOwnKey",
        auth_pb2.RevokeOwnKeyRequest(
            session_token="t" * 43, key_id="key_01JD3Q0000000000000000000Z"
        ),
    ),
    ("MintPlaygroundKey", auth_pb2.MintPlaygroundKeyRequest(session_token="t" * 43)),
]
ACCOUNT_ID = "acct_01JD3Q0000000000000000000Z"
NOT_THE_DASHBOARDS: list[tuple[str, Any]] = [
    ("CreateAccount", auth_pb2.CreateAccountRequest(name="intruder")),
    ("CreateKey", auth_pb2.CreateKeyRequest(account_id=ACCOUNT_ID)),
    ("ListKeys", auth_pb2.ListKeysRequest(account_id=ACCOUNT_ID)),
    ("RevokeKey", auth_pb2.RevokeKeyRequest(key_id="key_01JD3Q0000000000000000000Z")),
    ("VerifyKey", auth_pb2.VerifyKeyRequest(key="kp_live_" + "A" * 43)),
    (
        "CreateUser",
        auth_pb2.CreateUserRequest(
            account_id=ACCOUNT_ID, email="intruder@example.com", password=PASSWORD
        ),
    ),
    (
        "ResetPassword",
        auth_pb2.ResetPasswordRequest(email="intruder@example.com", new_password=PASSWORD),
    ),
]


@pytest.mark.parametrize(
    ("caller", "method", "request_"),
    [
        *[pytest.param("gateway", m, r, id=f"gateway: {m}") for m, r in DASHBOARD_CALLS],
        *[pytest.param("operator", m, r, id=f"operator: {m}") for m, r in DASHBOARD_CALLS],
        *[pytest.param("dashboard", m, r, id=f"dashboard: {m}") for m, r in NOT_THE_DASHBOARDS],
    ],
)
def test_each_rpc_answers_only_its_declared_callers(
    auth: Auth, caller: str, method: str, request_: Any
) -> None:
    stub = {"gateway": auth.gateway, "operator": auth.operator, "dashboard": auth.dashboard}[caller]
    before = _rows(auth)
    assert refused(lambda: getattr(stub, method)(request_, timeout=10)).code == (
        grpc.StatusCode.PERMISSION_DENIED
    )
    assert _rows(auth) == before


# --- what the database keeps ----------------------------------------------------------------------


def test_the_database_keeps_no_password_or_session_token(auth: Auth) -> None:
    password = f"unmistakable-{uuid.uuid4().hex}"
    email = new_email("secretive")
    tokens = [
        auth.sign_up(email, password).session_token,
        auth.sign_in(email, password).session_token,
    ]
    needles = [password, *tokens]

    with psycopg.connect(auth.database_url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'auth' AND data_type IN ('text', 'bytea')"
        ).fetchall()
        for table, column in columns:
            query = sql.SQL("SELECT {}::text FROM auth.{}").format(
                sql.Identifier(column), sql.Identifier(table)
            )
            for (value,) in conn.execute(query):
                for needle in needles:
                    assert value is None or needle not in value, f"{table}.{column}"
                    assert value is None or needle.encode().hex() not in value
        stored = conn.execute(
            "SELECT u.password_hash, array_agg(s.token_hash ORDER BY s.create_time)"
            " FROM auth.users u JOIN auth.sessions s ON s.user_id = u.id"
            " WHERE u.email = %s GROUP BY u.password_hash",
            [email],
        ).fetchone()
    assert stored is not None
    password_hash, token_hashes = stored
    assert password_hash.startswith("$argon2id$v=19$m=64,t=1,p=1$")
    assert sorted(token_hashes) == sorted(_session_digest(token) for token in tokens)


# --- serving as the least-privilege role, at the default cost -------------------------------------


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{ROLE_PASSWORD}@{host}"))


@pytest.fixture(scope="module")
def serving(postgres_url: str, log_dir: Path) -> Iterator[Auth]:
    """auth on its own database, migrated by the owner and serving as kokoropay_auth, with
    every setting at its default."""
    database = create_database(postgres_url, prefix="people_roles")
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            pytest.skip("making the roles needs a superuser on DATABASE_URL's server")
        conn.execute(LOCAL_ROLES_SQL.read_bytes())
        for role in (OWNER_ROLE, SERVING_ROLES["auth"]):
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(ROLE_PASSWORD)
                )
            )
    owner = _as_role(database, OWNER_ROLE)
    env = {
        **AuthSecrets.generate().env(_as_role(database, SERVING_ROLES["auth"])),
        "AUTH_MIGRATION_DATABASE_URL": owner,
    }
    process = ServiceProcess("auth", env, log_dir).start()
    try:
        yield from _stubs(process, owner)
    finally:
        process.stop()


def test_everything_runs_as_the_serving_role_at_the_default_cost(serving: Auth) -> None:
    email = new_email("least")
    signed_up = serving.sign_up(email)
    [(stored,)] = serving.query("SELECT password_hash FROM auth.users WHERE email = %s", email)
    assert stored.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert refused(lambda: serving.sign_in(email, "not the password")).status == (
        CREDENTIALS_INVALID
    )
    token = serving.sign_in(email).session_token
    assert serving.resolve(token).user.id == signed_up.user.id
    created = serving.dashboard.CreateOwnKey(
        auth_pb2.CreateOwnKeyRequest(session_token=token, name="role")
    )
    serving.gateway.VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext))
    assert serving.own_keys(token)[0].HasField("last_use_time")
    serving.dashboard.RevokeOwnKey(
        auth_pb2.RevokeOwnKeyRequest(session_token=token, key_id=created.key.id)
    )
    changed = serving.dashboard.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            session_token=token, current_password=PASSWORD, new_password="changed as the role"
        )
    )
    assert changed.ended_sessions == 1
    serving.dashboard.SignOut(auth_pb2.SignOutRequest(session_token=token))
    account = serving.operator.CreateAccount(
        auth_pb2.CreateAccountRequest(name=f"roles-{uuid.uuid4().hex[:8]}")
    ).account
    other = new_email("operated")
    serving.operator.CreateUser(
        auth_pb2.CreateUserRequest(account_id=account.id, email=other, password=PASSWORD)
    )
    serving.operator.ResetPassword(
        auth_pb2.ResetPasswordRequest(email=other, new_password="reset as the role")
    )

    # A password stored under older, cheaper parameters is rehashed at its next sign-in.
    cheap = PasswordHasher(time_cost=1, memory_cost=64, parallelism=1).hash("an older password")
    serving.query("UPDATE auth.users SET password_hash = %s WHERE email = %s", cheap, other)
    serving.sign_in(other, "an older password")
    [(rehashed,)] = serving.query("SELECT password_hash FROM auth.users WHERE email = %s", other)
    assert rehashed.startswith("$argon2id$v=19$m=65536,t=3,p=4$")
    assert serving.sign_in(other, "an older password").user.email == other

    warnings = [
        line["msg"]
        for line in map(json.loads, _json_lines(serving.process.logs()))
        if line.get("level") in ("WARNING", "ERROR")
    ]
    assert warnings == []


def _json_lines(logs: str) -> list[str]:
    return [line for line in logs.splitlines() if line.startswith("{")]


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM auth.users",
        "DELETE FROM auth.sessions",
        "DELETE FROM auth.throttle_windows",
        "DELETE FROM auth.sign_in_failures",
        "TRUNCATE auth.sign_in_failures",
        # A session moved to another person, a token swapped, an email taken over.
        "UPDATE auth.sessions SET user_id = user_id",
        "UPDATE auth.sessions SET token_hash = token_hash",
        "UPDATE auth.sessions SET expire_time = expire_time",
        "UPDATE auth.users SET email = email",
        "UPDATE auth.users SET account_id = account_id",
        "INSERT INTO auth.sessions (id, token_hash, user_id, expire_time, create_time)"
        " VALUES ('ses_x', '\\x00', 'usr_x', now(), now() - interval '1 year')",
    ],
)
def test_the_serving_role_may_not_rewrite_people_or_sessions(serving: Auth, statement: str) -> None:
    role_url = _as_role(serving.database_url, SERVING_ROLES["auth"])
    with (
        psycopg.connect(role_url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege),
    ):
        conn.execute(statement.encode())


def test_the_serving_role_forgets_only_throttle_rows_that_no_longer_count(serving: Auth) -> None:
    stale, fresh = f"sign-in:stale-{uuid.uuid4().hex}", f"sign-in:fresh-{uuid.uuid4().hex}"
    serving.query(
        "INSERT INTO auth.throttle_windows (key, window_start, count)"
        " VALUES (%s, now() - interval '2 days', 3), (%s, now(), 3)",
        stale,
        fresh,
    )
    serving.query(
        "INSERT INTO auth.sign_in_failures (email, failures, last_failure_time)"
        " VALUES ('stale@example.com', 9, now() - interval '2 days')"
    )
    with psycopg.connect(_as_role(serving.database_url, SERVING_ROLES["auth"])) as conn:
        forgotten = conn.execute("SELECT auth.forget_stale_throttles()").fetchone()
    assert forgotten is not None and forgotten[0] >= 2
    assert serving.query(
        "SELECT key FROM auth.throttle_windows WHERE key IN (%s, %s)", stale, fresh
    ) == [(fresh,)]
    assert (
        serving.query("SELECT 1 FROM auth.sign_in_failures WHERE email = 'stale@example.com'") == []
    )


def test_the_serving_role_forgets_sessions_30_days_after_they_ended_or_expired(
    serving: Auth,
) -> None:
    user_id = serving.sign_up(new_email("forgotten")).user.id
    day = timedelta(days=1)
    kept = {
        "open": _insert_session(serving, user_id, day, 6 * day, ended=None),
        "ended 29 days ago": _insert_session(serving, user_id, 40 * day, day, ended=29 * day),
        "expired 29 days ago": _insert_session(serving, user_id, 36 * day, -29 * day, ended=None),
    }
    gone = {
        "ended 31 days ago": _insert_session(serving, user_id, 40 * day, 300 * day, ended=31 * day),
        "expired 31 days ago": _insert_session(serving, user_id, 38 * day, -31 * day, ended=None),
        "expired, then ended": _insert_session(serving, user_id, 40 * day, -32 * day, ended=day),
    }
    with psycopg.connect(_as_role(serving.database_url, SERVING_ROLES["auth"])) as conn:
        forgotten = conn.execute("SELECT auth.forget_old_sessions()").fetchone()
    assert forgotten is not None and forgotten[0] >= len(gone)

    def still_there(token: str) -> bool:
        return bool(
            serving.query(
                "SELECT 1 FROM auth.sessions WHERE token_hash = %s", _session_digest(token)
            )
        )

    assert {name: still_there(token) for name, token in {**kept, **gone}.items()} == {
        **dict.fromkeys(kept, True),
        **dict.fromkeys(gone, False),
    }
