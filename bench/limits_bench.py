"""What per-key limits add to the time to first audio byte: one mesh, two gateway replicas, one
counting every request against its key's limits and one with GATEWAY_KEY_LIMITS=false.

    python -m bench.limits_bench [--rounds 40] [--json out.json]

Both replicas share auth, ledger and synth; their requests alternate, one at a time, so each
side sees the same machine and an idle model. A request's added time is its client-side time to
first byte minus the gateway's wait for the model (its `server-timing` `synth;dur=`), so the
model's own variance drops out; the limits' cost is the difference of the two sides' medians.
Target: at most 1 ms at p50 (issue 15). Also reported: the gateway's auth phase alone
(`auth;dur=`), where the limits do their work (VerifyKey with a use: the key's window counted
and a stream slot taken in the same call); giving the slot back happens after the response.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx

from bench.gateway_bench import StreamTiming, gateway_stream
from bench.running_mesh import running_mesh
from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh

TARGET_MS = 1.0
# One short sentence: the model's time per request stays well under a second on a CPU.
TEXT = "Limits are counted in the same call that checks the key."


@dataclass
class Report:
    rounds: int
    added_on_p50_ms: float
    added_off_p50_ms: float
    limits_cost_p50_ms: float
    auth_on_p50_ms: float
    auth_off_p50_ms: float
    first_byte_on_p50_ms: float
    first_byte_off_p50_ms: float


async def measure(mesh: LocalMesh, unlimited_url: str, rounds: int) -> Report:
    async with AdminClient(
        mesh.grpc_address("auth"), mesh.grpc_address("ledger"), mesh.operator_tls
    ) as admin:
        account, _ = await admin.create_account(f"bench-{uuid.uuid4().hex[:8]}", 10**9)
        key = (await admin.create_key(account.id, name="bench")).plaintext

    on: list[StreamTiming] = []
    off: list[StreamTiming] = []
    async with (
        httpx.AsyncClient(base_url=mesh.addresses["gateway"], timeout=600) as limited,
        httpx.AsyncClient(base_url=unlimited_url, timeout=600) as unlimited,
    ):
        print("warming up…", flush=True)
        for _ in range(2):
            await gateway_stream(limited, key, TEXT)
            await gateway_stream(unlimited, key, TEXT)
        for n in range(rounds):
            # Alternate who goes first, so neither always follows the other's settlement.
            pair = [(limited, on), (unlimited, off)]
            for http, timings in pair if n % 2 == 0 else reversed(pair):
                timings.append(await gateway_stream(http, key, TEXT))
            if (n + 1) % 10 == 0:
                print(f"  {n + 1}/{rounds} rounds", flush=True)

    def added(timings: list[StreamTiming]) -> float:
        return statistics.median(t.first_byte_ms - t.model_wait_ms for t in timings)

    return Report(
        rounds=rounds,
        added_on_p50_ms=round(added(on), 2),
        added_off_p50_ms=round(added(off), 2),
        limits_cost_p50_ms=round(added(on) - added(off), 2),
        auth_on_p50_ms=round(statistics.median(t.auth_ms for t in on), 2),
        auth_off_p50_ms=round(statistics.median(t.auth_ms for t in off), 2),
        first_byte_on_p50_ms=round(statistics.median(t.first_byte_ms for t in on), 1),
        first_byte_off_p50_ms=round(statistics.median(t.first_byte_ms for t in off), 1),
    )


def print_report(report: Report) -> None:
    ok = report.limits_cost_p50_ms <= TARGET_MS
    print(
        f"""
added by the gateway to the first audio byte, p50 of {report.rounds} requests per side
  limits off (baseline)  {report.added_off_p50_ms:7.2f} ms   (auth phase {report.auth_off_p50_ms:.2f} ms)
  limits on              {report.added_on_p50_ms:7.2f} ms   (auth phase {report.auth_on_p50_ms:.2f} ms)
  cost of the limits     {report.limits_cost_p50_ms:+7.2f} ms   ratio {report.added_on_p50_ms / max(report.added_off_p50_ms, 1e-9):.3f}   target ≤ {TARGET_MS} ms  {"ok" if ok else "MISSED"}
time to first byte, p50: on {report.first_byte_on_p50_ms} ms, off {report.first_byte_off_p50_ms} ms (the model's time dominates)"""  # noqa: E501
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.limits_bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=40, help="requests per side (default 40)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    try:
        with running_mesh() as mesh:
            unlimited = mesh.replica("gateway", {"GATEWAY_KEY_LIMITS": "false"})
            try:
                unlimited.start(timeout=90)
                report = asyncio.run(measure(mesh, f"http://{unlimited.address}", args.rounds))
            finally:
                unlimited.stop()
    except (RuntimeError, TimeoutError, grpc.RpcError, httpx.HTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
