"""The predictions' metrics, scraped from the service's and the workers' own ports: creates and
refusals by reason, each prediction finished once (cancelled by the service; failed or succeeded
by a worker), job times, webhook tries by outcome, and the queue's depth as a worker sees it.

The module has a database of its own, so that no other module's queued jobs reach its workers
and every count is exactly what its tests did. synth is absent (its address answers nothing):
voices go unchecked at create and every run is refused for now, which a worker retries later or,
with one attempt allowed, fails; only the success test waits for the real synth.
"""

from __future__ import annotations

import asyncio
import urllib.request
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import grpc
import pytest

from services.cli.processes import ServiceProcess
from tests.integration.predictions.conftest import (
    NO_SYNTH,
    PREDICTIONS_TLS_DIR,
    new_databases,
    start_worker,
)
from tests.integration.predictions.mesh import (
    FAST_WORKERS,
    PUBLIC_BASE_URL,
    URL_SIGNING_SECRET,
    Databases,
    Predictions,
    Receiver,
    WorkerProcess,
    eventually,
    job_status,
)
from tests.support.ledger import connected_ledger
from tests.support.metrics import Exposition
from tests.support.pki import channel

FINISHED = "kokoropay_predictions_finished_total"
REFUSED = "kokoropay_predictions_refused_total"
WEBHOOKS = "kokoropay_predictions_webhook_attempts_total"
JOBS = "kokoropay_predictions_job_seconds_count"
DEPTH = "kokoropay_predictions_queue_depth"
RUNNABLE = "kokoropay_predictions_runnable_jobs"
# Several seconds of synthesis on a CPU: cancelled while synth still speaks it.
LONG_TEXT = (
    "The quick brown fox jumps over the lazy dog, and then it runs across the wide green field "
    "towards the old stone bridge, where the river flows slowly under the warm summer sun."
)
# Webhooks are tried for this long after the end (3.6 s): long enough for a second try, short
# enough to see one given up.
WEBHOOK_RETRY_HOURS = "0.001"


async def scrape(url: str) -> Exposition:
    def get() -> str:
        with urllib.request.urlopen(url, timeout=5) as reply:
            return str(reply.read().decode())

    return Exposition.parse(await asyncio.to_thread(get))


@pytest.fixture(scope="module")
def own_databases(postgres_url: str) -> Databases:
    """This module's: no other module's queued jobs in it."""
    return new_databases(postgres_url, prefix="predmetrics")


@pytest.fixture(scope="module")
def env(own_databases: Databases, ledger_service: ServiceProcess) -> dict[str, str]:
    databases = own_databases
    return {
        "DATABASE_URL": databases.serving,
        "PREDICTIONS_MIGRATION_DATABASE_URL": databases.owner,
        "PREDICTIONS_LEDGER_ADDRESS": ledger_service.address,
        "PREDICTIONS_SYNTH_ADDRESS": NO_SYNTH,
        "PREDICTIONS_URL_SIGNING_SECRET": URL_SIGNING_SECRET,
        "PREDICTIONS_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS": "true",
        **FAST_WORKERS,
        "PREDICTIONS_WEBHOOK_RETRY_HOURS": WEBHOOK_RETRY_HOURS,
        "PREDICTIONS_TLS_DIR": str(PREDICTIONS_TLS_DIR),
    }


