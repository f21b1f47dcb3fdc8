"""VerifyKey latency and throughput, against the floor of any RPC to the same process.

Starts an embedded PostgreSQL and the auth service as a real process, issues a key, then drives
each call from 1 and from N concurrent clients (each its own channel) for a fixed time:

- baseline: grpc.health.v1 Check, the cheapest round trip the same server can answer;
- VerifyKey of a live key: one indexed lookup by keyed hash in PostgreSQL;
- VerifyKey of junk: refused by shape before any database work.

    .venv/bin/python -m bench.auth_bench [--clients 16] [--seconds 3] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

from services.common.errors import error_reason
from tests.support.auth import AuthSecrets, start_auth
from tests.support.pki import channel
from tests.support.postgres import create_database, postgres_server_url

# Given a client's channel, the call that client repeats (stubs built once, outside the timing).
Call = Callable[[grpc.aio.Channel], Callable[[], Awaitable[None]]]


@dataclass(frozen=True)
class Result:
    name: str
    clients: int
    latencies: list[float]
    seconds: float

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e3


def health_check(channel: grpc.aio.Channel) -> Callable[[], Awaitable[None]]:
    check = health_pb2_grpc.HealthStub(channel).Check
    request = health_pb2.HealthCheckRequest(service="kokoropay.auth.v1.AuthService")

    async def call() -> None:
        response = await check(request)
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    return call


def verify(key: str, expect_reason: str | None) -> Call:
    request = auth_pb2.VerifyKeyRequest(key=key)

    def on(channel: grpc.aio.Channel) -> Callable[[], Awaitable[None]]:
        verify_key = auth_pb2_grpc.AuthServiceStub(channel).VerifyKey

        async def call() -> None:
            try:
                await verify_key(request)
            except grpc.aio.AioRpcError as error:
                if error_reason(error) != expect_reason:
                    raise
            else:
                assert expect_reason is None

        return call

    return on


async def measure(
    address: str, call: Call, clients: int, seconds: float, warmup: float
) -> list[float]:
    """Every client calls back to back; only calls that start after the warm-up count."""
    started = time.perf_counter()
    counted_from = started + warmup
    deadline = counted_from + seconds
    per_client: list[list[float]] = [[] for _ in range(clients)]

    async def client(latencies: list[float]) -> None:
        # Over mutual TLS with the gateway's certificate, as the gateway calls VerifyKey.
        async with channel(address, "gateway") as each:
            once = call(each)
            while (begin := time.perf_counter()) < deadline:
                await once()
                if begin >= counted_from:
                    latencies.append(time.perf_counter() - begin)

    await asyncio.gather(*(client(latencies) for latencies in per_client))
    return [latency for latencies in per_client for latency in latencies]


async def issue_key(address: str) -> str:
    async with channel(address, "operator") as as_operator:
        stub = auth_pb2_grpc.AuthServiceStub(as_operator)
        account = await stub.CreateAccount(auth_pb2.CreateAccountRequest(name="bench"))
        created = await stub.CreateKey(auth_pb2.CreateKeyRequest(account_id=account.account.id))
        return str(created.plaintext)


async def run(address: str, clients: int, seconds: float, rounds: int) -> list[Result]:
    """Phases take turns in short rounds, so load from neighbours on a shared machine falls on
    the baseline and on VerifyKey alike instead of skewing their ratio."""
    key = await issue_key(address)
    phases = [
        ("health Check (baseline)", health_check),
        ("VerifyKey live key", verify(key, None)),
        ("VerifyKey junk", verify("not-a-key", "KEY_INVALID")),
    ]
    slice_seconds = seconds / rounds
    results = []
    for concurrency in sorted({1, clients}):
        latencies: dict[str, list[float]] = {name: [] for name, _ in phases}
        for _ in range(rounds):
            for name, call in phases:
                latencies[name] += await measure(
                    address, call, concurrency, slice_seconds, warmup=0.2
                )
        results += [Result(name, concurrency, latencies[name], seconds) for name, _ in phases]
    return results


def report(results: list[Result]) -> None:
    print(
        f"{'call':<26}{'clients':>8}{'calls':>8}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p50 ×base':>11}{'p99 ×base':>11}{'rps ×base':>11}"
    )
    for concurrency in sorted({r.clients for r in results}):
        rows = [r for r in results if r.clients == concurrency]
        base = rows[0]
        for r in rows:
            print(
                f"{r.name:<26}{r.clients:>8}{len(r.latencies):>8}{r.rps:>9.0f}"
                f"{r.percentile_ms(0.5):>9.2f}{r.percentile_ms(0.99):>9.2f}"
                f"{r.percentile_ms(0.5) / base.percentile_ms(0.5):>11.2f}"
                f"{r.percentile_ms(0.99) / base.percentile_ms(0.99):>11.2f}"
                f"{r.rps / base.rps:>11.2f}"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--clients", type=int, default=16, help="concurrent clients (channels)")
    parser.add_argument("--seconds", type=float, default=3.0, help="measured time per phase")
    parser.add_argument("--rounds", type=int, default=3, help="turns each phase takes")
    args = parser.parse_args()

    auth_secrets = AuthSecrets.generate()
    with postgres_server_url() as server_url, tempfile.TemporaryDirectory() as log_dir:
        auth = start_auth(create_database(server_url, prefix="bench"), auth_secrets, Path(log_dir))
        try:
            results = asyncio.run(run(auth.address, args.clients, args.seconds, args.rounds))
        finally:
            auth.stop()
    report(results)


if __name__ == "__main__":
    main()
