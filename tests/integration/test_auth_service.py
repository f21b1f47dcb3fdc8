"""The auth service as the gateway and operators use it: a real process over a real socket,
backed by a real PostgreSQL. One process serves the whole module; tests that must prove
"nothing written" compare row counts before and after."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import psycopg
import pytest
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from psycopg import sql

from services.auth import ids
from services.cli.processes import ServiceProcess
from services.common.errors import error_info
from tests.support.auth import AuthSecrets, row_counts, start_auth
from tests.support.pki import sync_channel
from tests.support.postgres import create_database

KEY_SHAPE = re.compile(r"kp_live_[0-9A-Za-z]{43,}")


@dataclass(frozen=True)
class Auth:
    process: ServiceProcess
    # Calls as the operator (administration) and as the gateway (VerifyKey).
    stub: auth_pb2_grpc.AuthServiceStub
    gateway: auth_pb2_grpc.AuthServiceStub
    database_url: str

    def admin(self, method: str, request: Any, **kwargs: Any) -> Any:
        return getattr(self.stub, method)(request, timeout=10, **kwargs)

    def new_account(self, name: str) -> auth_pb2.Account:
        request = auth_pb2.CreateAccountRequest(name=name)
        return self.admin("CreateAccount", request).account

    def new_key(self, account_id: str, name: str = "") -> auth_pb2.CreateKeyResponse:
        request = auth_pb2.CreateKeyRequest(account_id=account_id, name=name)
        response: auth_pb2.CreateKeyResponse = self.admin("CreateKey", request)
        return response

    def verify(self, key: str) -> auth_pb2.VerifyKeyResponse:
        # VerifyKey is what the gateway calls with a customer's key.
        response: auth_pb2.VerifyKeyResponse = self.gateway.VerifyKey(
            auth_pb2.VerifyKeyRequest(key=key), timeout=10
        )
        return response


@pytest.fixture(scope="module")
def auth_database(postgres_url: str) -> str:
    return create_database(postgres_url, prefix="auth")


@pytest.fixture(scope="module")
def auth_secrets() -> AuthSecrets:
    return AuthSecrets.generate()


@pytest.fixture(scope="module")
def auth(auth_database: str, auth_secrets: AuthSecrets, log_dir: Path) -> Iterator[Auth]:
    process = start_auth(auth_database, auth_secrets, log_dir)
    try:
        operator = sync_channel(process.address, "operator")
        gateway = sync_channel(process.address, "gateway")
        with operator, gateway:
            yield Auth(
                process=process,
                stub=auth_pb2_grpc.AuthServiceStub(operator),
                gateway=auth_pb2_grpc.AuthServiceStub(gateway),
                database_url=auth_database,
            )
    finally:
        process.stop()


@dataclass(frozen=True)
class Existing:
    """An account with one live key, for requests that need something real to point at."""

    account: auth_pb2.Account
    key: auth_pb2.CreateKeyResponse


@pytest.fixture(scope="module")
def existing(auth: Auth) -> Existing:
    account = auth.new_account("existing-account")
    return Existing(account=account, key=auth.new_key(account.id, "existing key"))


def rejection(call: Callable[[], Any]) -> tuple[grpc.StatusCode, str | None]:
    """The status code and ErrorInfo reason of a call that must fail."""
    with pytest.raises(grpc.RpcError) as raised:
        call()
    error: Any = raised.value
    info = error_info(error)
    return error.code(), (info.reason if info is not None else None)


def test_issued_key_verifies_to_its_account_until_revoked(auth: Auth) -> None:
    account = auth.new_account("lifecycle")
    assert account.id.startswith("acct_")
    assert auth.admin("GetAccount", auth_pb2.GetAccountRequest(account_id=account.id)).account == (
        account
    )
    assert auth.admin("GetAccount", auth_pb2.GetAccountRequest(name="lifecycle")).account == (
        account
    )

    created = auth.new_key(account.id, "laptop")
    assert KEY_SHAPE.fullmatch(created.plaintext)
    assert created.key.id.startswith("key_")
    assert created.key.account_id == account.id
    assert created.key.name == "laptop"
    assert created.plaintext.startswith(created.key.prefix)
    assert len(created.key.prefix) < len(created.plaintext) // 2
    assert not created.key.HasField("revoke_time")

    verified = auth.verify(created.plaintext)
    assert (verified.account_id, verified.key_id) == (account.id, created.key.id)

    revoked = auth.admin("RevokeKey", auth_pb2.RevokeKeyRequest(key_id=created.key.id)).key
    assert revoked.HasField("revoke_time")
    assert rejection(lambda: auth.verify(created.plaintext)) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "KEY_REVOKED",
    )

    again = auth.admin("RevokeKey", auth_pb2.RevokeKeyRequest(key_id=created.key.id)).key
    assert again.revoke_time == revoked.revoke_time, "revoking twice keeps the first time"


def test_keys_are_listed_newest_first_with_revoked_ones(auth: Auth) -> None:
    account = auth.new_account("lister")
    first, second, third = (auth.new_key(account.id, f"key {n}") for n in (1, 2, 3))
    auth.admin("RevokeKey", auth_pb2.RevokeKeyRequest(key_id=second.key.id))

    listed = auth.admin("ListKeys", auth_pb2.ListKeysRequest(account_id=account.id)).keys

    assert [key.id for key in listed] == [third.key.id, second.key.id, first.key.id]
    assert [key.HasField("revoke_time") for key in listed] == [False, True, False]
    assert [key.prefix for key in listed] == [third.key.prefix, second.key.prefix, first.key.prefix]
    empty = auth.new_account("no keys yet")
    assert list(auth.admin("ListKeys", auth_pb2.ListKeysRequest(account_id=empty.id)).keys) == []


def test_each_key_resolves_to_its_own_account(auth: Auth) -> None:
    alice, bob = auth.new_account("alice"), auth.new_account("bob")
    alice_key, bob_key = auth.new_key(alice.id), auth.new_key(bob.id)

    assert auth.verify(alice_key.plaintext).account_id == alice.id
    assert auth.verify(bob_key.plaintext).account_id == bob.id
    auth.admin("RevokeKey", auth_pb2.RevokeKeyRequest(key_id=alice_key.key.id))
    assert auth.verify(bob_key.plaintext).account_id == bob.id


def _unknown_but_well_shaped(existing: Existing) -> str:
    # Same shape as a real key, one character different: it must not resolve.
    key = existing.key.plaintext
    return key[:-1] + ("a" if key[-1] != "a" else "b")


@pytest.mark.parametrize(
    "presented",
    [
        lambda existing: "",
        lambda existing: "garbage",
        lambda existing: "kp_live_",
        lambda existing: existing.key.plaintext[:-1],
        lambda existing: existing.key.plaintext + "x",
        lambda existing: f"Bearer {existing.key.plaintext}",
        lambda existing: f" {existing.key.plaintext}",
        lambda existing: existing.key.plaintext.replace("kp_live_", "kp_test_"),
        lambda existing: existing.key.plaintext[:-1] + "-",
        lambda existing: "kp_live_" + "é" * 43,
        lambda existing: "kp_live_" + "A" * 1_000_000,
        _unknown_but_well_shaped,
    ],
    ids=[
        "empty",
        "garbage",
        "prefix only",
        "truncated",
        "extended",
        "with bearer",
        "leading space",
        "other prefix",
        "non-base62",
        "non-ascii",
        "huge",
        "well-shaped unknown",
    ],
)
def test_strings_that_are_not_issued_keys_are_key_invalid(
    auth: Auth, existing: Existing, presented: Callable[[Existing], str]
) -> None:
    assert rejection(lambda: auth.verify(presented(existing))) == (
        grpc.StatusCode.UNAUTHENTICATED,
        "KEY_INVALID",
    )
    assert auth.verify(existing.key.plaintext).account_id == existing.account.id


def test_database_holds_no_plaintext_key(auth: Auth) -> None:
    account = auth.new_account("secret keeper")
    created = [auth.new_key(account.id, f"key {n}") for n in range(3)]
    plaintexts = [c.plaintext for c in created]
    secret_parts = [c.plaintext[len(c.key.prefix) :] for c in created]
    needles = [*plaintexts, *secret_parts]
    # An unkeyed digest would let a stolen table be checked against guesses offline.
    digests = [hashlib.sha256(plaintext.encode()).digest() for plaintext in plaintexts]

    with psycopg.connect(auth.database_url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name, data_type FROM information_schema.columns"
            " WHERE table_schema = 'auth'"
            " AND data_type IN ('text', 'character varying', 'character', 'bytea')"
        ).fetchall()
        assert ("api_keys", "key_hash", "bytea") in columns
        dumped = 0
        for table, column, _ in columns:
            query = sql.SQL("SELECT {} FROM auth.{}").format(
                sql.Identifier(column), sql.Identifier(table)
            )
            for (value,) in conn.execute(query):
                dumped += 1
                if isinstance(value, bytes):
                    for needle in needles:
                        assert needle.encode() not in value, f"plaintext in {table}.{column}"
                        assert needle.encode().hex() not in value.hex()
                    assert value not in digests, f"unkeyed digest in {table}.{column}"
                elif value is not None:
                    for needle in needles:
                        assert needle not in value, f"plaintext in {table}.{column}"
    assert dumped > 0


def _bad_requests() -> list[Any]:
    unknown_account = ids.new_id(ids.ACCOUNT)
    unknown_key = ids.new_id(ids.KEY)
    invalid = grpc.StatusCode.INVALID_ARGUMENT
    not_found = grpc.StatusCode.NOT_FOUND
    cases: list[tuple[str, str, Callable[[Existing], Any], grpc.StatusCode]] = [
        ("CreateAccount", "empty name", lambda e: auth_pb2.CreateAccountRequest(), invalid),
        (
            "CreateAccount",
            "65-character name",
            lambda e: auth_pb2.CreateAccountRequest(name="n" * 65),
            invalid,
        ),
        (
            "CreateAccount",
            "control character",
            lambda e: auth_pb2.CreateAccountRequest(name="tab\there"),
            invalid,
        ),
        (
            "CreateAccount",
            "surrounding space",
            lambda e: auth_pb2.CreateAccountRequest(name=" padded"),
            invalid,
        ),
        (
            "CreateAccount",
            "duplicate name",
            lambda e: auth_pb2.CreateAccountRequest(name=e.account.name),
            grpc.StatusCode.ALREADY_EXISTS,
        ),
        ("GetAccount", "neither id nor name", lambda e: auth_pb2.GetAccountRequest(), invalid),
        (
            "GetAccount",
            "empty id",
            lambda e: auth_pb2.GetAccountRequest(account_id=""),
            invalid,
        ),
        (
            "GetAccount",
            "malformed id",
            lambda e: auth_pb2.GetAccountRequest(account_id="acct_nope"),
            invalid,
        ),
        (
            "GetAccount",
            "unknown id",
            lambda e: auth_pb2.GetAccountRequest(account_id=unknown_account),
            not_found,
        ),
        (
            "GetAccount",
            "unknown name",
            lambda e: auth_pb2.GetAccountRequest(name="nobody by this name"),
            not_found,
        ),
        ("CreateKey", "empty account id", lambda e: auth_pb2.CreateKeyRequest(), invalid),
        (
            "CreateKey",
            "unknown account",
            lambda e: auth_pb2.CreateKeyRequest(account_id=unknown_account),
            not_found,
        ),
        (
            "CreateKey",
            "key id as account id",
            lambda e: auth_pb2.CreateKeyRequest(account_id=e.key.key.id),
            invalid,
        ),
        (
            "CreateKey",
            "65-character key name",
            lambda e: auth_pb2.CreateKeyRequest(account_id=e.account.id, name="k" * 65),
            invalid,
        ),
        (
            "CreateKey",
            "NUL in key name",
            lambda e: auth_pb2.CreateKeyRequest(account_id=e.account.id, name="a\x00b"),
            invalid,
        ),
        ("ListKeys", "empty account id", lambda e: auth_pb2.ListKeysRequest(), invalid),
        (
            "ListKeys",
            "unknown account",
            lambda e: auth_pb2.ListKeysRequest(account_id=unknown_account),
            not_found,
        ),
        ("RevokeKey", "empty key id", lambda e: auth_pb2.RevokeKeyRequest(), invalid),
        (
            "RevokeKey",
            "account id as key id",
            lambda e: auth_pb2.RevokeKeyRequest(key_id=e.account.id),
            invalid,
        ),
        (
            "RevokeKey",
            "unknown key",
            lambda e: auth_pb2.RevokeKeyRequest(key_id=unknown_key),
            not_found,
        ),
    ]
    return [
        pytest.param(method, build, code, id=f"{method}: {name}")
        for method, name, build, code in cases
    ]


@pytest.mark.parametrize(("method", "build", "code"), _bad_requests())
def test_bad_input_is_refused_and_writes_nothing(
    auth: Auth,
    existing: Existing,
    method: str,
    build: Callable[[Existing], Any],
    code: grpc.StatusCode,
) -> None:
    before = row_counts(auth.database_url)

    assert rejection(lambda: auth.admin(method, build(existing)))[0] == code

    assert row_counts(auth.database_url) == before
    assert auth.verify(existing.key.plaintext).account_id == existing.account.id


def test_names_are_measured_in_characters(auth: Auth) -> None:
    name = "é" * 64  # 128 bytes in UTF-8, still 64 characters
    account = auth.new_account(name)
    assert account.name == name
    assert auth.new_key(account.id, "ключ" * 16).key.name == "ключ" * 16


@pytest.mark.parametrize(
    ("caller", "code"),
    [
        ("gateway", grpc.StatusCode.PERMISSION_DENIED),
        ("reports", grpc.StatusCode.PERMISSION_DENIED),
        ("stranger", grpc.StatusCode.UNAUTHENTICATED),
    ],
    ids=["gateway", "internal caller", "certificate naming no caller"],
)
@pytest.mark.parametrize(
    ("method", "build"),
    [
        ("CreateAccount", lambda e: auth_pb2.CreateAccountRequest(name="intruder")),
        ("GetAccount", lambda e: auth_pb2.GetAccountRequest(account_id=e.account.id)),
        ("CreateKey", lambda e: auth_pb2.CreateKeyRequest(account_id=e.account.id)),
        ("ListKeys", lambda e: auth_pb2.ListKeysRequest(account_id=e.account.id)),
        ("RevokeKey", lambda e: auth_pb2.RevokeKeyRequest(key_id=e.key.key.id)),
    ],
)
def test_admin_rpcs_answer_only_the_operator(
    auth: Auth,
    existing: Existing,
    method: str,
    build: Callable[[Existing], Any],
    caller: str,
    code: grpc.StatusCode,
) -> None:
    before = row_counts(auth.database_url)
    with sync_channel(auth.process.address, caller) as channel:
        call = getattr(auth_pb2_grpc.AuthServiceStub(channel), method)
        refused, _ = rejection(lambda: call(build(existing), timeout=10))

    assert refused == code
    assert row_counts(auth.database_url) == before
    assert auth.verify(existing.key.plaintext).account_id == existing.account.id


def test_the_operator_may_not_verify_customers_keys(auth: Auth, existing: Existing) -> None:
    # VerifyKey turns a key into its account id: the gateway's power alone.
    code, _ = rejection(
        lambda: auth.stub.VerifyKey(
            auth_pb2.VerifyKeyRequest(key=existing.key.plaintext), timeout=10
        )
    )
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_revocation_is_seen_at_once_by_another_replica(
    auth: Auth, auth_database: str, auth_secrets: AuthSecrets, log_dir: Path
) -> None:
    account = auth.new_account("two replicas")
    created = auth.new_key(account.id)
    replica = start_auth(auth_database, auth_secrets, log_dir)
    try:
        with sync_channel(replica.address, "gateway") as channel:
            other = auth_pb2_grpc.AuthServiceStub(channel)

            def verify_on_replica() -> Any:
                return other.VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext), timeout=10)

            assert verify_on_replica().account_id == account.id
            auth.admin("RevokeKey", auth_pb2.RevokeKeyRequest(key_id=created.key.id))
            assert rejection(verify_on_replica) == (grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")
    finally:
        replica.stop()
