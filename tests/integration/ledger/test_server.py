"""The ledger process as an operator runs it: mutual TLS on its port, health alone on a plaintext
port, reflection, draining on SIGTERM, and refusing to start without what it needs."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from pathlib import Path

import grpc
import psycopg
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.cli.processes import ServiceProcess, free_port, health_status
from services.common.channels import channel_credentials
from services.common.settings import REPO_ROOT
from tests.support.ledger import connected_ledger, ledger_process
from tests.support.pki import foreign_identity, sync_channel, tls_env
from tests.support.postgres import create_database

SERVICE = "kokoropay.ledger.v1.LedgerService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


def test_health_reports_serving_overall_and_for_the_service(
    ledger_service: ServiceProcess,
) -> None:
    # On the plaintext health port, as kubelet's probes see it.
    assert health_status(ledger_service.health_address) == "SERVING"
    assert health_status(ledger_service.health_address, SERVICE) == "SERVING"


def test_the_health_port_answers_health_and_nothing_else(ledger_service: ServiceProcess) -> None:
    plaintext = grpc.insecure_channel(ledger_service.health_address)
    with plaintext, pytest.raises(grpc.RpcError) as refused:
        ledger_pb2_grpc.LedgerServiceStub(plaintext).GetBalance(
            ledger_pb2.GetBalanceRequest(account_id="acct_x"), timeout=5
        )
    assert refused.value.code() == grpc.StatusCode.UNIMPLEMENTED


@pytest.mark.parametrize("client", ["plaintext", "foreign CA"])
def test_a_caller_that_cannot_prove_who_it_is_gets_no_answer(
    ledger_service: ServiceProcess, client: str
) -> None:
    unproven = (
        grpc.insecure_channel(ledger_service.address)
        if client == "plaintext"
        else grpc.secure_channel(ledger_service.address, channel_credentials(foreign_identity()))
    )
    with unproven, pytest.raises(grpc.RpcError) as refused:
        ledger_pb2_grpc.LedgerServiceStub(unproven).GetBalance(
            ledger_pb2.GetBalanceRequest(account_id="acct_x"), timeout=5
        )
    # The TLS handshake fails: no status, no message, nothing about the ledger.
    assert refused.value.code() == grpc.StatusCode.UNAVAILABLE


def test_reflection_describes_the_ledger_service(ledger_service: ServiceProcess) -> None:
    with sync_channel(ledger_service.address, "operator") as channel:
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
        async with connected_ledger(process.address) as ledger:
            account = await ledger.open_account(credits=10)
            watch = health_pb2_grpc.HealthStub(ledger.gateway_channel).Watch(
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


def test_without_a_certificate_it_exits_with_one_clear_line(
    database_url: str, tmp_path: Path
) -> None:
    result = _run_ledger({"DATABASE_URL": database_url, "LEDGER_TLS_DIR": str(tmp_path)})

    assert result.returncode != 0
    assert result.stderr.strip().splitlines() == [
        f"error: ledger has no certificate: {tmp_path}/tls.crt is missing; run `make run` once"
        " to create the local ones, or set LEDGER_TLS_DIR"
    ]


def test_a_bad_setting_stops_it_naming_the_variable(database_url: str) -> None:
    result = _run_ledger(
        {
            "DATABASE_URL": database_url,
            **tls_env("ledger"),
            "LEDGER_MAX_HOLD_TTL_SECONDS": "soon",
        }
    )

    assert result.returncode != 0
    assert "LEDGER_MAX_HOLD_TTL_SECONDS" in result.stderr


def test_an_unreachable_database_stops_it_instead_of_serving() -> None:
    result = _run_ledger(
        {
            "DATABASE_URL": "postgresql://nobody@127.0.0.1:1/ledger?connect_timeout=2",
            **tls_env("ledger"),
        }
    )

    assert result.returncode != 0
    assert "127.0.0.1" in result.stderr
