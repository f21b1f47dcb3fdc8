"""The predictions mesh, real processes on real sockets with mutual TLS: a ledger, synth with
the real model (when the weights are there), the predictions service and, where a module asks
for them, its workers.

All share one fresh database, as in a deployment: the ledger serves as its owner, while
predictions migrates as the owner and serves as a role of its own, so every statement of its
store and of procrastinate runs with exactly what grants.sql grants. synth starts once for the
whole folder (the model loads in about ten seconds on a CPU); the texts stay short.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import psycopg
import pytest
from psycopg import sql

from services.cli.processes import ServiceProcess
from services.common.settings import DATA_DIR
from tests.integration.predictions.mesh import (
    FAST_WORKERS,
    PUBLIC_BASE_URL,
    URL_SIGNING_SECRET,
    Databases,
    Predictions,
    WorkerProcess,
    as_role,
)
from tests.support.ledger import connected_ledger, ledger_process
from tests.support.pki import PKI, channel, tls_env
from tests.support.postgres import create_database

# Nothing listens here: without weights, synth is absent and voices go unchecked at create.
NO_SYNTH = "127.0.0.1:9"

# The mesh's own `predictions` certificate (it serves, so it names the local hosts).
PREDICTIONS_TLS_DIR = PKI.folder("predictions")


def new_databases(postgres_url: str, prefix: str = "predictions") -> Databases:
    """A fresh database, and a serving role of its own where the server lets us make one."""
    owner = create_database(postgres_url, prefix=prefix)
    with psycopg.connect(owner, autocommit=True) as conn:
        row = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user").fetchone()
        if not (row and row[0]):
            return Databases(owner=owner, serving=owner)
        role = f"kp_predictions_{uuid.uuid4().hex[:8]}"
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN").format(sql.Identifier(role)))
    return Databases(owner=owner, serving=as_role(owner, role))


@pytest.fixture(scope="session")
def databases(postgres_url: str) -> Databases:
    return new_databases(postgres_url)


@pytest.fixture(scope="session")
def ledger_service(databases: Databases, log_dir: Path) -> Iterator[ServiceProcess]:
    process = ledger_process(databases.owner, log_dir, LEDGER_SWEEP_INTERVAL_SECONDS="1").start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
def synth_process(log_dir: Path) -> Iterator[ServiceProcess | None]:
    """synth, started without waiting: the model loads while the rest of the mesh starts."""
    if not (DATA_DIR / "weights" / "manifest.json").exists():
        yield None
        return
    process = ServiceProcess("synth", {"SYNTH_LOG_LEVEL": "INFO", **tls_env("synth")}, log_dir)
    process.start(wait_serving=False)
    yield process
    process.stop()


@pytest.fixture(scope="session")
def synth_address(synth_process: ServiceProcess | None) -> str:
    return synth_process.address if synth_process is not None else NO_SYNTH


@pytest.fixture(scope="session")
def synth(synth_process: ServiceProcess | None) -> str:
    """synth's address once it serves, for tests that need audio; skipped without weights."""
    if synth_process is None:
        pytest.skip("no Kokoro weights under .data/weights: run `make weights`")
    synth_process.wait_for("SERVING", timeout=300)
    return synth_process.address


@pytest.fixture(scope="session")
def predictions_env(
    databases: Databases, ledger_service: ServiceProcess, synth_address: str
) -> dict[str, str]:
    """What a predictions process (service or worker) of these tests runs with."""
    return {
        "DATABASE_URL": databases.serving,
        "PREDICTIONS_MIGRATION_DATABASE_URL": databases.owner,
        "PREDICTIONS_LEDGER_ADDRESS": ledger_service.address,
        "PREDICTIONS_SYNTH_ADDRESS": synth_address,
        "PREDICTIONS_URL_SIGNING_SECRET": URL_SIGNING_SECRET,
        "PREDICTIONS_PUBLIC_BASE_URL": PUBLIC_BASE_URL,
        "PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS": "true",
        **FAST_WORKERS,
        "PREDICTIONS_TLS_DIR": str(PREDICTIONS_TLS_DIR),
    }


@pytest.fixture(scope="session")
def predictions_service(predictions_env: dict[str, str], log_dir: Path) -> Iterator[ServiceProcess]:
    process = ServiceProcess("predictions", predictions_env, log_dir).start()
    yield process
    process.stop()


@pytest.fixture(scope="session")
async def predictions(
    predictions_service: ServiceProcess, ledger_service: ServiceProcess
) -> AsyncIterator[Predictions]:
    async with (
        connected_ledger(ledger_service.address) as ledger,
        channel(predictions_service.address, "gateway") as gateway,
        channel(predictions_service.address, "operator") as operator,
    ):
        yield Predictions(gateway, operator, ledger)


def start_worker(env: dict[str, str], log_dir: Path) -> WorkerProcess:
    return WorkerProcess(env, log_dir).start()


@pytest.fixture(scope="module")
def worker(
    predictions_env: dict[str, str], predictions_service: ServiceProcess, synth: str, log_dir: Path
) -> Iterator[WorkerProcess]:
    """One worker for the module's tests."""
    process = start_worker(predictions_env, log_dir)
    yield process
    process.stop()