@pytest.fixture(scope="module")
def service(env: dict[str, str], log_dir: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("predictions", env, log_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def predictions(
    service: ServiceProcess, ledger_service: ServiceProcess
) -> AsyncIterator[Predictions]:
    async with (
        connected_ledger(ledger_service.address) as ledger,
        channel(service.address, "gateway") as gateway,
        channel(service.address, "operator") as operator,
    ):
        yield Predictions(gateway, operator, ledger)


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    server = await Receiver().start()
    yield server
    await server.stop()


def worker(env: dict[str, str], log_dir: Path, **settings: str) -> WorkerProcess:
    return start_worker({**env, **settings}, log_dir)


async def test_creates_and_refusals_are_counted_once_by_reason(
    predictions: Predictions, service: ServiceProcess
) -> None:
    rich, poor = await predictions.account(1000), await predictions.account(3)
    before = await scrape(service.metrics_url)
    created = await predictions.create(rich, "Counted once.", key_id="key_limited", max_active=1)
    refusals = [
        # The key's one place is taken.
        predictions.create(rich, "Too many.", key_id="key_limited", max_active=1),
        predictions.create(poor, "Too dear for three credits."),
        predictions.create(rich, "Too fast.", speed=99.0),
        predictions.create(rich, "Nowhere to go.", webhook_url="ftp://example.test/hook"),
    ]
    for refusal in refusals:
        with pytest.raises(grpc.RpcError):
            await refusal
    # Cancelled twice: finished once.
    await predictions.cancel(rich, created.id)
    await predictions.cancel(rich, created.id)
    after = await scrape(service.metrics_url)

    assert after.delta(before, "kokoropay_predictions_created_total") == 1
    assert after.delta(before, REFUSED, reason="concurrency_limited") == 1
    assert after.delta(before, REFUSED, reason="insufficient_credits") == 1
    assert after.delta(before, REFUSED, reason="invalid") == 2
    assert after.delta(before, FINISHED, status="cancelled") == 1
    assert after.delta(before, FINISHED) == 1
    text = await asyncio.to_thread(lambda: urllib.request.urlopen(service.metrics_url).read())
    for secret in (rich, poor, created.id, "key_limited", "Counted once", "example.test"):
        assert secret.encode() not in text


async def test_the_queue_depth_is_what_waits_for_a_worker(
    predictions: Predictions, service: ServiceProcess, env: dict[str, str], log_dir: Path
) -> None:
    account = await predictions.account(1000)
    queued = [await predictions.create(account, f"Waiting {n}.") for n in range(3)]
    # Each run is refused for now (no synth) and put back for ten minutes: queued, not running.
    waiting = worker(
        env,
        log_dir,
        PREDICTIONS_MAX_ATTEMPTS="3",
        PREDICTIONS_RETRY_BASE_SECONDS="600",
        PREDICTIONS_RETRY_MAX_DELAY_SECONDS="600",
    )
    try:

        async def depth(expected: float) -> bool:
            return (await scrape(waiting.metrics_url)).total(DEPTH) == expected

        async def waiting_out_their_backoff() -> bool:
            # Queued, but asking for no worker: what the workers' autoscaler reads.
            latest = await scrape(waiting.metrics_url)
            return latest.total(DEPTH) == 3 and latest.total(RUNNABLE) == 0

        await eventually(waiting_out_their_backoff)
        before = await scrape(service.metrics_url)
        for prediction in queued:
            await predictions.cancel(account, prediction.id)
        await eventually(lambda: depth(0))
        after = await scrape(service.metrics_url)
        assert after.delta(before, FINISHED, status="cancelled") == 3
        # Runs that finished nothing are not timed; the worker finished none.
        worker_metrics = await scrape(waiting.metrics_url)
        assert worker_metrics.total(JOBS) == 0
        assert worker_metrics.total(FINISHED) == 0
    finally:
        waiting.stop()


async def test_failures_and_webhook_tries_are_counted_by_the_worker(
    predictions: Predictions, env: dict[str, str], log_dir: Path, receiver: Receiver
) -> None:
    # The first receiver takes the second try; the other never answers 2xx.
    receiver.statuses = [500] + [200] * 10
    refusing = await Receiver(statuses=[500] * 100).start()
    account = await predictions.account(1000)
    taken = await predictions.create(account, "Told at last.", webhook_url=receiver.url)
    ignored = await predictions.create(account, "Never heard.", webhook_url=refusing.url)
    failing = worker(env, log_dir, PREDICTIONS_MAX_ATTEMPTS="1")
    try:
        for prediction in (taken, ignored):
            await predictions.finished(account, prediction.id)

        async def given_up() -> Exposition | None:
            latest = await scrape(failing.metrics_url)
            return latest if latest.total(WEBHOOKS, outcome="gave_up") == 1 else None

        after = await eventually(given_up, timeout=30)
        await receiver.wait(2)
    finally:
        failing.stop()
        await refusing.stop()

    assert after.total(FINISHED, status="failed") == 2
    assert after.total(FINISHED) == 2
    assert after.total(JOBS, status="failed") == 2
    assert after.total("kokoropay_predictions_job_seconds_sum", status="failed") > 0
    assert after.total(WEBHOOKS, outcome="delivered") == 1
    assert after.total(WEBHOOKS, outcome="refused") == 0
    # Every try, once: the first receiver's two, and each of the other's.
    tries = len(receiver.received) + len(refusing.received)
    assert after.total(WEBHOOKS) == tries
    assert after.total(WEBHOOKS, outcome="failed") == tries - 2


async def test_a_success_and_a_cancelled_run_are_timed_by_the_worker(
    predictions: Predictions,
    service: ServiceProcess,
    own_databases: Databases,
    env: dict[str, str],
    log_dir: Path,
    synth: str,
) -> None:
    speaking = worker(env, log_dir, PREDICTIONS_SYNTH_ADDRESS=synth)
    try:
        account = await predictions.account(1000)
        created = await predictions.create(account, "Hello.", voice="af_sky")
        finished = await predictions.finished(account, created.id)

        async def settled() -> Exposition | None:
            # The run ends (and is timed) once it has settled, just after the row finished.
            latest = await scrape(speaking.metrics_url)
            return latest if latest.total(JOBS, status="succeeded") == 1 else None

        succeeded = await eventually(settled)

        # Cancelled while synth speaks it: the service finishes it, the worker times its run.
        before = await scrape(service.metrics_url)
        long = await predictions.create(account, LONG_TEXT, voice="af_sky")

        async def running() -> bool:
            return job_status(own_databases.owner, long.id) == "doing"

        await eventually(running)
        await asyncio.sleep(0.5)
        await predictions.cancel(account, long.id)

        async def timed() -> Exposition | None:
            latest = await scrape(speaking.metrics_url)
            return latest if latest.total(JOBS, status="cancelled") == 1 else None

        after = await eventually(timed)
        cancelled = await scrape(service.metrics_url)
    finally:
        speaking.stop()
    assert finished.predict_time > 0
    assert succeeded.total(FINISHED, status="succeeded") == 1
    assert succeeded.total(FINISHED) == 1
    assert succeeded.total(JOBS, status="succeeded") == 1
    assert succeeded.total("kokoropay_predictions_job_seconds_sum", status="succeeded") > 0
    assert cancelled.delta(before, FINISHED, status="cancelled") == 1
    assert after.total(FINISHED) == 1  # the worker finished only the success
    assert after.total(JOBS) == 2
