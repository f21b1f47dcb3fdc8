"""A session's playground key (MintPlaygroundKey): minted on demand, the same for the whole
session, verified by the gateway like any key while its session lives and refused as revoked
from the moment it ends; hidden from its person's key list unless asked for, beyond their
RevokeOwnKey and outside their key limit.

The auth processes are test_auth_people.py's (cheap hashes, AUTH_MAX_KEYS_PER_ACCOUNT=3; and the
least-privilege role at the default settings), started again for this module. Sessions are aged
in the database as the owner, as there.
"""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from typing import Any

import grpc
import psycopg
import pytest
from kokoropay.auth.v1 import auth_pb2
from psycopg import sql

from services.auth import ids
from services.auth.keys import KeyHasher, looks_like_key
from services.auth.sessions import token_digest
from services.cli.embedded_database import SERVING_ROLES
from tests.integration import test_auth_people as people
from tests.integration.test_auth_people import (
    IDLE,
    KEY_LIMIT_REACHED,
    MAX_KEYS,
    PASSWORD,
    SESSION_INVALID,
    Auth,
    new_email,
    refused,
)
from tests.support.auth import AuthSecrets

# test_auth_people.py's fixtures, each started anew for this module.
people_database = people.people_database
auth_secrets = people.auth_secrets
auth = people.auth
serving = people.serving

KEY_REVOKED = (grpc.StatusCode.UNAUTHENTICATED, "KEY_REVOKED")


def mint(auth: Auth, token: str) -> auth_pb2.CreateKeyResponse:
    request = auth_pb2.MintPlaygroundKeyRequest(session_token=token)
    response: auth_pb2.CreateKeyResponse = auth.dashboard.MintPlaygroundKey(request, timeout=10)
    return response


def verify(auth: Auth, plaintext: str) -> auth_pb2.VerifyKeyResponse:
    request = auth_pb2.VerifyKeyRequest(key=plaintext)
    response: auth_pb2.VerifyKeyResponse = auth.gateway.VerifyKey(request, timeout=10)
    return response


def listed(auth: Auth, token: str, include_playground: bool = False) -> list[auth_pb2.ApiKey]:
    request = auth_pb2.ListOwnKeysRequest(
        session_token=token, include_playground=include_playground
    )
    return list(auth.dashboard.ListOwnKeys(request, timeout=10).keys)


def create_own(auth: Auth, token: str, name: str) -> auth_pb2.CreateKeyResponse:
    request = auth_pb2.CreateOwnKeyRequest(session_token=token, name=name)
    response: auth_pb2.CreateKeyResponse = auth.dashboard.CreateOwnKey(request, timeout=10)
    return response


def sign_out(auth: Auth, token: str) -> None:
    auth.dashboard.SignOut(auth_pb2.SignOutRequest(session_token=token), timeout=10)


def session_row(auth: Auth, token: str) -> tuple[Any, ...]:
    [row] = auth.query(
        "SELECT id, last_seen_time, expire_time, end_time FROM auth.sessions WHERE token_hash = %s",
        token_digest(token),
    )
    return row


def when(stamp: Any) -> datetime:
    moment: datetime = stamp.ToDatetime(tzinfo=UTC)
    return moment


# --- minting ------------------------------------------------------------------------------------


def test_minting_twice_returns_the_same_key_and_stores_it_once(
    auth: Auth, auth_secrets: AuthSecrets
) -> None:
    person = auth.sign_up(new_email("player"))

    first, again = mint(auth, person.session_token), mint(auth, person.session_token)

    assert first == again
    assert looks_like_key(first.plaintext)
    key = first.key
    assert (key.account_id, key.name, key.playground) == (person.account.id, "Playground", True)
    assert key.id.startswith("key_") and first.plaintext.startswith(key.prefix)
    assert not key.HasField("revoke_time") and not key.HasField("last_use_time")
    session_id = session_row(auth, person.session_token)[0]
    rows = auth.query(
        "SELECT id, account_id, session_id, key_hash FROM auth.api_keys WHERE account_id = %s",
        person.account.id,
    )
    key_hash = KeyHasher(auth_secrets.key_hash_secret).hash(first.plaintext)
    assert rows == [(key.id, person.account.id, session_id, key_hash)]
    # Derived, not kept: no column of the schema holds the plaintext.
    with psycopg.connect(auth.database_url) as conn:
        columns = conn.execute(
            "SELECT table_name, column_name FROM information_schema.columns"
            " WHERE table_schema = 'auth' AND data_type IN ('text', 'bytea')"
        ).fetchall()
        for table, column in columns:
            query = sql.SQL("SELECT count(*) FROM auth.{} WHERE strpos({}::text, %s) > 0").format(
                sql.Identifier(table), sql.Identifier(column)
            )
            for needle in (first.plaintext, first.plaintext.encode().hex()):
                assert conn.execute(query, [needle]).fetchone() == (0,), f"{table}.{column}"


