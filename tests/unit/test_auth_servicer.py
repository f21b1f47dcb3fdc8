"""The servicer against a recording fake store: what reaches the store, and what never does."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import pytest
from kokoropay.auth.v1 import auth_pb2

from services.auth import ids
from services.auth.keys import KeyHasher, generate_key
from services.auth.people import SessionInvalid
from services.auth.servicer import ERRORS, AuthServicer, KeyRejected, name_problem
from services.auth.sessions import new_token
from services.auth.store import Account, ApiKey, KeyLimitReached, KeyMatch, Session, User

HASHER = KeyHasher("unit-test-secret-long-enough")


class Context:
    """Handlers raise instead of aborting; they never touch the context."""


class RecordingStore:
    """Remembers every call; knows one key hash."""

    def __init__(self, known: dict[bytes, KeyMatch] | None = None) -> None:
        self.calls: list[tuple[str, tuple[Any, ...]]] = []
        self.known = known or {}
        self.limits: list[int] = []
        self.idles: list[timedelta] = []

    async def find_key(self, key_hash: bytes, *, session_idle: timedelta) -> KeyMatch | None:
        self.calls.append(("find_key", (key_hash,)))
        self.idles.append(session_idle)
        return self.known.get(key_hash)

    async def create_key(
        self, account_id: str, name: str, prefix: str, key_hash: bytes, *, limit: int
    ) -> ApiKey:
        self.calls.append(("create_key", (account_id, name, prefix, key_hash)))
        self.limits.append(limit)
        now = datetime.now(UTC)
        return ApiKey(ids.new_id(ids.KEY), account_id, name, prefix, now, None)

    async def playground_key(
        self, session_id: str, prefix: str, key_hash: bytes, *, name: str, session_idle: timedelta
    ) -> ApiKey:
        self.calls.append(("playground_key", (session_id, prefix, key_hash, name)))
        self.idles.append(session_idle)
        now = datetime.now(UTC)
        return ApiKey("key_playground", "acct_a", name, prefix, now, None, playground=True)


class OnePerson:
    """People who know one session token."""

    def __init__(self, token: str) -> None:
        self.token = token
        now = datetime.now(UTC)
        user = User("usr_a", "acct_a", "a@example.com", now)
        self.session = Session("ses_a", user, Account("acct_a", "a", now), now, now)

    async def resolve(self, token: str) -> Session:
        if token != self.token:
            raise SessionInvalid()
        return self.session


async def verify(servicer: AuthServicer, key: str) -> auth_pb2.VerifyKeyResponse:
    return await servicer.VerifyKey(auth_pb2.VerifyKeyRequest(key=key), Context())  # type: ignore[arg-type]


@pytest.mark.parametrize("key", ["", "garbage", "kp_live_short", "kp_live_" + "x" * 100_000])
async def test_strings_not_shaped_like_keys_never_reach_the_store(key: str) -> None:
    store = RecordingStore()
    servicer = AuthServicer(store, HASHER)  # type: ignore[arg-type]

    with pytest.raises(KeyRejected) as raised:
        await verify(servicer, key)

    assert ERRORS.status_of(raised.value) == grpc.StatusCode.UNAUTHENTICATED
    assert raised.value.reason == "KEY_INVALID"
    assert store.calls == []


async def test_verify_looks_keys_up_by_keyed_hash_only() -> None:
    live, revoked = generate_key().plaintext, generate_key().plaintext
    store = RecordingStore(
        {
            HASHER.hash(live): KeyMatch("key_live", "acct_a", revoked=False),
            HASHER.hash(revoked): KeyMatch("key_old", "acct_a", revoked=True),
        }
    )
    servicer = AuthServicer(store, HASHER)  # type: ignore[arg-type]

    response = await verify(servicer, live)
    with pytest.raises(KeyRejected) as raised:
        await verify(servicer, revoked)

    assert (response.account_id, response.key_id) == ("acct_a", "key_live")
    assert raised.value.reason == "KEY_REVOKED"
    assert store.calls == [
        ("find_key", (HASHER.hash(live),)),
        ("find_key", (HASHER.hash(revoked),)),
    ]


async def test_create_key_hands_the_store_a_hash_and_prefix_never_the_plaintext() -> None:
    store = RecordingStore()
    servicer = AuthServicer(store, HASHER)  # type: ignore[arg-type]
    account_id = ids.new_id(ids.ACCOUNT)

    response = await servicer.CreateKey(
        auth_pb2.CreateKeyRequest(account_id=account_id, name="ci"),
        Context(),  # type: ignore[arg-type]
    )

    [(_, stored)] = store.calls
    assert stored == (account_id, "ci", response.plaintext[:12], HASHER.hash(response.plaintext))
    secret_part = response.plaintext[12:]
    assert not any(isinstance(arg, str) and secret_part in arg for arg in stored)


async def test_create_key_holds_the_account_to_the_configured_limit() -> None:
    store = RecordingStore()
    request = auth_pb2.CreateKeyRequest(account_id=ids.new_id(ids.ACCOUNT))

    await AuthServicer(store, HASHER).CreateKey(request, Context())  # type: ignore[arg-type]
    await AuthServicer(store, HASHER, max_keys_per_account=7).CreateKey(request, Context())  # type: ignore[arg-type]

    assert store.limits == [100, 7]


def test_an_account_at_its_key_limit_is_a_failed_precondition_naming_the_limit() -> None:
    refusal = KeyLimitReached(100)
    assert ERRORS.status_of(refusal) == grpc.StatusCode.FAILED_PRECONDITION
    assert (refusal.reason, refusal.metadata) == ("KEY_LIMIT_REACHED", {"limit": "100"})


@pytest.mark.parametrize(
    ("name", "required", "accepted"),
    [
        ("acme", True, True),
        ("Acme Corp. (EU)", True, True),
        ("é" * 64, True, True),
        ("", True, False),
        ("", False, True),
        ("x" * 65, True, False),
        ("x" * 65, False, False),
        ("line\nbreak", True, False),
        ("nul\x00", False, False),
        ("zero\u200bwidth", True, False),
        (" leading", True, False),
        ("trailing ", True, False),
    ],
)
def test_name_rules(name: str, required: bool, accepted: bool) -> None:
    assert (name_problem(name, required=required) is None) == accepted


class BrokenStore:
    async def get_account_by_name(self, name: str) -> Any:
        raise RuntimeError('relation "auth.accounts" does not exist: SELECT id, name FROM ...')


async def test_an_unexpected_store_failure_is_left_to_the_table_as_internal() -> None:
    servicer = AuthServicer(BrokenStore(), HASHER)  # type: ignore[arg-type]
    with pytest.raises(RuntimeError) as raised:
        await servicer.GetAccount(auth_pb2.GetAccountRequest(name="acme"), Context())  # type: ignore[arg-type]
    # No status for it: the error interceptor logs it and answers INTERNAL without its words
    # (tests/integration/test_common_rpc.py shows that over a socket).
    assert ERRORS.status_of(raised.value) is None


@pytest.mark.parametrize(
    ("request_", "message"),
    [
        (auth_pb2.GetAccountRequest(), "set account_id or name"),
        (auth_pb2.GetAccountRequest(account_id="acct_nope"), "account_id is not an account id"),
        (auth_pb2.CreateKeyRequest(account_id=""), "account_id is required"),
        (auth_pb2.RevokeKeyRequest(key_id="acct_x"), "key_id is not a key id"),
        (auth_pb2.CreateAccountRequest(name=" x"), "name must not start or end with whitespace"),
    ],
)
async def test_malformed_requests_are_invalid_arguments_before_the_store(
    request_: Any, message: str
) -> None:
    store = RecordingStore()
    servicer = AuthServicer(store, HASHER)  # type: ignore[arg-type]
    handler = getattr(servicer, type(request_).__name__.removesuffix("Request"))

    with pytest.raises(Exception) as raised:
        await handler(request_, Context())

    assert ERRORS.status_of(raised.value) == grpc.StatusCode.INVALID_ARGUMENT
    assert str(raised.value).startswith(message)
    assert store.calls == []


async def test_verify_judges_playground_sessions_by_the_configured_idle_lifetime() -> None:
    key = generate_key().plaintext
    store = RecordingStore({HASHER.hash(key): KeyMatch("key_a", "acct_a", revoked=False)})

    await verify(AuthServicer(store, HASHER), key)  # type: ignore[arg-type]
    await verify(AuthServicer(store, HASHER, session_idle=timedelta(minutes=5)), key)  # type: ignore[arg-type]

    assert store.idles == [timedelta(days=1), timedelta(minutes=5)]


async def test_a_playground_key_is_derived_from_the_session_token_and_stored_as_a_hash() -> None:
    token = new_token().plaintext
    store = RecordingStore()
    servicer = AuthServicer(
        store,  # type: ignore[arg-type]
        HASHER,
        OnePerson(token),  # type: ignore[arg-type]
        session_idle=timedelta(hours=2),
    )
    request = auth_pb2.MintPlaygroundKeyRequest(session_token=token)

    first = await servicer.MintPlaygroundKey(request, Context())  # type: ignore[arg-type]
    again = await servicer.MintPlaygroundKey(request, Context())  # type: ignore[arg-type]

    assert first.plaintext == again.plaintext == HASHER.playground_key(token).plaintext
    assert (first.key.name, first.key.playground) == ("Playground", True)
    stored = ("ses_a", first.plaintext[:12], HASHER.hash(first.plaintext), "Playground")
    assert store.calls == [("playground_key", stored)] * 2
    assert store.idles == [timedelta(hours=2)] * 2


async def test_no_playground_key_is_minted_without_an_open_session() -> None:
    store = RecordingStore()
    servicer = AuthServicer(store, HASHER, OnePerson(new_token().plaintext))  # type: ignore[arg-type]
    request = auth_pb2.MintPlaygroundKeyRequest(session_token=new_token().plaintext)

    with pytest.raises(SessionInvalid) as raised:
        await servicer.MintPlaygroundKey(request, Context())  # type: ignore[arg-type]

    assert ERRORS.status_of(raised.value) == grpc.StatusCode.UNAUTHENTICATED
    assert store.calls == []
