"""A worker killed outright (SIGKILL) in the middle of a synthesis: its job is handed back by
another worker once the dead one stops beating, run to success there, and charged once."""

from __future__ import annotations

import asyncio
from pathlib import Path

from kokoropay.ledger.v1 import ledger_pb2 as L
from kokoropay.predictions.v1 import predictions_pb2 as P

from services.cli.processes import ServiceProcess
from tests.integration.predictions.conftest import start_worker
from tests.integration.predictions.mesh import (
    Databases,
    Predictions,
    eventually,
    job_status,
    query_one,
)

# Several seconds of synthesis on a CPU: the kill lands while synth is still speaking.
TEXT = (
    "A worker that dies in the middle of a job must not lose it, and must not make anyone pay "
    "twice: another worker picks the job up again and finishes what the first one started."
)


async def test_a_killed_workers_job_is_finished_by_another_and_charged_once(
    predictions: Predictions,
    predictions_env: dict[str, str],
    predictions_service: ServiceProcess,
    databases: Databases,
    synth: str,
    log_dir: Path,
) -> None:
    first = start_worker(predictions_env, log_dir)
    account = await predictions.account(1000)
    created = await predictions.create(account, TEXT, output_format="mp3")

    async def running() -> bool:
        return job_status(databases.owner, created.id) == "doing"

    await eventually(running)
    await asyncio.sleep(1.0)
    first.kill()
    assert (await predictions.get(account, created.id)).status == P.PREDICTION_STATUS_PROCESSING
    # Nothing charged for audio nobody got: the hold still holds the whole price, nothing more.
    balance = await predictions.ledger.balance(account)
    assert (balance.balance, balance.held) == (1000 - len(TEXT), len(TEXT))

    second = start_worker(predictions_env, log_dir)
    try:
        finished = await predictions.finished(account, created.id, timeout=60)
        assert finished.status == P.PREDICTION_STATUS_SUCCESS, finished

        async def settled() -> L.GetBalanceResponse | None:
            balance = await predictions.ledger.balance(account)
            return balance if balance.held == 0 else None

        balance = await eventually(settled)
        assert balance.balance == 1000 - len(TEXT)
        entries = await predictions.ledger.entries(account)
        captures = [e for e in entries if e.kind == L.ENTRY_KIND_CAPTURE]
        assert [e.amount for e in captures] == [len(TEXT)]
        assert not [e for e in entries if e.kind in (L.ENTRY_KIND_RELEASE, L.ENTRY_KIND_EXPIRE)]
        head, audio = await predictions.read(finished.output_url)
        assert head.content_type == "audio/mpeg" and len(audio) == head.total_size > 0
        # The second worker ran the job the first had started: handed back, not re-created.
        assert created.id in first.logs()
        assert "handed back to the queue" in second.logs()
        assert created.id in second.logs()
        row = query_one(
            databases.owner,
            "SELECT count(*) FROM predictions.procrastinate_jobs WHERE args->>'prediction_id' = %s"
            " AND task_name = 'predict'",
            created.id,
        )
        assert row is not None and row[0] == 0  # done, and deleted as done jobs are
    finally:
        second.stop()


async def test_a_stopping_worker_hands_its_running_job_back(
    predictions: Predictions,
    predictions_env: dict[str, str],
    predictions_service: ServiceProcess,
    databases: Databases,
    synth: str,
    log_dir: Path,
) -> None:
    """SIGTERM (a rollout): running jobs get PREDICTIONS_WORKER_GRACE_SECONDS (2 s here), then
    go back to the queue at once, without waiting to be found stalled."""
    first = start_worker(predictions_env, log_dir)
    account = await predictions.account(1000)
    created = await predictions.create(account, TEXT)

    async def running() -> bool:
        return job_status(databases.owner, created.id) == "doing"

    await eventually(running)
    first.terminate()
    assert first.process is not None and first.process.wait(timeout=15) == 0
    assert job_status(databases.owner, created.id) == "todo"
    assert (await predictions.get(account, created.id)).status == P.PREDICTION_STATUS_PROCESSING

    second = start_worker(predictions_env, log_dir)
    try:
        finished = await predictions.finished(account, created.id, timeout=60)
        assert finished.status == P.PREDICTION_STATUS_SUCCESS, finished

        async def settled() -> L.GetBalanceResponse | None:
            balance = await predictions.ledger.balance(account)
            return balance if balance.held == 0 else None

        assert (await eventually(settled)).balance == 1000 - len(TEXT)
        captures = [
            e for e in await predictions.ledger.entries(account) if e.kind == L.ENTRY_KIND_CAPTURE
        ]
        assert [e.amount for e in captures] == [len(TEXT)]
    finally:
        second.stop()
