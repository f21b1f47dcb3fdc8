"""Prediction creates under an Idempotency-Key (store.py, "Idempotency keys"): a repeat gets the
prediction the key already names and is held for once, a different request under the key is
refused having changed nothing, racing creates of one key make one prediction, keys are the
account's, and a key past its 24 hours names a new prediction.

First as the gateway calls the service, then through a gateway of the tests' own: the real app
and its gRPC client to this mesh's predictions service and ledger, with auth and synth's lists
faked (tests/support/gateway_fakes.py). No worker runs here: predictions stay processing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator

import grpc
import httpx
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as L
from kokoropay.predictions.v1 import predictions_pb2 as P

from services.cli.processes import ServiceProcess
from services.common.errors import error_info
from services.gateway.app import create_app
from services.gateway.clients import GrpcLedgerClient, GrpcPredictionsClient, Principal, Upstreams
from services.gateway.settings import GatewaySettings
from services.predictions.settings import PredictionsSettings
from services.predictions.store import PredictionStore
from tests.integration.predictions.mesh import (
    URL_SIGNING_SECRET,
    Databases,
    Predictions,
    field_of,
    query_one,
    reason,
)
from tests.support.gateway_fakes import GOOD_KEY, FakeAuth, FakeSynth, api_key_header, fake_key

TEXT = "Said and paid once."
FINGERPRINT = "input.text=0123456789abcdef"


def _key() -> str:
    return f"retry-{uuid.uuid4().hex}"


async def _holds(predictions: Predictions, account_id: str) -> list[L.Hold]:
    response = await predictions.ledger.stub.ListHolds(L.ListHoldsRequest(account_id=account_id))
    return list(response.holds)


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
    assert len(await _holds(predictions, account_id)) == 1
    balance = await predictions.ledger.balance(account_id)
    assert (balance.balance, balance.held) == (credits - len(text), len(text))


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
    assert len(await _holds(predictions, account)) == 1
    assert (await predictions.ledger.balance(account)).balance == 1_000


async def test_a_repeat_is_answered_even_when_the_key_is_at_its_limit(
    predictions: Predictions,
) -> None:
    account = await predictions.account(1_000)
    key = _key()
    created = await predictions.create(
        account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT, max_active=1
    )
    # The prediction it names is the one taking the key's only place: not a second create.
    again = await predictions.create(
        account, TEXT, idempotency_key=key, request_fingerprint=FINGERPRINT, max_active=1
    )
    assert again.id == created.id
    await predictions.cancel(account, created.id)


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
    assert len(await _holds(predictions, account)) == 2

    # The maintenance's sweep, as the serving role runs it: expired keys go, live ones stay.
    _age_key(databases, account, key, "24 hours 1 second")
    live = _key()
    await predictions.create(account, TEXT, idempotency_key=live, request_fingerprint="c=3")
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
        assert await store.delete_expired_keys(limit=1_000) >= 1
    finally:
        await store.close()
    kept = query_one(
        databases.owner,
        "SELECT array_agg(idempotency_key) FROM predictions.idempotency_keys WHERE account_id = %s",
        account,
    )
    assert kept == ([live],)


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
