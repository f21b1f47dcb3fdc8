"""The ledger process as an operator runs it: health, reflection, draining on SIGTERM, and
refusing to start without what it needs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import psycopg
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from services.cli.processes import ServiceProcess, free_port, health_status
from services.common.settings import REPO_ROOT
from tests.support.ledger import OPERATOR_TOKEN, Ledger, ledger_process
from tests.support.postgres import create_database

SERVICE = "kokoropay.ledger.v1.LedgerService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_reports_serving_overall_and_for_the_service(
    ledger_service: ServiceProcess,
) -> None:
    assert health_status(ledger_service.address) == "SERVING"
    assert health_status(ledger_service.address, SERVICE) == "SERVING"


def test_reflection_describes_the_ledger_service(ledger_service: ServiceProcess) -> None:
    with grpc.insecure_channel(ledger_service.address) as channel:
        database = ProtoReflectionDescriptorDatabase(channel)
        services = set(database.get_services())
        file = database.FindFileContainingSymbol(SERVICE)

    assert {SERVICE, "grpc.health.v1.Health"} <= services
    [service] = [s for s in file.service if s.name == "LedgerService"]
    assert {method.name for method in service.method} >= {"Reserve", "Capture", "Release"}


async def test_sigterm_turns_health_not_serving_and_lets_calls_in_flight_finish(
    postgres_url: str, log_dir: Path
) -> None:
    database_url = create_database(postgres_url, prefix="ledger")
    process = ledger_process(database_url, log_dir, LEDGER_GRACE_SECONDS="20")
    await asyncio.to_thread(process.start)
    try:
        async with grpc.aio.insecure_channel(process.address) as channel:
            ledger = Ledger(channel)
            account = await ledger.open_account(credits=10)
            watch = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service="")
            )
            assert (await watch.read()).status == SERVING

            # Hold the account's row lock from outside, so a Reserve stays in flight.
            async with await psycopg.AsyncConnection.connect(database_url) as blocker:
                await blocker.execute(
                    "SELECT 1 FROM ledger.accounts WHERE id = %s FOR UPDATE", [account]
                )
                in_flight = asyncio.ensure_future(ledger.reserve(account, 7))
                await asyncio.sleep(0.3)
                assert not in_flight.done()

                process.terminate()
                assert (await asyncio.wait_for(watch.read(), 5)).status == NOT_SERVING
                await blocker.rollback()

            hold = await asyncio.wait_for(in_flight, 5)
            assert hold.amount == 7
            watch.cancel()
        assert process.process is not None
        assert await asyncio.to_thread(process.process.wait, 10) == 0
    finally:
        process.kill()


def _run_ledger(env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "services.ledger"],
        cwd=REPO_ROOT,
        env={**os.environ, "LEDGER_PORT": str(free_port()), **env},
        capture_output=True,
        text=True,
        timeout=30,
    )


def test_without_an_operator_token_it_exits_with_one_clear_line(
    database_url: str, tmp_path: Path
) -> None:
    # An empty secrets folder, so a local run's .data/operator-token cannot supply one.
    result = _run_ledger(
        {
            "DATABASE_URL": database_url,
            "KOKOROPAY_OPERATOR_TOKEN": "",
            "KOKOROPAY_SECRETS_DIR": str(tmp_path),
        }
    )

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        "error: ledger needs KOKOROPAY_OPERATOR_TOKEN or the file .data/operator-token"
        " (make run writes it)"
    ]


def test_a_bad_setting_stops_it_naming_the_variable(database_url: str) -> None:
    result = _run_ledger(
        {
            "DATABASE_URL": database_url,
            "KOKOROPAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
            "LEDGER_MAX_HOLD_TTL_SECONDS": "soon",
        }
    )

    assert result.returncode != 0
    assert "LEDGER_MAX_HOLD_TTL_SECONDS" in result.stderr


def test_an_unreachable_database_stops_it_instead_of_serving() -> None:
    result = _run_ledger(
        {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/ledger?connect_timeout=2",
            "KOKOROPAY_OPERATOR_TOKEN": OPERATOR_TOKEN,
        }
    )

    assert result.returncode != 0
    assert "127.0.0.1" in result.stderr
