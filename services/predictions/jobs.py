"""The durable queue, as the workers run it: procrastinate's app, the two tasks, how each is
retried, and the workers' periodic maintenance (docs/decisions/0013).

Jobs are rows of `predictions.procrastinate_jobs`, written by store.py in the same transactions
as the predictions they concern, and taken by workers with `SELECT … FOR UPDATE SKIP LOCKED`;
a NOTIFY tells idle workers at once, a poll catches the rest. They survive the restart of any
process: a job is done only when its worker says so.

- `predict` (queue "predictions"): runner.PredictionRunner.run. Run again after a backoff when
  it raises (RetryLater, or anything unexpected) or when its worker stops before it ends; the
  run after PREDICTIONS_MAX_ATTEMPTS fails the prediction, refunded. An aborted job (the
  prediction was cancelled) is not run again.
- `deliver_webhook` (queue "webhooks"): webhooks.WebhookDeliverer.deliver. Run again with
  exponential backoff and jitter until the deadline it was queued with (the prediction's end
  plus PREDICTIONS_WEBHOOK_RETRY_HOURS), then given up (logged).

A worker killed outright (SIGKILL, a lost node) leaves its job in "doing". Every worker beats
(procrastinate's heartbeat) every PREDICTIONS_WORKER_HEARTBEAT_SECONDS; every
PREDICTIONS_MAINTENANCE_INTERVAL_SECONDS each worker hands the jobs of workers silent for
PREDICTIONS_STALLED_WORKER_SECONDS back to the queue, where another worker runs them. The same
maintenance deletes audio past its retention and idempotency keys past their 24 hours, settles
holds that finished predictions left unsettled, and counts the jobs waiting for a worker (the
queue depth gauge). All of it is safe with any number of workers running it at once.

Metrics (metrics.py): a run that finishes its prediction is timed by status (a cancelled one
when its abort cuts it); a webhook try that did not deliver is counted by the retry strategy,
which alone knows whether it was the last.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta

from procrastinate import App, BaseRetryStrategy, JobContext, PsycopgConnector, RetryDecision
from procrastinate.app import WorkerOptions
from procrastinate.job_context import AbortReason
from procrastinate.jobs import Job

from services.common import tracing
from services.common.logs import request_id_var
from services.predictions import metrics
from services.predictions.outputs import OutputStorage
from services.predictions.runner import PredictionRunner
from services.predictions.settings import PredictionsSettings
from services.predictions.store import (
    PREDICT_QUEUE,
    PREDICT_TASK,
    WEBHOOK_QUEUE,
    WEBHOOK_TASK,
    PredictionStore,
    serving_url,
)
from services.predictions.webhooks import WebhookDeliverer, retry_delay

QUEUES = (PREDICT_QUEUE, WEBHOOK_QUEUE)
# Per maintenance pass: outputs deleted per statement, unsettled predictions settled.
SWEEP_BATCH = 500
SETTLE_BATCH = 100
# Old finished jobs are looked for at most this often (the query reads the jobs' events).
OLD_JOBS_EVERY_SECONDS = 3600.0

_log = logging.getLogger("predictions.jobs")


async def _sweep(delete: Callable[[int], Awaitable[int]], what: str) -> int:
    """Delete `what` a batch of SWEEP_BATCH at a time (one short statement each, so no sweep
    holds many rows' locks at once) until a batch comes back short; how many went."""
    total = 0
    while (deleted := await delete(SWEEP_BATCH)) > 0:
        total += deleted
        if deleted < SWEEP_BATCH:
            break
    if total:
        _log.info("deleted %d %s", total, what, extra={"deleted": total})
    return total


class RunAgain(BaseRetryStrategy):
    """Always run again, after an exponential backoff with jitter: the task itself decides
    when to stop trying (runner.py, PREDICTIONS_MAX_ATTEMPTS). A job its worker stopped before
    it ended (SHUTDOWN) comes here too; a cancelled prediction's aborted job does not come back
    (procrastinate fails a job whose abort was requested)."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        delay = retry_delay(job.attempts, self._base, self._cap)
        return RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=delay))


class RetryWebhookUntil(BaseRetryStrategy):
    """Backoff with jitter while the job's `deadline` (unix seconds, in its arguments) allows."""

    def __init__(self, base: float, cap: float) -> None:
        self._base = base
        self._cap = cap

    def get_retry_decision(self, *, exception: BaseException, job: Job) -> RetryDecision | None:
        """Asked once per try that did not deliver: the try is counted here, as `failed` (to be
        tried again) or `gave_up` (the last)."""
        delay = retry_delay(job.attempts, self._base, self._cap)
        deadline = job.task_kwargs.get("deadline")
        if not isinstance(deadline, int | float):
            deadline = 0.0
        if time.time() + delay > deadline:
            metrics.count_webhook_attempt("gave_up")
            _log.warning(
                "webhook given up after %d tries: %s",
                job.attempts + 1,
                exception,
                extra={"prediction_id": job.task_kwargs.get("prediction_id")},
            )
            return None
        metrics.count_webhook_attempt("failed")
        return RetryDecision(retry_at=datetime.now(UTC) + timedelta(seconds=delay))


def build_app(
    runner: PredictionRunner, deliverer: WebhookDeliverer, settings: PredictionsSettings
) -> App:
    """The queue's app with its two tasks, on a pool of its own (as the serving role, with the
    store's search_path), opened by `App.open_async`. The store's statements and the queue's
    never wait for each other's connections."""
    connector = PsycopgConnector(
        conninfo=serving_url(settings.database_url),
        min_size=1,
        # A fetch, a heartbeat, an abort poll and each running job's finish at once.
        max_size=settings.worker_concurrency + 3,
        timeout=settings.pool_timeout_seconds,
        kwargs={"application_name": "kokoropay-predictions-queue"},
    )
    app = App(connector=connector)

    @app.task(
        name=PREDICT_TASK,
        queue=PREDICT_QUEUE,
        pass_context=True,
        retry=RunAgain(settings.retry_base_seconds, settings.retry_max_delay_seconds),
    )
    async def predict(context: JobContext, prediction_id: str) -> None:
        # The prediction id is the request id of everything the run logs and calls; the run is
        # a trace of its own while traces are on.
        token = request_id_var.set(prediction_id)
        started = time.monotonic()
        try:
            with tracing.span("run prediction", {"kokoropay.prediction_id": prediction_id}):
                finished = await runner.run(prediction_id, context.job.attempts)
        except asyncio.CancelledError:
            # Aborted because its customer cancelled it (the service finished it), rather than
            # handed back by a worker shutting down.
            if context.abort_reason() is AbortReason.USER_REQUEST:
                metrics.observe_job("cancelled", time.monotonic() - started)
            raise
        finally:
            request_id_var.reset(token)
        if finished is not None:
            metrics.observe_job(finished, time.monotonic() - started)

    @app.task(
        name=WEBHOOK_TASK,
        queue=WEBHOOK_QUEUE,
        pass_context=True,
        retry=RetryWebhookUntil(
            settings.webhook_retry_base_seconds, settings.webhook_retry_max_delay_seconds
        ),
    )
    async def deliver_webhook(context: JobContext, prediction_id: str, deadline: float) -> None:
        token = request_id_var.set(prediction_id)
        try:
            await deliverer.deliver(prediction_id, context.job.attempts)
        finally:
            request_id_var.reset(token)

    return app


def worker_options(settings: PredictionsSettings) -> WorkerOptions:
    """How a worker runs the queue (App.run_worker_async's options)."""
    return {
        "queues": list(QUEUES),
        "concurrency": settings.worker_concurrency,
        "fetch_job_polling_interval": settings.fetch_poll_seconds,
        "abort_job_polling_interval": settings.abort_poll_seconds,
        "update_heartbeat_interval": settings.worker_heartbeat_seconds,
        "stalled_worker_timeout": settings.stalled_worker_seconds,
        "shutdown_graceful_timeout": settings.worker_grace_seconds,
        # Done jobs go; failed ones stay for an operator to read.
        "delete_jobs": "successful",
        # Signals are the worker process's (worker.py), which stops the app itself.
        "install_signal_handlers": False,
    }


class Maintenance:
    """Every `interval` seconds: run again the jobs of dead workers, delete expired audio,
    settle what finished predictions left unsettled."""

    def __init__(
        self,
        app: App,
        store: PredictionStore,
        outputs: OutputStorage,
        runner: PredictionRunner,
        settings: PredictionsSettings,
    ) -> None:
        self._app = app
        self._store = store
        self._outputs = outputs
        self._runner = runner
        self._interval = settings.maintenance_interval_seconds
        self._stalled_seconds = settings.stalled_worker_seconds
        self._settle_grace = settings.settle_grace_seconds
        self._job_retention_hours = settings.finished_job_retention_hours
        self._old_jobs_due = time.monotonic()
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="predictions-maintenance")

    async def stop(self) -> None:
        if self._task is None:
            return
        self._task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self._task
        self._task = None

    async def run_once(self) -> None:
        # Each chore on its own: one failing (a database restart) does not skip the others.
        chores = (
            self.retry_stalled_jobs,
            self.delete_expired_outputs,
            self.delete_expired_keys,
            self.settle_unsettled,
            self.delete_old_jobs,
            self.count_queue,
        )
        for chore in chores:
            try:
                await chore()
            except Exception:
                _log.exception("predictions maintenance: %s failed", chore.__name__)

    async def retry_stalled_jobs(self) -> int:
        manager = self._app.job_manager
        stalled = await manager.get_stalled_jobs(seconds_since_heartbeat=self._stalled_seconds)
        retried = 0
        for job in stalled:
            try:
                await manager.retry_job(job)
            except Exception:
                # Another worker's maintenance took it first.
                _log.debug("stalled job %s already handed back", job.id)
                continue
            retried += 1
            _log.warning(
                "job %s of a dead worker handed back to the queue",
                job.id,
                extra={"job_id": job.id, "task": job.task_name, "job_args": job.task_kwargs},
            )
        await manager.prune_stalled_workers(self._stalled_seconds)
        return retried

    async def delete_expired_outputs(self) -> int:
        return await _sweep(self._outputs.delete_expired, "expired outputs")

    async def delete_expired_keys(self) -> int:
        return await _sweep(self._store.delete_expired_keys, "expired idempotency keys")

    async def settle_unsettled(self) -> int:
        found = await self._store.unsettled(self._settle_grace, SETTLE_BATCH)
        for prediction in found:
            await self._runner.settle(prediction)
        return len(found)

    async def count_queue(self) -> None:
        """Refresh the queue's gauges: one count per pass, not one per scrape."""
        metrics.set_queue_load(await self._store.queue_load())

    async def delete_old_jobs(self) -> None:
        """Delete jobs finished unsuccessfully more than the retention ago; at most hourly."""
        if time.monotonic() < self._old_jobs_due:
            return
        self._old_jobs_due = time.monotonic() + OLD_JOBS_EVERY_SECONDS
        await self._app.job_manager.delete_old_jobs(
            nb_hours=self._job_retention_hours,
            include_failed=True,
            include_cancelled=True,
            include_aborted=True,
        )

    async def _run(self) -> None:
        while True:
            await asyncio.sleep(self._interval)
            await self.run_once()
