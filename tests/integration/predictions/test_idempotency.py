"""Prediction creates under an Idempotency-Key (store.py, "Idempotency keys"): a repeat gets the
prediction the key already names and is held for once, a different request under the key is
refused having changed nothing, racing creates of one key make one prediction, a create refused
or rolled back leaves its key to the retry, keys are the account's, and a key past its 24 hours
names a new prediction (and is swept, but never once a create has taken it over).

First as the gateway calls the service, then through a gateway of the tests' own: the real app
and its gRPC client to this mesh's predictions service and ledger, with auth and synth's lists
faked (tests/support/gateway_fakes.py). No worker runs here: predictions stay processing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
import httpx
import psycopg
import pytest
from kokoropay.predictions.v1 import predictions_pb2 as P

from services.cli.processes import ServiceProcess
from services.common.errors import error_info
from services.gateway.app import create_app
from services.gateway.clients import GrpcLedgerClient, GrpcPredictionsClient, Principal, Upstreams
from services.gateway.settings import GatewaySettings
from services.predictions.ids import new_prediction_id
from services.predictions.settings import PredictionsSettings
from services.predictions.store import PredictionStore
from services.predictions.validation import IdempotencyKey
from tests.integration.predictions.mesh import (
    URL_SIGNING_SECRET,
    Databases,
    Predictions,
    eventually,
    field_of,
    query_one,
    reason,
)
from tests.support.gateway_fakes import GOOD_KEY, FakeAuth, FakeSynth, api_key_header, fake_key

TEXT = "Said and paid once."
FINGERPRINT = "input.text=0123456789abcdef"


def _key() -> str:
    return f"retry-{uuid.uuid4().hex}"


def _api_key() -> str:
    """An API key of the test's own, so its limit counts only the test's predictions."""
    return f"key_{uuid.uuid4().hex}"


def _count(databases: Databases, account_id: str) -> int:
    row = query_one(
        databases.owner,
        "SELECT count(*) FROM predictions.predictions WHERE account_id = %s",
        account_id,
    )
    assert row is not None
    return int(row[0])


async def _assert_charged_once(
    predictions: Predictions, databases: Databases, account_id: str, credits: int, text: str
) -> None:
    """One prediction of the account, one hold, len(text) held and nothing more."""
    assert _count(databases, account_id) == 1
    assert len(await predictions.ledger.holds(account_id)) == 1
    balance = await predictions.ledger.balance(account_id)
    assert (balance.balance, balance.held) == (credits - len(text), len(text))


@asynccontextmanager
async def _store(databases: Databases) -> AsyncIterator[PredictionStore]:
    """The service's store as the serving role runs it, beside the running service."""
    store = PredictionStore()
    await store.open(
        PredictionsSettings(
            DATABASE_URL=databases.serving,
            migration_database_url=databases.owner,
            url_signing_secret=URL_SIGNING_SECRET,
            pool_min_size=1,
        )
    )
    try:
        yield store
    finally:
        await store.close()


async def _waiting_on_a_lock(databases: Databases, statement: str) -> None:
    """Until a statement containing `statement` waits for a row or lock another holds."""

    async def waiting() -> bool:
        row = query_one(
            databases.owner,
            "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
            "AND wait_event_type = 'Lock' AND position(%s in query) > 0",
            statement,
        )
        return row is not None and row[0] > 0

    await eventually(waiting, timeout=10, interval=0.02)


# --- the service --------------------------------------------------------------------------------


