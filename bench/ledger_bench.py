"""Ledger throughput: Reserve+Capture pairs per second through the gRPC service, against the same
SQL issued directly with psycopg, at 1, 8 and 64 concurrent clients.

Starts an embedded PostgreSQL (or uses DATABASE_URL) and the ledger as a real process. Each
client spends from its own account (a hot single account is reported on its own row), back to
back for a fixed time:

- baseline: `LedgerStore.reserve` + `.capture` called in this process on a psycopg pool of the
  service's size, so exactly the SQL the service runs, with no gRPC and no second process;
- service: the same pair as Reserve and Capture RPCs, each client its own channel.

The two take turns in short rounds, so load from neighbours on a shared machine falls on both
instead of skewing their ratio.

    .venv/bin/python -m bench.ledger_bench [--seconds 3] [--rounds 3] [--pool-size 10]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from pathlib import Path

from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc

from services.cli.processes import ServiceProcess
from services.ledger.settings import LedgerSettings
from services.ledger.store import LedgerStore
from tests.support.pki import channel, tls_env
from tests.support.postgres import create_database, postgres_server_url

CREDITS = 10**12
PRICE = 7
# (clients, accounts): every client on its own account, then all 64 on one hot account.
SHAPES = [(1, 1), (8, 8), (64, 64), (64, 1)]

# One client's Reserve+Capture pair, on its account, through its channel when it has one.
Pair = Callable[[], Awaitable[None]]


@dataclass
class Run:
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def pairs_per_second(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e3


async def measure(pairs: list[Pair], seconds: float, run: Run) -> int:
    """Every client repeats its pair back to back; pairs that start after a short warm-up
    count. Returns how many pairs completed in all, counted or not."""
    started = time.perf_counter()
    counted_from = started + 0.2
    deadline = counted_from + seconds
    completed = 0

    async def client(pair: Pair) -> None:
        nonlocal completed
        while (begin := time.perf_counter()) < deadline:
            await pair()
            completed += 1
            if begin >= counted_from:
                run.latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(client(pair) for pair in pairs))
    run.seconds += seconds
    return completed


def direct_pair(store: LedgerStore, account: str) -> Pair:
    async def pair() -> None:
        hold, _, _ = await store.reserve(account, PRICE, uuid.uuid4().hex, 60)
        await store.capture(hold.id)

    return pair


def service_pair(stub: ledger_pb2_grpc.LedgerServiceStub, account: str) -> Pair:
    async def pair() -> None:
        reserved = await stub.Reserve(
            ledger_pb2.ReserveRequest(
                account_id=account, amount=PRICE, idempotency_key=uuid.uuid4().hex
            )
        )
        await stub.Capture(ledger_pb2.CaptureRequest(hold_id=reserved.hold.id))

    return pair


async def run(
    service: ServiceProcess, baseline_dsn: str, args: argparse.Namespace
) -> list[tuple[int, int, Run, Run]]:
    # The baseline: the service's own store, opened the way the service opens it, in-process.
    store = LedgerStore()
    await store.open(
        LedgerSettings.model_validate(
            {
                "DATABASE_URL": baseline_dsn,
                "pool_min_size": args.pool_size,
                "pool_max_size": args.pool_size,
            }
        )
    )
    results = []
    as_operator = channel(service.address, "operator")
    try:
        for clients, account_count in SHAPES:
            accounts = [f"acct_bench_{uuid.uuid4().hex}" for _ in range(account_count)]
            # Each client calls over mutual TLS with the gateway's certificate, as the gateway.
            channels = [channel(service.address, "gateway") for _ in range(clients)]
            admin = ledger_pb2_grpc.LedgerServiceStub(as_operator)
            for account in accounts:
                await store.open_account(account)
                await store.grant(account, CREDITS, "bench")
                await admin.OpenAccount(ledger_pb2.OpenAccountRequest(account_id=account))
                await admin.Grant(
                    ledger_pb2.GrantRequest(
                        account_id=account, amount=CREDITS, idempotency_key="bench"
                    )
                )
            owners = [accounts[i % account_count] for i in range(clients)]
            direct_pairs = [direct_pair(store, account) for account in owners]
            service_pairs = [
                service_pair(ledger_pb2_grpc.LedgerServiceStub(each), account)
                for each, account in zip(channels, owners, strict=True)
            ]
            direct, served = Run(), Run()
            done_direct = done_served = 0
            slice_seconds = args.seconds / args.rounds
            for _ in range(args.rounds):
                done_direct += await measure(direct_pairs, slice_seconds, direct)
                done_served += await measure(service_pairs, slice_seconds, served)
            for each in channels:
                await each.close()
            await check_spent(store, service, accounts, done_direct, done_served)
            results.append((clients, account_count, direct, served))
    finally:
        await as_operator.close()
        await store.close()
    return results


async def check_spent(
    store: LedgerStore, service: ServiceProcess, accounts: list[str], direct: int, served: int
) -> None:
    """Every pair counted really spent its credits, on both sides: the bench measured work."""
    direct_left = sum([(await store.balance(a)).balance for a in accounts])
    async with channel(service.address, "gateway") as as_gateway:
        stub = ledger_pb2_grpc.LedgerServiceStub(as_gateway)
        served_left = 0
        for account in accounts:
            balance = await stub.GetBalance(ledger_pb2.GetBalanceRequest(account_id=account))
            served_left += balance.balance
    total = CREDITS * len(accounts)
    assert total - direct_left == PRICE * direct, "direct pairs and balances disagree"
    assert total - served_left == PRICE * served, "service pairs and balances disagree"


def report(results: list[tuple[int, int, Run, Run]], pool_size: int) -> None:
    print(f"Reserve+Capture pairs per second; pool of {pool_size} connections on both sides")
    print(
        f"{'clients':>7}{'accounts':>9}{'direct/s':>10}{'service/s':>11}{'ratio':>7}"
        f"{'direct p50':>12}{'service p50':>13}{'direct p99':>12}{'service p99':>13}"
    )
    for clients, accounts, direct, served in results:
        print(
            f"{clients:>7}{accounts:>9}{direct.pairs_per_second:>10.0f}"
            f"{served.pairs_per_second:>11.0f}"
            f"{served.pairs_per_second / direct.pairs_per_second:>7.2f}"
            f"{direct.percentile_ms(0.5):>10.1f}ms{served.percentile_ms(0.5):>11.1f}ms"
            f"{direct.percentile_ms(0.99):>10.1f}ms{served.percentile_ms(0.99):>11.1f}ms"
        )
    print(
        "ratio = service / direct: below 1 is what gRPC and the hop to another process cost;"
        " above 1, the one-process baseline ran out of CPU before the service's two processes"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=2.0, help="measured time per side")
    parser.add_argument("--rounds", type=int, default=2, help="turns each side takes")
    parser.add_argument("--pool-size", type=int, default=10, help="connections on each side")
    args = parser.parse_args()

    with postgres_server_url() as server_url, tempfile.TemporaryDirectory() as log_dir:
        service = ServiceProcess(
            "ledger",
            {
                "DATABASE_URL": create_database(server_url, prefix="bench"),
                **tls_env("ledger"),
                "LEDGER_POOL_MAX_SIZE": str(args.pool_size),
                "LEDGER_POOL_MIN_SIZE": str(args.pool_size),
            },
            Path(log_dir),
        ).start()
        try:
            baseline_dsn = create_database(server_url, prefix="bench")
            results = asyncio.run(run(service, baseline_dsn, args))
        finally:
            service.stop()
    report(results, args.pool_size)


if __name__ == "__main__":
    main()
