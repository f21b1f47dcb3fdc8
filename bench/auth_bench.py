"""VerifyKey latency and throughput, against the floor of any RPC to the same process.

Starts an embedded PostgreSQL and the auth service as a real process, issues a key, then drives
each call from 1 and from N concurrent clients (each its own channel) for a fixed time:

- baseline: grpc.health.v1 Check, the cheapest round trip the same server can answer;
- VerifyKey of a live key: one indexed lookup by keyed hash in PostgreSQL;
- VerifyKey of junk: refused by shape before any database work;
- VerifyKey with a use, admitted under the key's limits (limits raised so that nothing is
  refused): KEY_USE_SPEECH counts the request and takes a slot, which the client then gives back
  with ReleaseSlots as the gateway does when a stream ends (only the VerifyKey is timed: it is
  what a request waits for; the release runs in the loop, so rps counts both), once with every
  client on one key (its admissions take turns) and once with a key per client;
  KEY_USE_PREDICTION_CREATE counts the request only. Their `+p50 ms` is what limits add to the
  plain VerifyKey's p50, measured in the same run.

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

from services.auth.keys import DEFAULT_MAX_KEYS_PER_ACCOUNT
from services.common.errors import error_reason
from tests.support.auth import AuthSecrets, start_auth
from tests.support.pki import channel
from tests.support.postgres import create_database, postgres_server_url

# Given a client's channel and its number, the call that client repeats (stubs built once,
# outside the timing). A call may return the seconds of the part of it that counts; else all of
# it counts.
Call = Callable[[grpc.aio.Channel, int], Callable[[], Awaitable[float | None]]]
# Any client's one holder: slots are given back by the holder they were taken for.
HOLDER = "bench"
# Limits no phase reaches, so every admission is admitted.
UNREACHED = auth_pb2.KeyLimits(
    speech_requests_per_minute=1_000_000,
    speech_concurrent_streams=10_000,
    prediction_creates_per_minute=1_000_000,
    predictions_concurrent=10_000,
)


@dataclass(frozen=True)
class Phase:
    name: str
    call: Call
    # The phase whose p50 this one adds to (+p50 ms).
    versus: str | None = None


@dataclass(frozen=True)
class Result:
    name: str
    clients: int
    latencies: list[float]
    seconds: float
    # The phase whose p50 this one adds to.
    versus: str | None = None

    @property
    def rps(self) -> float:
        return len(self.latencies) / self.seconds

    def percentile_ms(self, fraction: float) -> float:
        ordered = sorted(self.latencies)
        return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] * 1e3


def health_check(channel: grpc.aio.Channel, client: int) -> Callable[[], Awaitable[None]]:
    check = health_pb2_grpc.HealthStub(channel).Check
    request = health_pb2.HealthCheckRequest(service="kokoropay.auth.v1.AuthService")

    async def call() -> None:
        response = await check(request)
        assert response.status == health_pb2.HealthCheckResponse.SERVING

    return call


def verify(key: str, expect_reason: str | None) -> Call:
    request = auth_pb2.VerifyKeyRequest(key=key)

    def on(channel: grpc.aio.Channel, client: int) -> Callable[[], Awaitable[None]]:
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


def admit(keys: list[str], use: auth_pb2.KeyUse) -> Call:
    """VerifyKey with `use`, client n on keys[n % len(keys)]; a slot taken is given back."""

    def on(channel: grpc.aio.Channel, client: int) -> Callable[[], Awaitable[float]]:
        stub = auth_pb2_grpc.AuthServiceStub(channel)
        request = auth_pb2.VerifyKeyRequest(key=keys[client % len(keys)], use=use, holder=HOLDER)

        async def call() -> float:
            begin = time.perf_counter()
            admission = (await stub.VerifyKey(request)).admission
            took = time.perf_counter() - begin
            assert admission.admitted, admission
            if admission.slot_id:
                release = auth_pb2.ReleaseSlotsRequest(holder=HOLDER, slot_ids=[admission.slot_id])
                assert (await stub.ReleaseSlots(release)).released == 1
            return took

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

    async def client(number: int, latencies: list[float]) -> None:
        # Over mutual TLS with the gateway's certificate, as the gateway calls VerifyKey.
        async with channel(address, "gateway") as each:
            once = call(each, number)
            while (begin := time.perf_counter()) < deadline:
                counted = await once()
                if begin >= counted_from:
                    latencies.append(time.perf_counter() - begin if counted is None else counted)

    await asyncio.gather(*(client(n, latencies) for n, latencies in enumerate(per_client)))
    return [latency for latencies in per_client for latency in latencies]


async def issue_keys(address: str, count: int) -> list[str]:
    """`count` keys of one account whose limits no phase reaches."""
    async with channel(address, "operator") as as_operator:
        stub = auth_pb2_grpc.AuthServiceStub(as_operator)
        account = (await stub.CreateAccount(auth_pb2.CreateAccountRequest(name="bench"))).account
        await stub.SetAccountLimits(
            auth_pb2.SetAccountLimitsRequest(account_id=account.id, overrides=UNREACHED)
        )
        keys = []
        for _ in range(count):
            created = await stub.CreateKey(auth_pb2.CreateKeyRequest(account_id=account.id))
            keys.append(str(created.plaintext))
        return keys


async def run(address: str, clients: int, seconds: float, rounds: int) -> list[Result]:
    """Phases take turns in short rounds, so load from neighbours on a shared machine falls on
    the baseline and on VerifyKey alike instead of skewing their ratio."""
    # A key per client, within what one account may hold (keys are shared round-robin past it).
    keys = await issue_keys(address, min(clients, DEFAULT_MAX_KEYS_PER_ACCOUNT))
    key = keys[0]
    plain = "VerifyKey live key"
    phases = [
        Phase("health Check (baseline)", health_check),
        Phase(plain, verify(key, None)),
        Phase("VerifyKey junk", verify("not-a-key", "KEY_INVALID")),
        Phase("VerifyKey speech, one key", admit([key], auth_pb2.KEY_USE_SPEECH), plain),
        Phase("VerifyKey speech, key each", admit(keys, auth_pb2.KEY_USE_SPEECH), plain),
        Phase("VerifyKey create, one key", admit([key], auth_pb2.KEY_USE_PREDICTION_CREATE), plain),
    ]
    slice_seconds = seconds / rounds
    results = []
    for concurrency in sorted({1, clients}):
        latencies: dict[str, list[float]] = {phase.name: [] for phase in phases}
        for _ in range(rounds):
            for phase in phases:
                if concurrency == 1 and phase.name.endswith("key each"):
                    continue  # one client: the same as one key
                latencies[phase.name] += await measure(
                    address, phase.call, concurrency, slice_seconds, warmup=0.2
                )
        results += [
            Result(phase.name, concurrency, latencies[phase.name], seconds, phase.versus)
            for phase in phases
            if latencies[phase.name]
        ]
    return results


def report(results: list[Result]) -> None:
    print(
        f"{'call':<28}{'clients':>8}{'calls':>8}{'rps':>9}{'p50 ms':>9}{'p99 ms':>9}"
        f"{'p50 ×base':>11}{'p99 ×base':>11}{'rps ×base':>11}{'+p50 ms':>10}"
    )
    for concurrency in sorted({r.clients for r in results}):
        rows = [r for r in results if r.clients == concurrency]
        base = rows[0]
        by_name = {r.name: r for r in rows}
        for r in rows:
            added = ""
            if r.versus is not None:
                added = f"{r.percentile_ms(0.5) - by_name[r.versus].percentile_ms(0.5):>+10.2f}"
            print(
                f"{r.name:<28}{r.clients:>8}{len(r.latencies):>8}{r.rps:>9.0f}"
                f"{r.percentile_ms(0.5):>9.2f}{r.percentile_ms(0.99):>9.2f}"
                f"{r.percentile_ms(0.5) / base.percentile_ms(0.5):>11.2f}"
                f"{r.percentile_ms(0.99) / base.percentile_ms(0.99):>11.2f}"
                f"{r.rps / base.rps:>11.2f}{added}"
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