def test_concurrent_mints_of_one_session_store_one_key(auth: Auth) -> None:
    """The losers of the insert find the winner's key (a second statement, as the first one's
    snapshot predates it); a few sessions, so that the race is run, not only allowed for."""
    email = new_email("eager")
    tokens = [
        auth.sign_up(email).session_token,
        *(auth.sign_in(email).session_token for _ in range(3)),
    ]
    start = threading.Barrier(8)

    def mint_at_once(token: str) -> auth_pb2.CreateKeyResponse:
        start.wait()
        return mint(auth, token)

    with ThreadPoolExecutor(8) as pool:
        for token in tokens:
            minted = list(pool.map(mint_at_once, [token] * 8))
            assert len({(m.plaintext, m.key.id) for m in minted}) == 1
            session_id = session_row(auth, token)[0]
            stored = auth.query(
                "SELECT count(*) FROM auth.api_keys WHERE session_id = %s", session_id
            )
            assert stored == [(1,)]


def test_each_session_of_a_person_has_its_own_key(auth: Auth) -> None:
    email = new_email("two-tabs")
    first = auth.sign_up(email).session_token
    second = auth.sign_in(email).session_token

    one, other = mint(auth, first), mint(auth, second)

    assert one.plaintext != other.plaintext and one.key.id != other.key.id
    assert one.key.account_id == other.key.account_id
    assert verify(auth, one.plaintext).key_id == one.key.id
    assert verify(auth, other.plaintext).key_id == other.key.id


def test_minting_needs_an_open_session(auth: Auth) -> None:
    token = auth.sign_up(new_email("gone")).session_token
    sign_out(auth, token)
    assert refused(lambda: mint(auth, token)).status == SESSION_INVALID
    assert refused(lambda: mint(auth, "t" * 43)).status == SESSION_INVALID
    assert refused(lambda: mint(auth, "t" * 100_000)).status == SESSION_INVALID


@pytest.mark.parametrize("caller", ["gateway", "operator"])
def test_only_the_dashboard_may_mint(auth: Auth, caller: str) -> None:
    token = auth.sign_up(new_email("guarded")).session_token
    stub = auth.gateway if caller == "gateway" else auth.operator
    request = auth_pb2.MintPlaygroundKeyRequest(session_token=token)

    refusal = refused(lambda: stub.MintPlaygroundKey(request, timeout=10))

    assert refusal.code == grpc.StatusCode.PERMISSION_DENIED
    assert auth.query(
        "SELECT count(*) FROM auth.api_keys k JOIN auth.sessions s ON s.id = k.session_id"
        " WHERE s.token_hash = %s",
        token_digest(token),
    ) == [(0,)]


# --- verifying: only while the session lives ---------------------------------------------------


def test_the_key_verifies_while_its_session_lives_and_is_revoked_at_sign_out(auth: Auth) -> None:
    person = auth.sign_up(new_email("leaver"))
    minted = mint(auth, person.session_token)

    verified = verify(auth, minted.plaintext)
    assert (verified.account_id, verified.key_id) == (person.account.id, minted.key.id)
    [stamped] = listed(auth, person.session_token, include_playground=True)
    assert stamped.HasField("last_use_time"), "its use is kept like any key's"

    sign_out(auth, person.session_token)

    assert refused(lambda: verify(auth, minted.plaintext)).status == KEY_REVOKED
    [(ended,)] = auth.query(
        "SELECT end_time FROM auth.sessions WHERE token_hash = %s",
        token_digest(person.session_token),
    )
    [listed_by_operator] = auth.operator.ListKeys(
        auth_pb2.ListKeysRequest(account_id=person.account.id), timeout=10
    ).keys
    assert listed_by_operator.playground
    assert when(listed_by_operator.revoke_time) == ended, "revoked from the session's end"
    assert listed_by_operator.last_use_time == stamped.last_use_time


