"""Creating, reading, listing and cancelling predictions, with no worker running: what the
service itself promises (the credits held at once, accounts kept apart, bad input refused
before anything is held, webhook URLs checked where they point)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from kokoropay.ledger.v1 import ledger_pb2 as L
from kokoropay.predictions.v1 import predictions_pb2 as P
from standardwebhooks import Webhook

from services.cli.processes import ServiceProcess
from services.common.ids import is_id
from tests.integration.predictions.mesh import (
    SIGNER,
    Databases,
    Predictions,
    field_of,
    job_status,
    query_one,
    read_request,
    reason,
)
from tests.support.pki import channel

INVALID = grpc.StatusCode.INVALID_ARGUMENT


async def test_create_reserves_len_text_and_queues_the_job(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account(1000)
    text = "Grüße, ça va? 🎉"  # 15 code points in 21 bytes: credits count code points
    created = await predictions.create(account, text, voice="af_sky", output_format="wav")

    assert is_id("pred", created.id)
    assert created.status == P.PREDICTION_STATUS_PROCESSING
    assert (created.input.text, created.input.voice) == (text, "af_sky")
    assert (created.input.speed, created.input.output_format) == (1.0, "wav")
    assert not created.output_url and not created.HasField("finish_time")
    [hold] = await predictions.ledger.holds(account)
    assert hold.amount == len(text) == 15
    assert hold.state == L.HOLD_STATE_HELD
    assert hold.idempotency_key == f"prediction:{created.id}"
    assert (hold.labels.key_id, hold.labels.voice) == ("key_test", "af_sky")
    assert (hold.labels.response_format, hold.labels.model) == ("wav", "kokoro-82m")
    balance = await predictions.ledger.balance(account)
    assert (balance.balance, balance.held) == (1000 - 15, 15)
    assert job_status(databases.owner, created.id) == "todo"
    assert await predictions.get(account, created.id) == created

    # Cancelled while queued: refunded, and the job never runs.
    cancelled = await predictions.cancel(account, created.id)
    assert cancelled.status == P.PREDICTION_STATUS_ERROR
    assert cancelled.message == "cancelled" and cancelled.HasField("finish_time")
    balance = await predictions.ledger.balance(account)
    assert (balance.balance, balance.held) == (1000, 0)
    [hold] = await predictions.ledger.holds(account)
    assert hold.state == L.HOLD_STATE_RELEASED
    assert job_status(databases.owner, created.id) == "cancelled"
    # A finished prediction is answered as it is.
    assert await predictions.cancel(account, created.id) == cancelled


async def test_insufficient_credits_hold_and_write_nothing(predictions: Predictions) -> None:
    account = await predictions.account(5)
    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(account, "six!!!")
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert reason(refused.value) == "INSUFFICIENT_CREDITS"
    assert (await predictions.ledger.balance(account)).balance == 5
    listed = await predictions.stub.ListPredictions(P.ListPredictionsRequest(account_id=account))
    assert not listed.predictions
    # An account the ledger never opened has nothing to spend either.
    with pytest.raises(grpc.RpcError) as unknown:
        await predictions.create("acct_never_opened", "hello")
    assert reason(unknown.value) == "INSUFFICIENT_CREDITS"


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"text": ""}, "input.text"),
        ({"text": "x" * 4097}, "input.text"),
        ({"speed": 5.5}, "input.speed"),
        ({"speed": 0.25}, "input.speed"),
        ({"output_format": "ogg"}, "input.output_format"),
        ({"voice": "af_bella(2"}, "input.voice"),
        ({"webhook_url": "ftp://example.com/hook"}, "webhook_url"),
        ({"webhook_url": "https://example.com/" + "x" * 2048}, "webhook_url"),
    ],
)
async def test_bad_input_is_refused_before_anything_is_held(
    predictions: Predictions, changes: dict[str, object], field: str
) -> None:
    account = await predictions.account(10_000)
    arguments: dict[str, object] = {"text": "Hello there.", **changes}
    text = str(arguments.pop("text"))
    with pytest.raises(grpc.RpcError) as refused:
        await predictions.create(account, text, **arguments)  # type: ignore[arg-type]
    assert refused.value.code() == INVALID
    assert field_of(refused.value) == field
    assert (await predictions.ledger.balance(account)).held == 0


async def test_other_accounts_predictions_are_not_found(predictions: Predictions) -> None:
    owner, other = await predictions.account(), await predictions.account()
    created = await predictions.create(owner, "Mine alone.")
    for call in (predictions.get, predictions.cancel):
        with pytest.raises(grpc.RpcError) as hidden:
            await call(other, created.id)
        assert hidden.value.code() == grpc.StatusCode.NOT_FOUND
        assert reason(hidden.value) == "PREDICTION_NOT_FOUND"
    with pytest.raises(grpc.RpcError) as unknown:
        await predictions.get(owner, "pred_not-an-id")
    assert reason(unknown.value) == "PREDICTION_NOT_FOUND"
    listed = await predictions.stub.ListPredictions(P.ListPredictionsRequest(account_id=other))
    assert not listed.predictions
    # Still the owner's, and still processing after the other account's cancel.
    assert (await predictions.get(owner, created.id)).status == P.PREDICTION_STATUS_PROCESSING
    await predictions.cancel(owner, created.id)


async def test_list_is_newest_first_in_pages(predictions: Predictions) -> None:
    account = await predictions.account()
    created = [(await predictions.create(account, f"Number {n}.")).id for n in range(5)]
    seen: list[str] = []
    token = ""
    while True:
        page = await predictions.stub.ListPredictions(
            P.ListPredictionsRequest(account_id=account, page_size=2, page_token=token)
        )
        assert len(page.predictions) <= 2
        seen += [prediction.id for prediction in page.predictions]
        token = page.next_page_token
        if not token:
            break
    assert seen == created[::-1]
    other = await predictions.account()
    with pytest.raises(grpc.RpcError) as forged:
        await predictions.stub.ListPredictions(
            P.ListPredictionsRequest(account_id=other, page_token=token or "bm90LWEtdG9rZW4")
        )
    assert forged.value.code() == INVALID and field_of(forged.value) == "page_token"
    for prediction_id in created:
        await predictions.cancel(account, prediction_id)


async def test_webhook_secret_is_made_once_and_rotated(predictions: Predictions) -> None:
    account = await predictions.account()
    request = P.GetWebhookSecretRequest(account_id=account)
    first = await predictions.operator_stub.GetWebhookSecret(request)
    assert first.secret.startswith("whsec_")
    Webhook(first.secret)  # what Standard Webhooks libraries take
    assert await predictions.operator_stub.GetWebhookSecret(request) == first
    rotated = await predictions.operator_stub.RotateWebhookSecret(
        P.RotateWebhookSecretRequest(account_id=account)
    )
    assert rotated.secret != first.secret
    assert await predictions.operator_stub.GetWebhookSecret(request) == rotated
    # The gateway may not read secrets.
    with pytest.raises(grpc.RpcError) as denied:
        await predictions.stub.GetWebhookSecret(request)
    assert denied.value.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_output_urls_are_checked_before_anything_is_read(
    predictions: Predictions, databases: Databases
) -> None:
    account = await predictions.account()
    created = await predictions.create(account, "Not yet spoken.")
    url = SIGNER.url(created.id, 4_000_000_000)
    request = read_request(url)
    # A signature of another key, another id, another expiry: refused alike.
    for forged in (
        P.ReadOutputRequest(prediction_id=created.id, expires=request.expires, signature="A" * 43),
        P.ReadOutputRequest(
            prediction_id=created.id, expires=request.expires + 1, signature=request.signature
        ),
        P.ReadOutputRequest(
            prediction_id="pred_01J0000000000000000000000A",
            expires=request.expires,
            signature=request.signature,
        ),
    ):
        with pytest.raises(grpc.RpcError) as refused:
            [_ async for _ in predictions.stub.ReadOutput(forged)]
        assert refused.value.code() == grpc.StatusCode.PERMISSION_DENIED
        assert reason(refused.value) == "SIGNATURE_INVALID"
    # A good signature for a prediction without audio: not found.
    with pytest.raises(grpc.RpcError) as missing:
        [_ async for _ in predictions.stub.ReadOutput(request)]
    assert reason(missing.value) == "PREDICTION_NOT_FOUND"
    # Past its expiry, a good signature opens nothing.
    stale = read_request(SIGNER.url(created.id, 1_000_000_000))
    with pytest.raises(grpc.RpcError) as expired:
        [_ async for _ in predictions.stub.ReadOutput(stale)]
    assert expired.value.code() == grpc.StatusCode.NOT_FOUND
    assert reason(expired.value) == "OUTPUT_EXPIRED"
    await predictions.cancel(account, created.id)
    assert query_one(databases.owner, "SELECT 1 FROM predictions.outputs") is None


@pytest.fixture(scope="module")
def strict_service(predictions_env: dict[str, str], log_dir: Path) -> Iterator[ServiceProcess]:
    """A predictions service as deployed: private webhook addresses refused."""
    env = {**predictions_env, "PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS": "false"}
    process = ServiceProcess("predictions", env, log_dir).start()
    yield process
    process.stop()


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1:8080/hook",
        "http://localhost/hook",
        "https://10.1.2.3/hook",
        "http://169.254.169.254/latest/meta-data",
        "http://[::1]/hook",
        "http://[::ffff:127.0.0.1]/hook",
        "http://0.0.0.0/hook",
    ],
)
async def test_webhooks_to_private_addresses_are_refused(
    strict_service: ServiceProcess, predictions: Predictions, url: str
) -> None:
    account = await predictions.account()
    async with channel(strict_service.address, "gateway") as gateway:
        strict = Predictions(gateway, gateway, predictions.ledger)
        with pytest.raises(grpc.RpcError) as refused:
            await strict.create(account, "Call me back.", webhook_url=url)
    assert refused.value.code() == INVALID
    assert reason(refused.value) == "WEBHOOK_URL_REFUSED"
    assert field_of(refused.value) == "webhook_url"
    assert (await predictions.ledger.balance(account)).held == 0
