"""The predictions' own metrics: creates and refusals, how predictions finish, how long a worker
takes, the queue's depth and load, and what became of each webhook try.

Two kinds of process record them, each on its own port: the service (`PREDICTIONS_METRICS_PORT`:
creates, refusals, cancels) and every worker (`PREDICTIONS_WORKER_METRICS_PORT`: successes,
failures, job times, webhooks, the queue's depth and runnable jobs). A prediction is finished
once, by whichever commits its row first (store.py), and counted there, after the commit:
counters are per process, so add them up across the service and the workers. The queue's
gauges are counts every worker's maintenance refreshes: read them with `max`.

No label carries an account, a key, a prediction id, a URL or text.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from prometheus_client import Counter, Gauge, Histogram

if TYPE_CHECKING:
    from services.predictions.store import QueueLoad

# Why CreatePrediction refused: the key's most predictions queued or running, too few credits
# (or no ledger account), or a bad field (the webhook URL included).
REFUSALS = ("concurrency_limited", "insufficient_credits", "invalid")
# How a prediction finished: its audio stored; failed (synthesis refused or failed, out of runs,
# or its hold lapsed in the queue); cancelled by its customer.
STATUSES = ("succeeded", "failed", "cancelled")
# One webhook try: delivered (a 2xx); failed (no 2xx or no answer, the host not resolved, or the
# try cut short), to be tried again; gave_up: failed with no time left before the deadline;
# refused: the URL now leads to a refused address, given up at once.
WEBHOOK_OUTCOMES = ("delivered", "failed", "gave_up", "refused")

CREATED = Counter("kokoropay_predictions_created", "Predictions created (reserved and queued).")
REFUSED = Counter(
    "kokoropay_predictions_refused", "CreatePrediction calls refused, by reason.", ["reason"]
)
FINISHED = Counter(
    "kokoropay_predictions_finished",
    "Predictions finished, by status, counted once by the process that finished them.",
    ["status"],
)
JOB_SECONDS = Histogram(
    "kokoropay_predictions_job_seconds",
    "A worker's run that finished a prediction, from the run's start to its end, by status.",
    ["status"],
    buckets=(0.1, 0.25, 0.5, 1.0, 2.0, 5.0, 10.0, 20.0, 30.0, 60.0, 120.0, 300.0, 600.0),
)
QUEUE_DEPTH = Gauge(
    "kokoropay_predictions_queue_depth",
    "Predictions waiting for a worker (their job queued, a retry's backoff included), as of a"
    " worker's last maintenance pass.",
)
RUNNABLE_JOBS = Gauge(
    "kokoropay_predictions_runnable_jobs",
    "Prediction jobs running or due to run now (a retry's backoff not included): the workers'"
    " load, which their autoscaler divides by the jobs a worker runs at once; as of a worker's"
    " last maintenance pass.",
)
WEBHOOK_ATTEMPTS = Counter(
    "kokoropay_predictions_webhook_attempts",
    "Webhook tries, by outcome.",
    ["outcome"],
)

# Labelled once, so every series reads 0 before it first happens.
_REFUSED = {reason: REFUSED.labels(reason) for reason in REFUSALS}
_FINISHED = {status: FINISHED.labels(status) for status in STATUSES}
_JOB_SECONDS = {status: JOB_SECONDS.labels(status) for status in STATUSES}
_WEBHOOK_ATTEMPTS = {outcome: WEBHOOK_ATTEMPTS.labels(outcome) for outcome in WEBHOOK_OUTCOMES}


def count_created() -> None:
    CREATED.inc()


def count_refused(reason: str) -> None:
    _REFUSED[reason].inc()


def count_finished(status: str) -> None:
    _FINISHED[status].inc()


def observe_job(status: str, seconds: float) -> None:
    _JOB_SECONDS[status].observe(seconds)


def set_queue_load(load: QueueLoad) -> None:
    QUEUE_DEPTH.set(load.waiting)
    RUNNABLE_JOBS.set(load.runnable)


def count_webhook_attempt(outcome: str) -> None:
    _WEBHOOK_ATTEMPTS[outcome].inc()


def finished_status(status: str, message: str | None) -> str:
    """A finished row's metric status: `success`, or `error` cancelled or not."""
    if status == "success":
        return "succeeded"
    return "cancelled" if message == "cancelled" else "failed"
