"""One ledger process per test module, on its own fresh database; tests use fresh accounts."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest

from services.cli.processes import ServiceProcess
from tests.support.ledger import Ledger, connected_ledger, ledger_process
from tests.support.postgres import create_database


@pytest.fixture(scope="module")
def ledger_database_url(postgres_url: str) -> str:
    return create_database(postgres_url, prefix="ledger")


@pytest.fixture(scope="module")
def ledger_service(ledger_database_url: str, log_dir: Path) -> Iterator[ServiceProcess]:
    process = ledger_process(
        ledger_database_url,
        log_dir,
        # The sweeper stays out of the way; tests of expiry choose their own interval.
        LEDGER_SWEEP_INTERVAL_SECONDS="3600",
        # Bursts of 200 calls on one account queue for connections; on a loaded machine that
        # queue must not turn into UNAVAILABLE, which is not what those tests are about.
        LEDGER_POOL_TIMEOUT_SECONDS="30",
    ).start()
    yield process
    process.stop()


@pytest.fixture(scope="module")
async def ledger(ledger_service: ServiceProcess) -> AsyncIterator[Ledger]:
    async with connected_ledger(ledger_service.address) as ledger:
        yield ledger
