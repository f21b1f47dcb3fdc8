"""A key's predictions queued or running at once, counted by the service under `max_active`:
exact when creates race (on two replicas, so the database's lock is what decides), a refused
create holding nothing, and a place freed the moment a prediction is cancelled or finishes.

No worker runs in this module: nothing finishes unless a test finishes it.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from pathlib import Path

import grpc
import psycopg
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as L
from kokoropay.predictions.v1 import predictions_pb2 as P

from services.cli.processes import ServiceProcess
from services.common.errors import error_info
from services.predictions.store import _ACTIVE_FOR_KEY
from tests.integration.predictions.mesh import (
    Databases,
    Predictions,
    field_of,
    query_one,
    reason,
)
from tests.support.pki import channel

TEXT = "One at a time."


def _key() -> str:
    return f"key_{uuid.uuid4().hex[:12]}"


def _processing(databases: Databases, key_id: str) -> int:
    row = query_one(
        databases.owner,
        "SELECT count(*) FROM predictions.predictions WHERE key_id = %s AND status = 'processing'",
        key_id,
    )
    assert row is not None
    return int(row[0])


def _assert_limited(error: BaseException, limit: int) -> None:
    assert isinstance(error, grpc.RpcError), error
    assert error.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    info = error_info(error)
    assert info is not None
    assert (info.reason, info.domain) == ("CONCURRENCY_LIMITED", "predictions.kokoropay")
    assert dict(info.metadata) == {"limit": str(limit), "retry_after_seconds": "1"}


@pytest.fixture(scope="module")
def replica(
    predictions_env: dict[str, str], predictions_service: ServiceProcess, log_dir: Path
) -> Iterator[ServiceProcess]:
    """A second predictions service on the same database, as a deployment runs several."""
    process = ServiceProcess("predictions", predictions_env, log_dir).start()
    yield process
    process.stop()


async def test_racing_creates_of_one_key_stop_exactly_at_its_limit(
    predictions: Predictions, replica: ServiceProcess, databases: Databases
) -> None:
    account = await predictions.account(10_000)
    key = _key()
    async with channel(replica.address, "gateway") as gateway:
        other = Predictions(gateway, gateway, predictions.ledger)
        # Half through each replica: each replica lets one of the key's creates at a time reach
        # the database, so the two race there and only the key's advisory lock keeps them apart.
        results = await asyncio.gather(
            *(
                (predictions if n % 2 else other).create(account, TEXT, key_id=key, max_active=10)
                for n in range(30)
            ),
            return_exceptions=True,
        )

    created = [result for result in results if isinstance(result, P.Prediction)]
    refused = [result for result in results if not isinstance(result, P.Prediction)]
    assert (len(created), len(refused)) == (10, 20)
    for error in refused:
        _assert_limited(error, 10)
    assert _processing(databases, key) == 10
    # The refused creates reserved nothing: ten holds, all held, and nothing released.
    holds = await predictions.ledger.holds(account)
    assert sorted(hold.idempotency_key for hold in holds) == sorted(
        f"prediction:{prediction.id}" for prediction in created
    )
    assert {hold.state for hold in holds} == {L.HOLD_STATE_HELD}
    balance = await predictions.ledger.balance(account)
    assert (balance.balance, balance.held) == (10_000 - 10 * len(TEXT), 10 * len(TEXT))

    for prediction in created:
        await predictions.cancel(account, prediction.id)
    assert _processing(databases, key) == 0


async def test_a_refused_create_leaves_the_balance_and_holds_as_they_were(
    predictions: Predictions,
) -> None:
    account = await predictions.account(100)
    key = _key()
    first = await predictions.create(account, TEXT, key_id=key, max_active=1)
    balance = await predictions.ledger.balance(account)
    holds = await predictions.ledger.holds(account)

    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(account, "Me too.", key_id=key, max_active=1)
    _assert_limited(refused.value, 1)
    assert await predictions.ledger.balance(account) == balance
    assert await predictions.ledger.holds(account) == holds

    # The limit is the key's: another key of the same account still creates.
    other = await predictions.create(account, TEXT, key_id=_key(), max_active=1)
    for prediction in (first, other):
        await predictions.cancel(account, prediction.id)


async def test_cancelling_frees_a_place_at_once(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account()
    key = _key()
    running = [await predictions.create(account, TEXT, key_id=key, max_active=2) for _ in range(2)]
    with pytest.raises(grpc.RpcError) as full:
        await predictions.create(account, TEXT, key_id=key, max_active=2)
    _assert_limited(full.value, 2)
    # A limit lowered below what the key already has refuses as well.
    with pytest.raises(grpc.RpcError) as lowered:
        await predictions.create(account, TEXT, key_id=key, max_active=1)
    _assert_limited(lowered.value, 1)

    await predictions.cancel(account, running[0].id)
    third = await predictions.create(account, TEXT, key_id=key, max_active=2)
    assert third.status == P.PREDICTION_STATUS_PROCESSING
    assert _processing(databases, key) == 2
    for prediction in (running[1], third):
        await predictions.cancel(account, prediction.id)


@pytest.mark.parametrize(
    "finish",
    [
        "status = 'success', predict_time = 1, output_expire_time = now() + interval '1 hour'",
        "status = 'error', message = 'synthesis failed'",
    ],
    ids=["success", "error"],
)
async def test_a_finished_prediction_frees_a_place(
    predictions: Predictions, databases: Databases, finish: str
) -> None:
    account = await predictions.account()
    key = _key()
    done = await predictions.create(account, TEXT, key_id=key, max_active=1)
    # What a worker's finishing statement does to the row (store.py), without a worker.
    query_one(
        databases.owner,
        f"UPDATE predictions.predictions SET {finish}, finish_time = now() "
        "WHERE id = %s RETURNING id",
        done.id,
    )
    assert (await predictions.get(account, done.id)).status != P.PREDICTION_STATUS_PROCESSING
    after = await predictions.create(account, TEXT, key_id=key, max_active=1)
    await predictions.cancel(account, after.id)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"max_active": -1}, "max_active"),
        ({"max_active": 10_001}, "max_active"),
        ({"key_id": ""}, "key_id"),
    ],
)
async def test_a_missing_or_impossible_limit_is_refused(
    predictions: Predictions, changes: dict[str, object], field: str
) -> None:
    account = await predictions.account()
    arguments: dict[str, object] = {"key_id": _key(), "max_active": 10, **changes}
    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(account, TEXT, **arguments)  # type: ignore[arg-type]
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert (reason(refused.value), field_of(refused.value)) == ("FIELD_INVALID", field)
    assert (await predictions.ledger.balance(account)).held == 0


def test_the_count_reads_the_partial_index(
    predictions_service: ServiceProcess, databases: Databases
) -> None:
    with psycopg.connect(databases.owner, autocommit=True) as conn:
        # A test table is too small for the planner to prefer any index: forbid the scan.
        conn.execute("SET enable_seqscan = off")
        plan = conn.execute(
            b"EXPLAIN " + _ACTIVE_FOR_KEY.encode(), {"key_id": "key_test"}
        ).fetchall()
    assert "predictions_processing_by_key" in "\n".join(line for (line,) in plan)