def test_a_password_change_revokes_the_other_sessions_keys(auth: Auth) -> None:
    email = new_email("changer")
    this = auth.sign_up(email).session_token
    other = auth.sign_in(email).session_token
    kept, ended = mint(auth, this).plaintext, mint(auth, other).plaintext

    changed = auth.dashboard.ChangePassword(
        auth_pb2.ChangePasswordRequest(
            session_token=this, current_password=PASSWORD, new_password="a brand new password"
        ),
        timeout=10,
    )

    assert changed.ended_sessions == 1
    assert refused(lambda: verify(auth, ended)).status == KEY_REVOKED
    assert verify(auth, kept).key_id, "the session that changed it lives on, and its key"


def test_an_operator_reset_revokes_every_sessions_key(auth: Auth) -> None:
    email = new_email("reset")
    keys = [
        mint(auth, auth.sign_up(email).session_token),
        mint(auth, auth.sign_in(email).session_token),
    ]

    auth.operator.ResetPassword(
        auth_pb2.ResetPasswordRequest(email=email, new_password="reset by an operator"),
        timeout=10,
    )

    for key in keys:
        assert refused(lambda key=key: verify(auth, key.plaintext)).status == KEY_REVOKED


def test_the_key_ends_when_its_session_has_been_idle_too_long(auth: Auth) -> None:
    person = auth.sign_up(new_email("idler"))
    minted = mint(auth, person.session_token)

    def idle_for(ago: timedelta) -> None:
        auth.query(
            "UPDATE auth.sessions SET last_seen_time = now() - %s WHERE token_hash = %s",
            ago,
            token_digest(person.session_token),
        )

    idle_for(IDLE - timedelta(minutes=1))
    assert verify(auth, minted.plaintext).key_id == minted.key.id
    # The gateway's use of the key is not the session's: it does not keep the session alive.
    assert session_row(auth, person.session_token)[1] < datetime.now(UTC) - timedelta(hours=23)

    idle_for(IDLE + timedelta(seconds=1))
    assert refused(lambda: verify(auth, minted.plaintext)).status == KEY_REVOKED
    assert refused(lambda: auth.resolve(person.session_token)).status == SESSION_INVALID
    last_seen = session_row(auth, person.session_token)[1]
    [key] = auth.operator.ListKeys(
        auth_pb2.ListKeysRequest(account_id=person.account.id), timeout=10
    ).keys
    assert when(key.revoke_time) == last_seen + IDLE


def test_the_key_ends_at_its_sessions_absolute_deadline(auth: Auth) -> None:
    user_id = auth.sign_up(new_email("deadline")).user.id
    # Signed in a minute ago, ending 1.5 seconds from now (a session's deadline never moves,
    # so the session is written whole with a near one).
    token = people._insert_session(
        auth, user_id, timedelta(minutes=1), timedelta(seconds=1.5), ended=None
    )
    minted = mint(auth, token)
    assert verify(auth, minted.plaintext).key_id == minted.key.id

    [(left,)] = auth.query(
        "SELECT expire_time - now() FROM auth.sessions WHERE token_hash = %s", token_digest(token)
    )
    time.sleep(max(left.total_seconds(), 0) + 0.05)

    assert refused(lambda: verify(auth, minted.plaintext)).status == KEY_REVOKED


# --- the person's list, revocation and limit ----------------------------------------------------


def test_the_key_is_listed_only_when_asked_for(auth: Auth) -> None:
    person = auth.sign_up(new_email("lister"))
    own = create_own(auth, person.session_token, "laptop")
    minted = mint(auth, person.session_token)

    assert [key.id for key in listed(auth, person.session_token)] == [own.key.id]
    with_playground = listed(auth, person.session_token, include_playground=True)
    assert [(key.id, key.playground) for key in with_playground] == [
        (minted.key.id, True),
        (own.key.id, False),
    ]
    assert with_playground[0] == minted.key
    operators = auth.operator.ListKeys(
        auth_pb2.ListKeysRequest(account_id=person.account.id), timeout=10
    ).keys
    assert list(operators) == with_playground, "the operator sees every key, playground ones too"


