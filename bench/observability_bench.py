"""What watching the mesh costs a customer: time to first audio byte and audio throughput
through the gateway, with traces exported and metrics scraped against a mesh without traces.

    python -m bench.observability_bench [--rounds 30] [--json out.json]

Two meshes run side by side on this machine, each its own processes, database and model: one
"observed", exporting every span over OTLP (always sampled, the worst case) to a receiver that
drops them while a scraper reads every process's /metrics each second, and one "plain", with
traces off and nobody scraping. Requests alternate between them, one at a time, so each finds
the machine and its model idle. Per request, the gateway's added time to first byte is the
client's time to first byte minus the gateway's wait for the model (`server-timing`
`synth;dur=`), so the model's variance drops out; throughput is the stream's audio seconds per
wall second, compared per pair of rounds. Targets (issue 16): under 1 ms added at p50, and
throughput within 2 %.

Metrics are counted on both sides (the counters are always recorded; only their export is a
setting): what counting costs is measured on its own by gateway_metrics_bench (the gateway's
HTTP metrics, a few µs a request) and reported in docs/decisions/0016 (the gRPC interceptors,
a few µs a call and side).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import multiprocessing
import statistics
import sys
import uuid
from contextlib import ExitStack, suppress
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx

from bench.gateway_bench import StreamTiming, gateway_stream
from bench.running_mesh import running_mesh
from bench.tracing_bench import _drop_spans, _wait_for_port
from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from services.cli.processes import free_port

# Two sentences: a stream of several chunks, so throughput means something, in a few seconds.
TEXT = (
    "The lighthouse keeper climbed the spiral stairs each evening. "
    "From the top he watched the ships come home."
)
FIRST_BYTE_TARGET_MS = 1.0
THROUGHPUT_TARGET = 0.98


@dataclass
class Report:
    rounds: int
    added_plain_p50_ms: float
    added_observed_p50_ms: float
    observing_cost_p50_ms: float
    throughput_ratio: float
    realtime_plain: float
    realtime_observed: float


async def customer_key(mesh: LocalMesh) -> str:
    async with AdminClient(
        mesh.grpc_address("auth"), mesh.grpc_address("ledger"), mesh.operator_tls
    ) as admin:
        account, _ = await admin.create_account(f"bench-{uuid.uuid4().hex[:8]}", 10**9)
        return (await admin.create_key(account.id, name="bench")).plaintext


async def scrape_every_second(urls: list[str], stop: asyncio.Event) -> None:
    """What a Prometheus does to each process, a little more often than one would."""
    async with httpx.AsyncClient(timeout=10) as client:
        while not stop.is_set():
            for url in urls:
                (await client.get(url)).raise_for_status()
            with suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)


async def measure(plain: LocalMesh, observed: LocalMesh, rounds: int) -> Report:
    keys = {"plain": await customer_key(plain), "observed": await customer_key(observed)}
    timings: dict[str, list[StreamTiming]] = {"plain": [], "observed": []}
    stop = asyncio.Event()
    scrapes = list(observed.metrics_addresses.values())
    scraper = asyncio.create_task(scrape_every_second(scrapes, stop))
    async with (
        httpx.AsyncClient(base_url=plain.addresses["gateway"], timeout=600) as to_plain,
        httpx.AsyncClient(base_url=observed.addresses["gateway"], timeout=600) as to_observed,
    ):
        sides = [("plain", to_plain), ("observed", to_observed)]
        print("warming up…", flush=True)
        for name, http in sides:
            for _ in range(2):
                await gateway_stream(http, keys[name], TEXT)
        for n in range(rounds):
            for name, http in sides if n % 2 == 0 else reversed(sides):
                timings[name].append(await gateway_stream(http, keys[name], TEXT))
            if (n + 1) % 10 == 0:
                print(f"  {n + 1}/{rounds} rounds", flush=True)
    stop.set()
    await scraper

    def added(side: str) -> float:
        return statistics.median(t.first_byte_ms - t.model_wait_ms for t in timings[side])

    ratios = [
        o.realtime_factor / p.realtime_factor
        for p, o in zip(timings["plain"], timings["observed"], strict=True)
    ]
    return Report(
        rounds=rounds,
        added_plain_p50_ms=round(added("plain"), 2),
        added_observed_p50_ms=round(added("observed"), 2),
        observing_cost_p50_ms=round(added("observed") - added("plain"), 2),
        throughput_ratio=round(statistics.median(ratios), 3),
        realtime_plain=round(statistics.median(t.realtime_factor for t in timings["plain"]), 3),
        realtime_observed=round(
            statistics.median(t.realtime_factor for t in timings["observed"]), 3
        ),
    )


def print_report(report: Report) -> None:
    cost_ok = report.observing_cost_p50_ms < FIRST_BYTE_TARGET_MS
    ratio_ok = report.throughput_ratio >= THROUGHPUT_TARGET
    print(
        f"""
added by the gateway to the first audio byte, p50 of {report.rounds} requests per side
  plain (traces off, no scrapes)          {report.added_plain_p50_ms:7.2f} ms
  observed (every span exported, scraped) {report.added_observed_p50_ms:7.2f} ms
  cost of watching                        {report.observing_cost_p50_ms:+7.2f} ms   target < {FIRST_BYTE_TARGET_MS} ms  {"ok" if cost_ok else "MISSED"}
audio throughput (audio seconds per wall second, one stream at a time)
  plain {report.realtime_plain:.3f}, observed {report.realtime_observed:.3f}
  ratio {report.throughput_ratio:.3f}   median of paired rounds   target ≥ {THROUGHPUT_TARGET}  {"ok" if ratio_ok else "MISSED"}"""  # noqa: E501
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m bench.observability_bench", description=__doc__
    )
    parser.add_argument("--rounds", type=int, default=30, help="requests per side (default 30)")
    parser.add_argument("--json", type=Path, help="also write the report here")
    args = parser.parse_args(argv)

    port = free_port()
    # Spawned: a fork of a process that already runs gRPC is not safe.
    receiver = multiprocessing.get_context("spawn").Process(
        target=_drop_spans, args=(port,), daemon=True
    )
    receiver.start()
    traced = {
        "OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{port}",
        "OTEL_TRACES_SAMPLER": "always_on",
    }
    try:
        _wait_for_port(port)
        with ExitStack() as meshes:
            plain = meshes.enter_context(running_mesh())
            observed = meshes.enter_context(running_mesh(traced))
            report = asyncio.run(measure(plain, observed, args.rounds))
    except (RuntimeError, TimeoutError, OSError, grpc.RpcError, httpx.HTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    finally:
        receiver.terminate()
        receiver.join()
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
