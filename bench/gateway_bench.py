"""What the gateway costs on top of synth, measured on a mesh this script starts itself.

    python -m bench.gateway_bench [--rounds 5] [--balance-seconds 5] [--json out.json]

1. Time to first audio byte and audio throughput through the gateway (HTTP, key check, credit
   hold, relay, capture) against calling synth over gRPC directly, interleaved in one run so
   both see the same machine. Targets: at most 15 ms added to the first byte; at least 0.95 of
   the direct throughput. On a shared CPU the model's own time varies by hundreds of
   milliseconds between calls, which swamps a difference of medians; so the added latency is
   also taken per request: the client's time to first byte minus the gateway's wait for the
   model, which the gateway reports in its `server-timing` header (`synth;dur=`).
2. `GET /v1/balance` requests per second (auth VerifyKey + ledger GetBalance behind each), from
   keep-alive connections driven by a minimal client so the load generator is not the limit.
3. The auth and ledger calls a speech request makes (VerifyKey, Reserve, Capture), timed on
   their own over gRPC.

Every phase is bounded (rounds or seconds), so the run ends in a few minutes on a CPU.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
import uuid
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from bench.running_mesh import running_mesh
from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from services.common.channels import open_channel

TEXT = (
    "The quick brown fox jumps over the lazy dog. Kokoro speaks this sentence for the "
    "benchmark, and then a second one, so that the stream has several chunks to relay."
)
VOICE = "af_heart"
# Headerless 16-bit mono at 24 kHz: the audio's duration is its length / 48000.
PCM_BYTES_PER_SECOND = 24_000 * 2


@dataclass
class StreamTiming:
    first_byte_ms: float
    total_s: float
    audio_s: float
    # Through the gateway, from its server-timing header: the wait for the model's first audio,
    # and its auth and ledger calls before it.
    model_wait_ms: float = 0.0
    auth_ms: float = 0.0
    reserve_ms: float = 0.0

    @property
    def realtime_factor(self) -> float:
        return self.audio_s / self.total_s


@dataclass
class Report:
    rounds: int
    direct_first_byte_ms: float
    gateway_first_byte_ms: float
    added_first_byte_ms: float
    added_per_request_p50_ms: float
    added_per_request_max_ms: float
    direct_realtime: float
    gateway_realtime: float
    throughput_ratio: float
    balance_rps: float
    balance_p50_ms: float
    balance_p99_ms: float
    verify_key_p50_ms: float
    reserve_p50_ms: float
    capture_p50_ms: float
    auth_ledger_per_request_ms: float


async def direct_stream(synth: synth_pb2_grpc.SynthServiceStub) -> StreamTiming:
    started = time.perf_counter()
    first = 0.0
    size = 0
    call = synth.Synthesize(
        synth_pb2.SynthesizeRequest(text=TEXT, voice=VOICE, format=synth_pb2.AUDIO_FORMAT_PCM)
    )
    async for chunk in call:
        if chunk.audio and not first:
            first = time.perf_counter() - started
        size += len(chunk.audio)
    return StreamTiming(first * 1e3, time.perf_counter() - started, size / PCM_BYTES_PER_SECOND)


async def gateway_stream(http: httpx.AsyncClient, key: str, text: str = TEXT) -> StreamTiming:
    started = time.perf_counter()
    first = 0.0
    size = 0
    body = {"input": text, "voice": VOICE, "response_format": "pcm"}
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("POST", "/v1/audio/speech", json=body, headers=headers) as response:
        response.raise_for_status()
        async for data in response.aiter_raw():
            if data and not first:
                first = time.perf_counter() - started
            size += len(data)
        timings = dict(
            entry.strip().split(";dur=") for entry in response.headers["server-timing"].split(",")
        )
    return StreamTiming(
        first * 1e3,
        time.perf_counter() - started,
        size / PCM_BYTES_PER_SECOND,
        model_wait_ms=float(timings["synth"]),
        auth_ms=float(timings["auth"]),
        reserve_ms=float(timings["reserve"]),
    )


async def balance_load(
    gateway_url: str, key: str, seconds: float, concurrency: int
) -> tuple[float, list[float]]:
    """`concurrency` keep-alive connections, each sending GET /v1/balance back to back."""
    host, port = gateway_url.removeprefix("http://").split(":")
    request = (
        f"GET /v1/balance HTTP/1.1\r\nHost: {host}\r\nAuthorization: Bearer {key}\r\n\r\n"
    ).encode()
    latencies: list[float] = []
    deadline = time.perf_counter() + seconds

    async def connection() -> None:
        reader, writer = await asyncio.open_connection(host, int(port))
        try:
            while time.perf_counter() < deadline:
                started = time.perf_counter()
                writer.write(request)
                head = await reader.readuntil(b"\r\n\r\n")
                if not head.startswith(b"HTTP/1.1 200"):
                    raise RuntimeError(f"/v1/balance answered {head[:40]!r}")
                length = next(
                    int(line.split(b":")[1])
                    for line in head.split(b"\r\n")
                    if line.lower().startswith(b"content-length:")
                )
                await reader.readexactly(length)
                latencies.append((time.perf_counter() - started) * 1e3)
        finally:
            writer.close()

    started = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(concurrency)))
    return len(latencies) / (time.perf_counter() - started), latencies


async def money_calls(
    auth: auth_pb2_grpc.AuthServiceStub,
    ledger: ledger_pb2_grpc.LedgerServiceStub,
    key: str,
    account_id: str,
    count: int,
) -> tuple[list[float], list[float], list[float]]:
    """VerifyKey, Reserve and Capture as the gateway makes them, one request after another."""
    verify: list[float] = []
    reserve: list[float] = []
    capture: list[float] = []
    for _ in range(count):
        started = time.perf_counter()
        await auth.VerifyKey(auth_pb2.VerifyKeyRequest(key=key))
        verify.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        held = await ledger.Reserve(
            ledger_pb2.ReserveRequest(
                account_id=account_id,
                amount=len(TEXT),
                idempotency_key=f"bench:{uuid.uuid4().hex}",
                ttl_seconds=60,
            )
        )
        reserve.append((time.perf_counter() - started) * 1e3)
        started = time.perf_counter()
        await ledger.Capture(ledger_pb2.CaptureRequest(hold_id=held.hold.id))
        capture.append((time.perf_counter() - started) * 1e3)
    return verify, reserve, capture


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


async def measure(mesh: LocalMesh, rounds: int, balance_seconds: float) -> Report:
    async with AdminClient(
        mesh.grpc_address("auth"), mesh.grpc_address("ledger"), mesh.operator_tls
    ) as admin:
        account, _ = await admin.create_account(f"bench-{uuid.uuid4().hex[:8]}", 10**9)
        key = (await admin.create_key(account.id, name="bench")).plaintext

    # Called as the gateway calls them (its certificate), for an honest baseline.
    gateway_tls = mesh.pki.identity("gateway")
    channels = [
        open_channel(mesh.grpc_address(name), gateway_tls) for name in ("synth", "auth", "ledger")
    ]
    synth = synth_pb2_grpc.SynthServiceStub(channels[0])
    auth = auth_pb2_grpc.AuthServiceStub(channels[1])
    ledger = ledger_pb2_grpc.LedgerServiceStub(channels[2])
    async with httpx.AsyncClient(base_url=mesh.addresses["gateway"], timeout=600) as http:
        print("warming up…", flush=True)
        await direct_stream(synth)
        await gateway_stream(http, key)
        direct: list[StreamTiming] = []
        gateway: list[StreamTiming] = []
        for n in range(rounds):
            # Alternate who goes first, so neither always finds the model warmer.
            if n % 2 == 0:
                direct.append(await direct_stream(synth))
                gateway.append(await gateway_stream(http, key))
            else:
                gateway.append(await gateway_stream(http, key))
                direct.append(await direct_stream(synth))
            print(
                f"  round {n + 1}/{rounds}: first byte"
                f" direct {direct[-1].first_byte_ms:7.1f} ms,"
                f" gateway {gateway[-1].first_byte_ms:7.1f} ms"
                f" (model {gateway[-1].model_wait_ms:.1f}, auth {gateway[-1].auth_ms:.1f},"
                f" reserve {gateway[-1].reserve_ms:.1f} ms); real time"
                f" ×{direct[-1].realtime_factor:.2f} / ×{gateway[-1].realtime_factor:.2f}",
                flush=True,
            )
    print(f"/v1/balance for {balance_seconds:.0f} s…", flush=True)
    rps, latencies = await balance_load(
        mesh.addresses["gateway"], key, balance_seconds, concurrency=16
    )
    print("auth and ledger calls…", flush=True)
    verify, reserve, capture = await money_calls(auth, ledger, key, account.id, count=200)
    for channel in channels:
        await channel.close()

    direct_first = statistics.median(t.first_byte_ms for t in direct)
    gateway_first = statistics.median(t.first_byte_ms for t in gateway)
    direct_rt = statistics.median(t.realtime_factor for t in direct)
    gateway_rt = statistics.median(t.realtime_factor for t in gateway)
    added = [t.first_byte_ms - t.model_wait_ms for t in gateway]
    # Paired by round, so a slow stretch of the machine hits both sides of a ratio.
    ratios = [g.realtime_factor / d.realtime_factor for g, d in zip(gateway, direct, strict=True)]
    return Report(
        rounds=rounds,
        direct_first_byte_ms=round(direct_first, 1),
        gateway_first_byte_ms=round(gateway_first, 1),
        added_first_byte_ms=round(gateway_first - direct_first, 1),
        added_per_request_p50_ms=round(statistics.median(added), 2),
        added_per_request_max_ms=round(max(added), 2),
        direct_realtime=round(direct_rt, 3),
        gateway_realtime=round(gateway_rt, 3),
        throughput_ratio=round(statistics.median(ratios), 3),
        balance_rps=round(rps, 1),
        balance_p50_ms=round(p(latencies, 0.5), 2),
        balance_p99_ms=round(p(latencies, 0.99), 2),
        verify_key_p50_ms=round(p(verify, 0.5), 2),
        reserve_p50_ms=round(p(reserve, 0.5), 2),
        capture_p50_ms=round(p(capture, 0.5), 2),
        auth_ledger_per_request_ms=round(
            statistics.median(a + b + c for a, b, c in zip(verify, reserve, capture, strict=True)),
            2,
        ),
    )


def print_report(report: Report) -> None:
    added_ok = report.added_per_request_p50_ms <= 15
    ratio_ok = report.throughput_ratio >= 0.95
    print(
        f"""