async def test_a_repeat_gets_the_same_prediction_as_it_now_stands(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    key = _key()
    first = await predictions.create(
        account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT
    )
    again = await predictions.create(
        account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT
    )
    assert again == first
    await _assert_charged_once(predictions, databases, account, 1_000, TEXT)

    # A repeat after the prediction moved on answers where it stands now, still holding nothing.
    await predictions.cancel(account, first.id)
    after = await predictions.create(
        account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT
    )
    assert (after.id, after.status, after.message) == (
        first.id,
        P.PREDICTION_STATUS_ERROR,
        "cancelled",
    )
    assert len(await predictions.ledger.holds(account)) == 1
    assert (await predictions.ledger.balance(account)).balance == 1_000


async def test_a_repeat_is_answered_at_the_keys_limit_without_taking_its_turn(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    key, api_key = _key(), _api_key()

    async def create(fingerprint: str = FINGERPRINT) -> P.Prediction:
        return await predictions.create(
            account,
            TEXT,
            key_id=api_key,
            max_active=1,
            idempotency_key=key,
            request_fingerprint=fingerprint,
        )

    created = await create()
    # The API key's turn held elsewhere (its advisory lock, as another replica's create holds
    # it): a create would wait up to 12 s for it, a repeat is answered from its key at once.
    # The prediction it names is the one taking the key's only place: not a second create.
    async with _store(databases) as store, store.creating(api_key):
        again = await asyncio.wait_for(create(), timeout=3)
        with pytest.raises(grpc.RpcError) as refused:
            await asyncio.wait_for(create("input.text=ff"), timeout=3)
    assert again.id == created.id
    assert reason(refused.value) == "REQUEST_KEY_REUSED"
    await _assert_charged_once(predictions, databases, account, 1_000, TEXT)
    await predictions.cancel(account, created.id)


async def test_a_repeat_is_answered_from_its_key_before_any_other_check(
    predictions: Predictions, databases: Databases
) -> None:
    # The service trusts the gateway's fingerprint: a retry that fingerprints as the first
    # request did, but whose webhook host does not resolve (as if it had stopped resolving
    # since), still gets the prediction, where a new create would be refused.
    account = await predictions.account(1_000)
    key = _key()
    first = await predictions.create(
        account,
        TEXT,
        webhook_url="http://127.0.0.1:9/hooks",
        idempotency_key=key,
        request_fingerprint=FINGERPRINT,
    )
    again = await predictions.create(
        account,
        TEXT,
        webhook_url="http://host-that-does-not-resolve.invalid/hooks",
        idempotency_key=key,
        request_fingerprint=FINGERPRINT,
    )
    assert again == first
    await _assert_charged_once(predictions, databases, account, 1_000, TEXT)


async def test_another_request_under_the_key_is_refused_and_changes_nothing(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    key = _key()
    await predictions.create(account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT)

    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(
            account, "Something else.", idempotency_key=key, request_fingerprint="input.text=ff"
        )
    assert refused.value.code() == grpc.StatusCode.ALREADY_EXISTS
    info = error_info(refused.value)
    assert info is not None and info.reason == "REQUEST_KEY_REUSED"
    # The stored fingerprint, for the gateway to say which field differs.
    assert dict(info.metadata) == {"fingerprint": FINGERPRINT}
    await _assert_charged_once(predictions, databases, account, 1_000, TEXT)


async def test_racing_creates_of_one_key_make_one_prediction_and_one_hold(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    key = _key()
    # Under two API keys of the account, so the key's turn (per API key) does not keep them
    # apart: the claim's row in the database does.
    results = await asyncio.gather(
        *(
            predictions.create(
                account,
                TEXT,
                key_id=f"key_race_{n % 2}",
                idempotency_key=key,
                request_fingerprint=FINGERPRINT,
            )
            for n in range(8)
        )
    )
    assert len({prediction.id for prediction in results}) == 1
    await _assert_charged_once(predictions, databases, account, 1_000, TEXT)


async def test_a_create_refused_for_credits_leaves_its_key_for_the_retry_after_a_top_up(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(len(TEXT) - 1)
    key = _key()
    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(
            account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT
        )
    assert reason(refused.value) == "INSUFFICIENT_CREDITS"
    assert _count(databases, account) == 0

    await predictions.ledger.grant(account, 1_000)
    await predictions.create(account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT)
    await _assert_charged_once(predictions, databases, account, len(TEXT) - 1 + 1_000, TEXT)


async def test_a_create_refused_at_the_limit_leaves_its_key_for_the_retry_once_a_place_frees(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    key, api_key = _key(), _api_key()
    other = await predictions.create(account, TEXT, key_id=api_key, max_active=1)

    async def create() -> P.Prediction:
        return await predictions.create(
            account,
            TEXT,
            key_id=api_key,
            max_active=1,
            idempotency_key=key,
            request_fingerprint=FINGERPRINT,
        )

    with pytest.raises(grpc.RpcError) as refused:
        await create()
    assert reason(refused.value) == "CONCURRENCY_LIMITED"
    await predictions.cancel(account, other.id)

    created = await create()
    assert created.id != other.id
    assert _count(databases, account) == 2
    # The cancelled one's hold released, the retry's held: len(TEXT) held once.
    assert len(await predictions.ledger.holds(account)) == 2
    balance = await predictions.ledger.balance(account)
    assert (balance.balance, balance.held) == (1_000 - len(TEXT), len(TEXT))


@pytest.mark.parametrize("blocker_commits", [False, True], ids=["rolls-back", "commits"])
async def test_a_create_waiting_on_an_uncommitted_claim_goes_the_way_that_claim_went(
    predictions: Predictions, databases: Databases, blocker_commits: bool
) -> None:
    account = await predictions.account(1_000)
    key = _key()
    # A claim another create has written and not yet committed; one that commits names a
    # prediction of the account made from the same request.
    named = (await predictions.create(account, TEXT)).id if blocker_commits else new_prediction_id()
    async with await psycopg.AsyncConnection.connect(databases.owner) as blocker:
        await blocker.execute(
            b"INSERT INTO predictions.idempotency_keys "
            b"(account_id, idempotency_key, fingerprint, prediction_id) VALUES (%s, %s, %s, %s)",
            (account, key, FINGERPRINT, named),
        )
        waiter = asyncio.create_task(
            predictions.create(account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT)
        )
        await _waiting_on_a_lock(databases, "INSERT INTO predictions.idempotency_keys")
        await (blocker.commit() if blocker_commits else blocker.rollback())
    prediction = await waiter

    # Either way the key names one prediction, held for once.
    assert (prediction.id == named) == blocker_commits
    await _assert_charged_once(predictions, databases, account, 1_000, TEXT)


async def test_keys_are_the_accounts_own(predictions: Predictions, databases: Databases) -> None:
    key = _key()
    first, second = await predictions.account(1_000), await predictions.account(1_000)
    ours = await predictions.create(first, TEXT, idempotency_key=key, request_fingerprint="a=1")
    theirs = await predictions.create(second, TEXT, idempotency_key=key, request_fingerprint="b=2")
    assert ours.id != theirs.id
    for account in (first, second):
        await _assert_charged_once(predictions, databases, account, 1_000, TEXT)


async def test_without_a_key_every_create_is_a_new_prediction(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    first = await predictions.create(account, TEXT)
    second = await predictions.create(account, TEXT)
    assert first.id != second.id
    assert _count(databases, account) == 2
    assert (await predictions.ledger.balance(account)).held == 2 * len(TEXT)


@pytest.mark.parametrize(
    ("key", "fingerprint", "field"),
    [
        ("k" * 129, FINGERPRINT, "idempotency_key"),
        ("tab\tin-it", FINGERPRINT, "idempotency_key"),
        (_key(), "", "request_fingerprint"),
        (_key(), "x" * 1025, "request_fingerprint"),
    ],
    ids=["long-key", "control-key", "no-fingerprint", "long-fingerprint"],
)
async def test_an_impossible_key_is_refused_before_anything_is_held(
    predictions: Predictions, databases: Databases, key: str, fingerprint: str, field: str
) -> None:
    account = await predictions.account(1_000)
    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(
            account, TEXT, idempotency_key=key, request_fingerprint=fingerprint
        )
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (reason(refused.value), field_of(refused.value)) == ("FIELD_INVALID", field)
    assert _count(databases, account) == 0
    assert (await predictions.ledger.balance(account)).held == 0


async def test_a_key_past_its_24_hours_names_a_new_prediction_then_is_swept(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    key = _key()
    old = await predictions.create(account, TEXT, idempotency_key=key, request_fingerprint="a=1")
    _age_key(databases, account, key, "25 hours")

    # Past its 24 hours the key is free: even another request under it makes a new prediction.
    new = await predictions.create(account, TEXT, idempotency_key=key, request_fingerprint="b=2")
    assert new.id != old.id
    again = await predictions.create(account, TEXT, idempotency_key=key, request_fingerprint="b=2")
    assert again.id == new.id
    assert len(await predictions.ledger.holds(account)) == 2

    # The maintenance's sweep, as the serving role runs it: expired keys go, live ones stay.
    _age_key(databases, account, key, "24 hours 1 second")
    live = _key()
    await predictions.create(account, TEXT, idempotency_key=live, request_fingerprint="c=3")
    async with _store(databases) as store:
        assert await store.delete_expired_keys(limit=1_000) >= 1
    kept = query_one(
        databases.owner,
        "SELECT array_agg(idempotency_key) FROM predictions.idempotency_keys WHERE account_id = %s",
        account,
    )
    assert kept == ([live],)


async def test_a_sweep_that_waited_on_a_key_being_taken_over_leaves_the_fresh_claim(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1_000)
    key = _key()
    await predictions.create(account, TEXT, idempotency_key=key, request_fingerprint="a=1")
    # What the takeover will name (the claim's reference is checked at its commit).
    fresh = await predictions.create(account, TEXT)
    async with _store(databases) as store:
        # Other tests' expired keys gone first, so this sweep can only meet ours.
        await store.delete_expired_keys(limit=1_000)
        _age_key(databases, account, key, "25 hours")
        # A create taking the expired key over, its transaction still open; the sweep, which
        # read the key as expired, waits on the row until the takeover commits.
        async with store.creating(_api_key()) as turn:
            assert await turn.claim(IdempotencyKey(account, key, "b=2"), fresh.id) is None
            sweep = asyncio.create_task(store.delete_expired_keys(limit=1_000))
            await _waiting_on_a_lock(databases, "DELETE FROM predictions.idempotency_keys")
        assert await sweep == 0
    claim = query_one(
        databases.owner,
        "SELECT prediction_id, fingerprint FROM predictions.idempotency_keys "
        "WHERE account_id = %s AND idempotency_key = %s",
        account,
        key,
    )
    assert claim == (fresh.id, "b=2")


def test_a_key_names_a_prediction_that_exists(
    predictions_service: ServiceProcess, databases: Databases
) -> None:
    # The database's own check, whatever the code does: a claim whose prediction was never
    # written cannot commit.
    with (
        psycopg.connect(databases.serving, autocommit=True) as conn,
        pytest.raises(psycopg.errors.ForeignKeyViolation),
    ):
        conn.execute(
            b"INSERT INTO predictions.idempotency_keys "
            b"(account_id, idempotency_key, fingerprint, prediction_id) "
            b"VALUES ('acct_x', 'k', 'a=1', 'pred_00000000000000000000000000')"
        )


def _age_key(databases: Databases, account_id: str, key: str, age: str) -> None:
    query_one(
        databases.owner,
        "UPDATE predictions.idempotency_keys SET create_time = now() - %s::interval "
        "WHERE account_id = %s AND idempotency_key = %s RETURNING 1",
        age,
        account_id,
        key,
    )


# --- through the gateway ------------------------------------------------------------------------

OTHER_KEY = fake_key("o")
CREATE = "/v1/prediction/"


class Gateway:
    """The gateway app over the mesh's predictions service and ledger; GOOD_KEY and OTHER_KEY
    are keys of two accounts opened on the real ledger."""

    def __init__(self, client: httpx.AsyncClient, account: str, other_account: str) -> None:
        self.client = client
        self.account = account
        self.other_account = other_account

    async def create(
        self, text: str = TEXT, *, key: str | None, api_key: str = GOOD_KEY, **fields: object
    ) -> httpx.Response:
        headers = api_key_header(api_key) | ({"Idempotency-Key": key} if key is not None else {})
        body = {"model": "kokoro-82m", "input": {"text": text, **fields}}
        return await self.client.post(CREATE, json=body, headers=headers)


@pytest.fixture
async def gateway(predictions: Predictions) -> AsyncIterator[Gateway]:
    account = await predictions.account(1_000)
    other_account = await predictions.account(1_000)
    auth = FakeAuth()
    auth.keys = {
        GOOD_KEY: Principal(account, "key_gateway"),
        OTHER_KEY: Principal(other_account, "key_gateway_other"),
    }
    upstreams = Upstreams(
        auth,
        GrpcLedgerClient(predictions.ledger.gateway_channel, timeout=5, ready_timeout=1),
        FakeSynth(),
        GrpcPredictionsClient(predictions.channel, timeout=15, ready_timeout=1),
    )
    app = create_app(GatewaySettings(), upstreams)
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield Gateway(client, account, other_account)


async def test_a_retried_create_gets_the_first_answer_and_pays_once(
    gateway: Gateway, predictions: Predictions, databases: Databases
) -> None:
    key = _key()
    first = await gateway.create(key=key, voice="af_sky")
    retried = await gateway.create(key=key, voice="af_sky")
    assert first.status_code == retried.status_code == 200, retried.text
    assert retried.json() == first.json()
    await _assert_charged_once(predictions, databases, gateway.account, 1_000, TEXT)

    # Another account's same key is its own; without the header, creates are as before.
    theirs = await gateway.create(key=key, voice="af_sky", api_key=OTHER_KEY)
    assert theirs.json()["predictionID"] != first.json()["predictionID"]
    plain = [await gateway.create(key=None) for _ in range(2)]
    assert len({answer.json()["predictionID"] for answer in plain}) == 2
    assert _count(databases, gateway.account) == 3


async def test_another_request_under_the_key_is_a_400_naming_what_differs(
    gateway: Gateway, predictions: Predictions, databases: Databases
) -> None:
    key = _key()
    assert (await gateway.create(key=key)).status_code == 200
    refused = await gateway.create(key=key, speed=2)
    assert refused.status_code == 400
    assert refused.json() == {
        "status": "error",
        "message": "this Idempotency-Key was used in the last 24 hours for a different request "
        "(it differs in: input.speed); use a new key",
        "details": "idempotency_key_reused",
    }
    await _assert_charged_once(predictions, databases, gateway.account, 1_000, TEXT)


async def test_racing_retries_through_the_gateway_make_one_prediction(
    gateway: Gateway, predictions: Predictions, databases: Databases
) -> None:
    key = _key()
    answers = await asyncio.gather(*(gateway.create(key=key) for _ in range(8)))
    assert {answer.status_code for answer in answers} == {200}
    assert len({answer.json()["predictionID"] for answer in answers}) == 1
    await _assert_charged_once(predictions, databases, gateway.account, 1_000, TEXT)


@pytest.mark.parametrize("key", ["k" * 129, "", " padded"], ids=["long", "empty", "padded"])
async def test_a_malformed_key_is_a_400_and_creates_nothing(
    gateway: Gateway, predictions: Predictions, databases: Databases, key: str
) -> None:
    refused = await gateway.create(key=key)
    assert refused.status_code == 400
    assert refused.json()["details"] == "invalid_input"
    assert _count(databases, gateway.account) == 0
    assert (await predictions.ledger.balance(gateway.account)).held == 0
