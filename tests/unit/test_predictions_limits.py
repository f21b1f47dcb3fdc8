"""CreatePrediction under its key's `max_active`, without a database: the limit checked before
anything is reserved, the refusal's status and ErrorInfo, a hold released when the write fails,
and the per-key turns that keep one key's creates in one line per process. (That the count is
exact when creates race is the integration tests' to show, on a real PostgreSQL.)"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any, cast

import grpc
import pytest
from kokoropay.ledger.v1 import ledger_pb2
from kokoropay.predictions.v1 import predictions_pb2

from services.predictions import validation
from services.predictions.servicer import ERRORS, ConcurrencyLimited, PredictionServicer
from services.predictions.settings import PredictionsSettings
from services.predictions.signing import UrlSigner
from services.predictions.store import KeyTurns, NewPrediction, Prediction
from services.predictions.validation import FieldInvalid


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://predictions@db/predictions")
    monkeypatch.delenv("PREDICTIONS_CONCURRENCY_RETRY_AFTER_SECONDS", raising=False)


class FakeTurn:
    def __init__(self, active: int, fail: bool) -> None:
        self.active = active
        self._fail = fail
        self.written: list[NewPrediction] = []

    async def create(self, new: NewPrediction) -> Prediction:
        if self._fail:
            raise RuntimeError("the insert failed")
        self.written.append(new)
        return Prediction(
            **{name: getattr(new, name) for name in NewPrediction.__dataclass_fields__},
            status="processing",
            characters=len(new.text),
            job_id=1,
            message=None,
            details=None,
            predict_time=None,
            create_time=datetime.now(UTC),
            finish_time=None,
            output_expire_time=None,
            settle_time=None,
        )


class FakeStore:
    def __init__(self, active: int, fail: bool = False) -> None:
        self.turn = FakeTurn(active, fail)
        self.keys: list[str] = []

    @asynccontextmanager
    async def creating(self, key_id: str) -> AsyncIterator[FakeTurn]:
        self.keys.append(key_id)
        yield self.turn


class FakeLedger:
    def __init__(self) -> None:
        self.reserved: list[ledger_pb2.ReserveRequest] = []
        self.released: list[str] = []

    async def Reserve(
        self, request: ledger_pb2.ReserveRequest, timeout: float
    ) -> ledger_pb2.ReserveResponse:
        self.reserved.append(request)
        return ledger_pb2.ReserveResponse(hold=ledger_pb2.Hold(id="hold_1"))

    async def Release(
        self, request: ledger_pb2.ReleaseRequest, timeout: float
    ) -> ledger_pb2.ReleaseResponse:
        self.released.append(request.hold_id)
        return ledger_pb2.ReleaseResponse()


class AnyVoice:
    async def problem(self, expression: str) -> str | None:
        return None


def _settings(**values: Any) -> PredictionsSettings:
    """Settings as the service reads them; DATABASE_URL comes from the environment."""
    return PredictionsSettings(**values)


def _servicer(store: FakeStore, ledger: FakeLedger, **settings: Any) -> PredictionServicer:
    return PredictionServicer(
        cast(Any, store),
        cast(Any, None),
        cast(Any, SimpleNamespace(ledger=ledger)),
        cast(Any, AnyVoice()),
        UrlSigner("unit-test-secret", "https://api.kokoropay.test"),
        _settings(**settings),
    )


def _request(max_active: int, key_id: str = "key_a") -> predictions_pb2.CreatePredictionRequest:
    return predictions_pb2.CreatePredictionRequest(
        account_id="acct_1",
        key_id=key_id,
        input=predictions_pb2.PredictionInput(text="Hello."),
        max_active=max_active,
    )


async def test_at_the_limit_nothing_is_reserved_and_the_refusal_says_when_to_retry() -> None:
    store, ledger = FakeStore(active=3), FakeLedger()
    servicer = _servicer(store, ledger, concurrency_retry_after_seconds=7)

    with pytest.raises(ConcurrencyLimited) as refused:
        await servicer.CreatePrediction(_request(3), cast(Any, None))

    assert store.keys == ["key_a"]
    assert not ledger.reserved and not store.turn.written
    assert ERRORS.status_of(refused.value) == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert refused.value.reason == "CONCURRENCY_LIMITED"
    assert refused.value.metadata == {"limit": "3", "retry_after_seconds": "7"}


async def test_under_the_limit_it_reserves_then_writes_in_the_keys_turn() -> None:
    store, ledger = FakeStore(active=2), FakeLedger()

    created = await _servicer(store, ledger).CreatePrediction(_request(3), cast(Any, None))

    assert created.status == predictions_pb2.PREDICTION_STATUS_PROCESSING
    [reserve] = ledger.reserved
    assert (reserve.amount, reserve.labels.key_id) == (len("Hello."), "key_a")
    [written] = store.turn.written
    assert (written.key_id, written.hold_id) == ("key_a", "hold_1")
    assert not ledger.released


async def test_a_failed_write_gives_the_credits_back_at_once() -> None:
    store, ledger = FakeStore(active=0, fail=True), FakeLedger()

    with pytest.raises(RuntimeError):
        await _servicer(store, ledger).CreatePrediction(_request(1), cast(Any, None))

    assert ledger.released == ["hold_1"]


@pytest.mark.parametrize("value", [-1, 10_001])
def test_max_active_outside_1_to_10000_is_refused(value: int) -> None:
    with pytest.raises(FieldInvalid) as refused:
        validation.max_active(value)
    assert refused.value.metadata == {"field": "max_active"}


def test_max_active_bounds_are_accepted() -> None:
    assert validation.max_active(1) == 1
    assert validation.max_active(10_000) == 10_000


def test_no_max_active_from_an_older_gateway_is_the_listings_ten_not_unlimited() -> None:
    # A rollout runs old gateways beside new services: their creates must keep working, limited.
    assert validation.max_active(0) == validation.LISTING_MAX_ACTIVE == 10


def test_a_key_is_required_to_count_against() -> None:
    with pytest.raises(FieldInvalid) as refused:
        validation.key_id("")
    assert refused.value.metadata == {"field": "key_id"}


def test_retry_after_defaults_to_a_second_and_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert _settings().concurrency_retry_after_seconds == 1
    monkeypatch.setenv("PREDICTIONS_CONCURRENCY_RETRY_AFTER_SECONDS", "5")
    assert _settings().concurrency_retry_after_seconds == 5
    monkeypatch.setenv("PREDICTIONS_CONCURRENCY_RETRY_AFTER_SECONDS", "0")
    with pytest.raises(ValueError, match="concurrency_retry_after_seconds"):
        _settings()


async def test_one_keys_turns_come_one_at_a_time_and_are_forgotten_after() -> None:
    turns = KeyTurns()
    inside: dict[str, int] = {"a": 0, "b": 0}
    most: dict[str, int] = {"a": 0, "b": 0}

    async def take(key: str) -> None:
        async with turns.turn(key):
            inside[key] += 1
            most[key] = max(most[key], inside[key])
            await asyncio.sleep(0.001)
            inside[key] -= 1

    await asyncio.gather(*(take(key) for key in "ab" * 5))

    assert most == {"a": 1, "b": 1}
    assert len(turns) == 0


async def test_a_cancelled_wait_for_a_turn_is_forgotten_too() -> None:
    turns = KeyTurns()
    release = asyncio.Event()

    async def hold() -> None:
        async with turns.turn("a"):
            await release.wait()

    holder = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter = asyncio.create_task(hold())
    await asyncio.sleep(0)
    waiter.cancel()
    with pytest.raises(asyncio.CancelledError):
        await waiter
    release.set()
    await holder
    assert len(turns) == 0
