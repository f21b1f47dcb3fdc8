"""A synth that stops answering mid-stream (frozen: SIGSTOP, as a hung GPU leaves it) must not
keep a prediction, and the customer's credits, held for ever: the worker gives up after
PREDICTIONS_SYNTHESIS_STALL_SECONDS of silence and, on its last run, fails it and refunds it."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from kokoropay.ledger.v1 import ledger_pb2 as L
from kokoropay.predictions.v1 import predictions_pb2 as P

from services.cli.processes import ServiceProcess
from services.common.keepalive import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS
from tests.integration.predictions.conftest import start_worker
from tests.integration.predictions.mesh import (
    Databases,
    Predictions,
    eventually,
    job_status,
)
from tests.support.pki import tls_env

# Many chunks, tens of seconds of synthesis on a CPU: synth freezes while still speaking.
TEXT = " ".join(
    f"Sentence {n}: a synth that freezes mid-stream sends nothing more, and says nothing either."
    for n in range(8)
)
STALL_SECONDS = 2
# gRPC's keepalive would also end the call to a frozen process, after a ping and its wait: an
# end in half that time is the stall timeout's.
WELL_BEFORE_KEEPALIVE_SECONDS = (KEEPALIVE_TIME_MS + KEEPALIVE_TIMEOUT_MS) / 1000 / 2


@pytest.fixture
def frozen_synth(synth: str, log_dir: Path) -> Iterator[ServiceProcess]:
    """A synth of this test's own (the session's keeps serving the others): frozen by the test,
    thawed and stopped after it."""
    process = ServiceProcess("synth", tls_env("synth"), log_dir).start(timeout=300)
    try:
        yield process
    finally:
        assert process.process is not None
        os.kill(process.process.pid, signal.SIGCONT)
        process.stop()


async def test_a_frozen_synth_fails_the_prediction_and_refunds_it(
    predictions: Predictions,
    predictions_env: dict[str, str],
    predictions_service: ServiceProcess,
    databases: Databases,
    frozen_synth: ServiceProcess,
    log_dir: Path,
) -> None:
    worker = start_worker(
        {
            **predictions_env,
            "PREDICTIONS_SYNTH_ADDRESS": frozen_synth.address,
            "PREDICTIONS_SYNTHESIS_STALL_SECONDS": str(STALL_SECONDS),
            "PREDICTIONS_MAX_ATTEMPTS": "1",
        },
        log_dir,
    )
    try:
        account = await predictions.account(1000)
        created = await predictions.create(account, TEXT, output_format="mp3")

        async def streaming() -> bool:
            return job_status(databases.owner, created.id) == "doing"

        await eventually(streaming)
        assert frozen_synth.process is not None
        os.kill(frozen_synth.process.pid, signal.SIGSTOP)
        frozen = time.monotonic()

        finished = await predictions.finished(account, created.id, timeout=60)
        assert time.monotonic() - frozen < WELL_BEFORE_KEEPALIVE_SECONDS
        assert finished.status == P.PREDICTION_STATUS_ERROR, finished
        assert f"synth sent nothing for {STALL_SECONDS} s" in finished.details, finished

        async def refunded() -> L.GetBalanceResponse | None:
            balance = await predictions.ledger.balance(account)
            return balance if balance.held == 0 else None

        balance = await eventually(refunded)
        assert balance.balance == 1000
        entries = await predictions.ledger.entries(account)
        assert not [e for e in entries if e.kind == L.ENTRY_KIND_CAPTURE]
    finally:
        worker.stop()