time to first audio byte (median of {report.rounds})
  synth over gRPC      {report.direct_first_byte_ms:8.1f} ms
  through the gateway  {report.gateway_first_byte_ms:8.1f} ms   (difference {report.added_first_byte_ms:+.1f} ms: mostly the model's own variance)
  added by the gateway {report.added_per_request_p50_ms:8.2f} ms   per request, p50 (max {report.added_per_request_max_ms} ms)   target ≤ 15 ms  {"ok" if added_ok else "MISSED"}
audio throughput (seconds of audio per second)
  synth over gRPC      {report.direct_realtime:8.3f}
  through the gateway  {report.gateway_realtime:8.3f}
  ratio                {report.throughput_ratio:8.3f}      median of paired rounds   target ≥ 0.95   {"ok" if ratio_ok else "MISSED"}
GET /v1/balance, 16 concurrent clients
  {report.balance_rps:.0f} requests/s, p50 {report.balance_p50_ms} ms, p99 {report.balance_p99_ms} ms
auth + ledger per speech request (p50, sequential)
  VerifyKey {report.verify_key_p50_ms} ms + Reserve {report.reserve_p50_ms} ms + Capture {report.capture_p50_ms} ms = {report.auth_ledger_per_request_ms} ms"""  # noqa: E501
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.gateway_bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=6, help="streams per side (default 6)")
    parser.add_argument("--balance-seconds", type=float, default=5.0)
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    try:
        with running_mesh() as mesh:
            report = asyncio.run(measure(mesh, args.rounds, args.balance_seconds))
    except (RuntimeError, TimeoutError, grpc.RpcError, httpx.HTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