def test_its_person_cannot_revoke_it_but_an_operator_can(auth: Auth) -> None:
    person = auth.sign_up(new_email("keeper"))
    minted = mint(auth, person.session_token)

    def revoke_own(key_id: str) -> Any:
        request = auth_pb2.RevokeOwnKeyRequest(session_token=person.session_token, key_id=key_id)
        return auth.dashboard.RevokeOwnKey(request, timeout=10)

    theirs = refused(lambda: revoke_own(minted.key.id))
    unknown = refused(lambda: revoke_own("key_01JD3Q0000000000000000000Z"))
    assert theirs.code == grpc.StatusCode.NOT_FOUND
    assert (theirs.reason, theirs.details) == (unknown.reason, unknown.details)
    assert verify(auth, minted.plaintext).key_id == minted.key.id

    revoked = auth.operator.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=minted.key.id)).key
    assert revoked.playground and revoked.HasField("revoke_time")
    assert refused(lambda: verify(auth, minted.plaintext)).status == KEY_REVOKED
    again = mint(auth, person.session_token)
    assert again.plaintext == minted.plaintext, "the session's key, revoked: no new one"
    assert again.key.revoke_time == revoked.revoke_time


def test_the_key_limit_ignores_playground_keys(auth: Auth) -> None:
    email = new_email("at-the-limit")
    person = auth.sign_up(email)
    mint(auth, person.session_token)
    for n in range(MAX_KEYS):  # AUTH_MAX_KEYS_PER_ACCOUNT
        create_own(auth, person.session_token, f"key {n}")

    refusal = refused(lambda: create_own(auth, person.session_token, "one too many"))
    assert refusal.status == KEY_LIMIT_REACHED
    another_session = auth.sign_in(email).session_token
    assert verify(auth, mint(auth, another_session).plaintext).key_id, "minted at the limit"
    assert len(listed(auth, person.session_token)) == MAX_KEYS
    assert len(listed(auth, person.session_token, include_playground=True)) == MAX_KEYS + 2


# --- as the least-privilege role ------------------------------------------------------------------


def test_the_serving_role_mints_verifies_and_lists_playground_keys(serving: Auth) -> None:
    email = new_email("role-player")
    token = serving.sign_up(email).session_token
    minted = mint(serving, token)
    assert mint(serving, token) == minted
    assert verify(serving, minted.plaintext).key_id == minted.key.id
    [key] = listed(serving, token, include_playground=True)
    assert key.playground and key.HasField("last_use_time")

    other = serving.sign_in(email).session_token
    ended = mint(serving, other)
    sign_out(serving, other)
    assert refused(lambda: verify(serving, ended.plaintext)).status == KEY_REVOKED


def test_forgetting_a_session_forgets_its_key_as_the_serving_role(serving: Auth) -> None:
    person = serving.sign_up(new_email("forgotten-player"))
    live = mint(serving, person.session_token)
    day = timedelta(days=1)
    old_token = people._insert_session(serving, person.user.id, 40 * day, 300 * day, ended=31 * day)
    [(old_session,)] = serving.query(
        "SELECT id FROM auth.sessions WHERE token_hash = %s", token_digest(old_token)
    )
    # Its key, as MintPlaygroundKey would have stored it while the session lived.
    serving.query(
        "INSERT INTO auth.api_keys (id, account_id, name, prefix, key_hash, session_id)"
        " VALUES (%s, %s, 'Playground', 'kp_live_xxxx', sha256(%s::bytea), %s)",
        ids.new_id(ids.KEY),
        person.account.id,
        old_session.encode(),
        old_session,
    )

    role_url = people._as_role(serving.database_url, SERVING_ROLES["auth"])
    with psycopg.connect(role_url, autocommit=True) as conn:
        forgotten = conn.execute("SELECT auth.forget_old_sessions()").fetchone()
        # Nor may the role delete a key, or move one to another session, itself.
        for statement in (
            "DELETE FROM auth.api_keys",
            "UPDATE auth.api_keys SET session_id = session_id",
        ):
            with pytest.raises(psycopg.errors.InsufficientPrivilege):
                conn.execute(statement.encode())

    assert forgotten is not None and forgotten[0] >= 1
    remaining = serving.query(
        "SELECT id FROM auth.api_keys WHERE account_id = %s", person.account.id
    )
    assert remaining == [(live.key.id,)]
    assert verify(serving, live.plaintext).key_id == live.key.id
