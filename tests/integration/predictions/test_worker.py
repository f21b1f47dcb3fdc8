"""A worker runs predictions against the real synth and ledger: audio stored and charged once,
cancellation that stops synthesis and refunds, signed webhooks retried until taken, output URLs
read in ranges, and audio deleted after its retention."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from urllib.parse import urlsplit

import grpc
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as L
from kokoropay.predictions.v1 import predictions_pb2 as P
from standardwebhooks import Webhook

from tests.integration.predictions.mesh import (
    RETENTION_SECONDS,
    SIGNER,
    Databases,
    Predictions,
    Receiver,
    WorkerProcess,
    eventually,
    job_status,
    query_one,
    read_request,
    reason,
)

TEXT = "Hello from the queue."
# Long enough to be cancelled while synth still speaks it (several seconds on a CPU).
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it runs across the wide green field "
    "towards the old stone bridge, where the river flows slowly under the warm summer sun."
)

pytestmark = pytest.mark.usefixtures("worker")


@dataclass(frozen=True)
class Succeeded:
    account: str
    prediction: P.Prediction
    credits_before: int


@pytest.fixture(scope="module")
async def succeeded(worker: WorkerProcess, predictions: Predictions) -> Succeeded:
    """One prediction run to success, shared by the tests that read its audio."""
    account = await predictions.account(1000)
    created = await predictions.create(account, TEXT, voice="af_sky", output_format="wav")
    finished = await predictions.finished(account, created.id)
    assert finished.status == P.PREDICTION_STATUS_SUCCESS, finished
    return Succeeded(account, finished, 1000)


async def _capture_entries(predictions: Predictions, account: str) -> list[L.Entry]:
    entries = await predictions.ledger.entries(account)
    return [entry for entry in entries if entry.kind == L.ENTRY_KIND_CAPTURE]


async def test_a_worker_completes_and_captures_exactly_once(
    succeeded: Succeeded, predictions: Predictions
) -> None:
    prediction = succeeded.prediction
    assert prediction.predict_time > 0
    assert prediction.output_url.startswith(
        f"https://api.kokoropay.test/v1/prediction/{prediction.id}/output?"
    )
    assert prediction.HasField("finish_time") and prediction.HasField("output_expire_time")
    expires = prediction.output_expire_time.seconds
    assert abs(expires - (prediction.finish_time.seconds + RETENTION_SECONDS)) <= 2

    async def settled() -> L.GetBalanceResponse | None:
        balance = await predictions.ledger.balance(succeeded.account)
        return balance if balance.held == 0 else None

    balance = await eventually(settled)
    assert balance.balance == succeeded.credits_before - len(TEXT)
    [capture] = await _capture_entries(predictions, succeeded.account)
    assert capture.amount == len(TEXT)

    head, audio = await predictions.read(prediction.output_url)
    assert (head.total_size, head.content_type) == (len(audio), "audio/wav")
    assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
    # 16-bit mono at 24 kHz: a second of speech at least.
    assert len(audio) > 48_000


async def test_output_urls_read_in_ranges(succeeded: Succeeded, predictions: Predictions) -> None:
    url = succeeded.prediction.output_url
    _, whole = await predictions.read(url)
    head, part = await predictions.read(url, offset=100, length=1000)
    assert head.total_size == len(whole) and part == whole[100:1100]
    _, tail = await predictions.read(url, offset=len(whole) - 10)
    assert tail == whole[-10:]
    _, capped = await predictions.read(url, offset=len(whole) - 10, length=500)
    assert capped == whole[-10:]
    with pytest.raises(grpc.RpcError) as beyond:
        await predictions.read(url, offset=len(whole))
    assert beyond.value.code() == grpc.StatusCode.OUT_OF_RANGE
    assert reason(beyond.value) == "RANGE_NOT_SATISFIABLE"
    request = read_request(url)
    tampered = P.ReadOutputRequest(
        prediction_id=request.prediction_id,
        expires=request.expires + 3600,
        signature=request.signature,
    )
    with pytest.raises(grpc.RpcError) as refused:
        [_ async for _ in predictions.stub.ReadOutput(tampered)]
    assert reason(refused.value) == "SIGNATURE_INVALID"


async def test_voices_synth_does_not_know_are_refused(predictions: Predictions) -> None:
    account = await predictions.account(1000)
    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(account, "Who speaks?", voice="af_sky(1)+zz_nobody(1)")
    assert refused.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert reason(refused.value) == "FIELD_INVALID"
    assert (await predictions.ledger.balance(account)).held == 0
    # Aliases and blends of known voices are fine (cancelled: no synthesis needed here).
    created = await predictions.create(account, "Who speaks?", voice="af_bella(2)+af_sky(1)")
    await predictions.cancel(account, created.id)


async def test_a_prediction_a_worker_finishes_frees_its_keys_place(
    predictions: Predictions,
) -> None:
    account = await predictions.account(1000)
    key = f"key_{uuid.uuid4().hex[:12]}"
    first = await predictions.create(account, "Done soon.", key_id=key, max_active=1)
    finished = await predictions.finished(account, first.id)
    assert finished.status == P.PREDICTION_STATUS_SUCCESS, finished
    # The key's one place is free again (cancelled: no second synthesis needed).
    second = await predictions.create(account, "Next.", key_id=key, max_active=1)
    await predictions.cancel(account, second.id)


async def test_cancel_stops_a_running_synthesis_and_refunds(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1000)
    created = await predictions.create(account, LONG_TEXT)

    async def running() -> bool:
        return job_status(databases.owner, created.id) == "doing"

    await eventually(running)
    await asyncio.sleep(0.5)  # synth is speaking
    cancelled = await predictions.cancel(account, created.id)
    assert cancelled.status == P.PREDICTION_STATUS_ERROR and cancelled.message == "cancelled"
    balance = await predictions.ledger.balance(account)
    assert (balance.balance, balance.held) == (1000, 0)

    # The worker is told at once and stops: its job ends aborted within a second or so.
    started = time.monotonic()

    async def stopped() -> bool:
        return job_status(databases.owner, created.id) != "doing"

    await eventually(stopped, timeout=5, interval=0.05)
    assert time.monotonic() - started < 2.0
    await asyncio.sleep(0.5)
    again = await predictions.get(account, created.id)
    assert again.status == P.PREDICTION_STATUS_ERROR and again.message == "cancelled"
    assert (
        query_one(
            databases.owner,
            "SELECT 1 FROM predictions.outputs WHERE prediction_id = %s",
            created.id,
        )
        is None
    )
    assert not await _capture_entries(predictions, account)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    receiver = await Receiver().start()
    yield receiver
    await receiver.stop()


async def _secret(predictions: Predictions, account: str) -> str:
    response = await predictions.operator_stub.GetWebhookSecret(
        P.GetWebhookSecretRequest(account_id=account)
    )
    return str(response.secret)


async def test_webhook_is_signed_and_verifies(predictions: Predictions, receiver: Receiver) -> None:
    account = await predictions.account(1000)
    # By name: resolved once, sent to the address checked, the name kept as the Host.
    url = receiver.url.replace("127.0.0.1", "localhost")
    created = await predictions.create(account, "Call me.", webhook_url=url)
    [received] = await receiver.wait(1)
    assert received.headers["host"] == urlsplit(url).netloc
    finished = await predictions.get(account, created.id)
    assert finished.status == P.PREDICTION_STATUS_SUCCESS
    payload = Webhook(await _secret(predictions, account)).verify(received.body, received.headers)
    assert payload == {
        "exec_id": created.id,
        "status": "succeeded",
        "output": finished.output_url,
        "error": "",
    }
    assert received.headers["webhook-id"] == f"msg_{created.id}"
    assert received.headers["content-type"] == "application/json"
    # Signed with this account's secret, not just any.
    other = await _secret(predictions, await predictions.account())
    with pytest.raises(Exception, match="signature"):
        Webhook(other).verify(received.body, received.headers)


async def test_a_failing_receiver_gets_the_third_try_with_the_same_id(
    predictions: Predictions, receiver: Receiver
) -> None:
    receiver.statuses = [500, 503]
    account = await predictions.account(1000)
    created = await predictions.create(account, "Try, try again.", webhook_url=receiver.url)
    # Cancelled at once: the webhook says so, and no synthesis is needed.
    await predictions.cancel(account, created.id)
    tries = await receiver.wait(3)
    await asyncio.sleep(1.0)
    assert len(receiver.received) == 3, "no try after the one that was taken"
    assert {t.headers["webhook-id"] for t in tries} == {f"msg_{created.id}"}
    payload = Webhook(await _secret(predictions, account)).verify(tries[2].body, tries[2].headers)
    assert payload["status"] == "failed" and payload["output"] == ""
    assert payload["error"].startswith("cancelled")
    assert len({t.body for t in tries}) == 1


async def test_audio_is_deleted_after_its_retention(
    succeeded: Succeeded, predictions: Predictions, databases: Databases
) -> None:
    prediction = succeeded.prediction
    wait = prediction.output_expire_time.seconds + 1 - time.time()
    await asyncio.sleep(max(wait, 0))

    async def gone() -> bool:
        row = query_one(
            databases.owner,
            "SELECT 1 FROM predictions.outputs WHERE prediction_id = %s",
            prediction.id,
        )
        return row is None

    await eventually(gone, timeout=10)
    # A URL still within its own expiry (signed by us) finds the audio gone.
    fresh = read_request(SIGNER.url(prediction.id, int(time.time()) + 3600))
    for request in (read_request(prediction.output_url), fresh):
        with pytest.raises(grpc.RpcError) as expired:
            [_ async for _ in predictions.stub.ReadOutput(request)]
        assert expired.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(expired.value) == "OUTPUT_EXPIRED"
    # The prediction itself stays, and still reads as a success.
    assert (await predictions.get(succeeded.account, prediction.id)).status == (
        P.PREDICTION_STATUS_SUCCESS
    )
