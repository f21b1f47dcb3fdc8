"""Predictions settings: PREDICTIONS_-prefixed, on top of the shared database and certificate
settings. The service (`python -m services.predictions`) and its workers
(`python -m services.predictions.worker`) read the same ones; each uses what concerns it."""

from __future__ import annotations

from typing import ClassVar, Self

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from services.common.mesh import (
    PORTS,
    PREDICTIONS_WORKER_HEALTH_PORT,
    PREDICTIONS_WORKER_METRICS_PORT,
    URL_SIGNING_SECRET_ENV,
    URL_SIGNING_SECRET_FILE,
    local_address,
)
from services.common.settings import DatabaseSettings, read_secret

# The ledger's LEDGER_MAX_HOLD_TTL_SECONDS default: a Reserve asking for longer is refused.
LEDGER_MAX_HOLD_TTL_SECONDS = 6 * 3600


class PredictionsSettings(DatabaseSettings):
    model_config = SettingsConfigDict(env_prefix="PREDICTIONS_", extra="ignore", frozen=True)
    service_name: ClassVar[str] = "predictions"

    port: int = Field(default=PORTS["predictions"], ge=1, le=65535)
    # Where the ledger (Reserve, Checkpoint, Capture, Release) and synth (Synthesize, ListVoices)
    # listen; both are called with the `predictions` certificate.
    ledger_address: str = Field(default=local_address("ledger"), min_length=1)
    synth_address: str = Field(default=local_address("synth"), min_length=1)

    # The gateway's public base: output URLs are <base>/v1/prediction/<id>/output?…
    public_base_url: str = "http://127.0.0.1:8000"
    # How long stored audio is kept after a prediction succeeds; its URL expires with it.
    output_retention_seconds: int = Field(default=24 * 3600, ge=1, le=30 * 24 * 3600)
    # Signs output URLs (HMAC-SHA256); else the local run's `.data/` file.
    url_signing_secret: SecretStr | None = Field(
        default=None, validation_alias=URL_SIGNING_SECRET_ENV
    )

    # What a create refused for its key's concurrency (CONCURRENCY_LIMITED) tells the caller to
    # wait before trying again (its `retry_after_seconds`: the gateway's Retry-After). A place
    # frees when one of the key's predictions finishes or is cancelled.
    concurrency_retry_after_seconds: int = Field(default=1, ge=1, le=3600)

    # The longest `text` (Unicode code points); the gateway's speech limit.
    max_input_chars: int = Field(default=4096, ge=1, le=100_000)
    # How long a prediction's hold lives from its creation: the longest it may wait in the queue
    # before a worker starts it. At most the ledger's longest hold.
    hold_ttl_seconds: int = Field(default=3600, ge=60, le=LEDGER_MAX_HOLD_TTL_SECONDS)
    # While a worker runs a prediction it keeps the hold alive this long from each checkpoint:
    # longer than it takes to notice a dead worker and retry its job (see _timings_agree).
    hold_extend_seconds: int = Field(default=600, ge=10, le=LEDGER_MAX_HOLD_TTL_SECONDS)
    # How often a running prediction checkpoints its hold (delivered 0: see README, "Money").
    checkpoint_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    # synth sends each chunk's audio as it is spoken: a run that gets nothing from it for this
    # long (a hung synth pod, a path that silently dropped) gives up and runs again later, like
    # synth unreachable. Its first message waits in synth's queue too: the gateway's
    # first-chunk timeout (300 s) is the same allowance.
    synthesis_stall_seconds: float = Field(default=300.0, gt=0, le=3600)
    # Runs of one prediction job (its first and its retries after failures that may pass, or
    # after its worker died); the run after the last fails it and refunds it.
    max_attempts: int = Field(default=5, ge=1, le=100)
    # Backoff between those runs: about base × 2^attempt, with jitter, at most max.
    retry_base_seconds: float = Field(default=5.0, gt=0, le=3600)
    retry_max_delay_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)

    # Webhooks to loopback, private, link-local or reserved addresses are refused unless this
    # is set (local runs and tests set it).
    allow_private_webhooks: bool = False
    # A receiver has this long to answer 2xx.
    webhook_timeout_seconds: float = Field(default=30.0, gt=0, le=300)
    # Undelivered webhooks are retried for this long after the prediction ends…
    webhook_retry_hours: float = Field(default=24.0, gt=0, le=24 * 30)
    # …about base × 2^attempt apart, with jitter, at most max apart.
    webhook_retry_base_seconds: float = Field(default=30.0, gt=0, le=3600)
    webhook_retry_max_delay_seconds: float = Field(default=3600.0, gt=0, le=24 * 3600)

    # The voices synth lists, cached for checking CreatePrediction's voice.
    voice_cache_seconds: float = Field(default=300.0, gt=0, le=24 * 3600)

    # The worker: jobs at once, and its own health port (plaintext, grpc.health.v1 alone).
    worker_concurrency: int = Field(default=2, ge=1, le=100)
    worker_health_port: int = Field(default=PREDICTIONS_WORKER_HEALTH_PORT, ge=1, le=65535)
    # The worker's Prometheus /metrics, plain HTTP on `host` (PREDICTIONS_METRICS_PORT is the
    # service's); 0: no exporter.
    worker_metrics_port: int = Field(default=PREDICTIONS_WORKER_METRICS_PORT, ge=0, le=65535)
    # Workers beat this often; one silent for stalled_worker_seconds is taken for dead and its
    # jobs are run again by another worker.
    worker_heartbeat_seconds: float = Field(default=10.0, gt=0, le=600)
    stalled_worker_seconds: float = Field(default=60.0, gt=0, le=3600)
    # New jobs arrive by LISTEN/NOTIFY; this poll is the fallback, and what finds retries that
    # come due. Cancellations arrive the same way, polled this often at most.
    fetch_poll_seconds: float = Field(default=5.0, gt=0, le=600)
    abort_poll_seconds: float = Field(default=1.0, gt=0, le=60)
    # How often each worker retries stalled jobs, deletes expired audio and settles holds left
    # unsettled; and how long a finished prediction may stay unsettled before that.
    maintenance_interval_seconds: float = Field(default=30.0, gt=0, le=3600)
    settle_grace_seconds: float = Field(default=30.0, ge=0, le=3600)
    # Finished queue jobs that did not succeed (aborted by a cancel, webhooks given up) are kept
    # this long for operators, then deleted; successful ones go at once.
    finished_job_retention_hours: int = Field(default=7 * 24, ge=1, le=365 * 24)
    # How long a stopping worker lets running jobs finish before handing them back to the queue.
    worker_grace_seconds: float = Field(default=30.0, ge=0, le=3600)

    def url_signing_secret_value(self) -> str | None:
        configured = self.url_signing_secret.get_secret_value() if self.url_signing_secret else None
        return read_secret(configured, URL_SIGNING_SECRET_FILE)

    @property
    def worker_health_bind_address(self) -> str:
        return f"{self.host}:{self.worker_health_port}"

    @field_validator("public_base_url")
    @classmethod
    def _http_base(cls, value: str) -> str:
        if not value.startswith(("http://", "https://")) or "?" in value or "#" in value:
            raise ValueError("must be an http(s) URL without query or fragment")
        return value.rstrip("/")

    @model_validator(mode="after")
    def _timings_agree(self) -> Self:
        name = self.env_name
        if self.checkpoint_interval_seconds >= self.hold_extend_seconds:
            raise ValueError(
                f"{name('checkpoint_interval_seconds')} must be below {name('hold_extend_seconds')}"
            )
        if self.stalled_worker_seconds < 2 * self.worker_heartbeat_seconds:
            raise ValueError(
                f"{name('stalled_worker_seconds')} must be at least twice "
                f"{name('worker_heartbeat_seconds')}: a live worker would look dead"
            )
        # A dead worker's job must be running again before the hold it extended lapses.
        noticed = self.stalled_worker_seconds + self.maintenance_interval_seconds
        if noticed >= self.hold_extend_seconds:
            raise ValueError(
                f"{name('stalled_worker_seconds')} + {name('maintenance_interval_seconds')} "
                f"must be below {name('hold_extend_seconds')}"
            )
        if self.retry_base_seconds > self.retry_max_delay_seconds:
            raise ValueError(
                f"{name('retry_base_seconds')} exceeds {name('retry_max_delay_seconds')}"
            )
        if self.webhook_retry_base_seconds > self.webhook_retry_max_delay_seconds:
            raise ValueError(
                f"{name('webhook_retry_base_seconds')} exceeds "
                f"{name('webhook_retry_max_delay_seconds')}"
            )
        return self
