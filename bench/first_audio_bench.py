"""First audio through the gateway against the model's own time, idle and right after a hang-up.

    python -m bench.first_audio_bench [--tries 5] [--size-rounds 3] [--json out.json]

1. The model's time per phoneme at about 50, 100 and 200 phonemes (one chunk each, interleaved
   round by round), in this process with the service's own backend and G2P, before the mesh
   starts: wall time and the process's CPU time, which a shared machine's other load moves
   less (on one torch thread by default, so that CPU time is the model's work). It is what
   the later chunks' budget is chosen from (services/synth/README.md, "Chunks").
2. On a mesh this script starts: the first 200 characters of the bench passage
   (bench/passage.py), through the gateway, `--tries` times: the time to the first audio
   byte, against the model's time for the first chunk, read from synth's metrics
   (`kokoropay_synth_model_call_seconds`, the one call finished by then). The rest of the path
   (G2P, scheduling, encoding, gRPC, the gateway) is their difference. Target: under 100 ms at
   p50.
3. The same request sent right after another client hung up just after its first audio piece.
   Target: first audio within 2x of idle at p50, and no model call of the abandoned stream but
   the one in flight: the model calls finished by the measured request's first audio are
   counted (one idle, at most two after a hang-up), and those until synth is idle again.
   The hang-up often reaches synth before the leaving stream's second chunk is planned, and
   then costs nothing; so it runs a second time with the leaving client gone only once that
   second chunk is being spoken (synth's active gauge says so): the floor, since a torch call
   cannot be interrupted.

Each measured request is read to its end (so its own model calls are the same in every
scenario, and the abandoned stream's are the difference), and the next try waits until synth
has no model call running or waiting, so every try starts from the same state.
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import grpc
import httpx

from bench.passage import PASSAGE, text_of
from bench.running_mesh import running_mesh
from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from tests.support.metrics import Exposition

TEXT = text_of(200)
VOICE = "af_heart"
CALLS = "kokoropay_synth_model_call_seconds_count"
CALL_SECONDS = "kokoropay_synth_model_call_seconds_sum"
SIZES = (50, 100, 200)
IDLE = "idle"
HANG_UP = "right after a hang-up"
HANG_UP_IN_FLIGHT = "after a hang-up, its next call running"
SCENARIOS = (IDLE, HANG_UP, HANG_UP_IN_FLIGHT)


@dataclass
class SizeTiming:
    phonemes: int
    wall_ms: float
    cpu_ms: float
    audio_seconds: float


@dataclass
class Try:
    first_audio_ms: float
    # The gateway's wait for synth's first piece (its server-timing `synth;dur=`).
    synth_ms: float
    # Model calls finished between sending the request and its first audio, and their seconds.
    calls_before_first_audio: int
    model_ms: float
    # Model calls from sending the request until synth is idle again: its own (it is read to its
    # end), and after a hang-up those the other client's stream still cost.
    calls_until_idle: int


@dataclass
class Report:
    sizes: list[SizeTiming]
    # By scenario (SCENARIOS).
    tries: dict[str, list[Try]]


# --- 1. model time per phoneme ------------------------------------------------------------------


def model_time_per_phoneme(rounds: int, threads: int) -> list[SizeTiming]:
    """Calls of about 50, 100 and 200 phonemes, interleaved, on the service's own backend."""
    from services.synth.engine.kokoro_backend import KokoroBackend, choose_device
    from services.synth.engine.model_files import find_weights
    from services.synth.settings import SynthSettings
    from services.synth.text.g2p import build_phonemizers
    from services.synth.text.normalize import normalize
    from services.synth.text.words import Pronunciation
    from services.synth.voices import VoiceMix

    settings = SynthSettings(port=1)
    backend = KokoroBackend(find_weights(settings.weights_dir), choose_device("cpu"), threads)
    backend.load()
    phonemes = Pronunciation.of(build_phonemizers("a")["a"](normalize(PASSAGE))).phonemes
    voice = VoiceMix(((VOICE, 1.0),))

    def cut(size: int) -> str:
        head = phonemes[:size]
        return head[: head.rfind(" ")]

    backend.generate(cut(50), voice, 1.0)  # warm-up
    timings: list[SizeTiming] = []
    for round_ in range(rounds):
        for size in SIZES:
            chunk = cut(size)
            wall, cpu = time.perf_counter(), time.process_time()
            audio = backend.generate(chunk, voice, 1.0).audio
            timing = SizeTiming(
                len(chunk),
                (time.perf_counter() - wall) * 1e3,
                (time.process_time() - cpu) * 1e3,
                len(audio) / backend.sample_rate,
            )
            timings.append(timing)
            print(
                f"  round {round_ + 1}/{rounds}: {timing.phonemes:3d} phonemes"
                f" {timing.wall_ms:8.0f} ms wall {timing.cpu_ms:8.0f} ms CPU",
                flush=True,
            )
    del backend
    gc.collect()
    return timings


# --- 2 and 3. first audio through the gateway ---------------------------------------------------


async def scrape(http: httpx.AsyncClient, url: str) -> Exposition:
    return Exposition.parse((await http.get(url)).text)


async def idle(http: httpx.AsyncClient, url: str) -> None:
    """Until synth has no model call running or waiting (a hung-up stream's last one ends)."""
    deadline = time.monotonic() + 600
    while True:
        metrics = await scrape(http, url)
        if not metrics.total("kokoropay_synth_active_streams") and not metrics.total(
            "kokoropay_synth_queued_streams"
        ):
            return
        if time.monotonic() > deadline:
            raise TimeoutError("synth never went idle")
        await asyncio.sleep(0.05)


async def speak(
    http: httpx.AsyncClient,
    key: str,
    text: str,
    *,
    hang_up: bool,
    at_first_audio: Callable[[], Awaitable[None]] | None = None,
) -> tuple[float, float]:
    """Seconds to the first audio byte and the gateway's synth wait. At the first byte
    `at_first_audio` runs; then the client reads the rest, or hangs up."""
    started = time.perf_counter()
    body = {"input": text, "voice": VOICE, "response_format": "pcm"}
    headers = {"Authorization": f"Bearer {key}"}
    async with http.stream("POST", "/v1/audio/speech", json=body, headers=headers) as response:
        response.raise_for_status()
        # Held, not left to the garbage collector: closing it closes the connection.
        pieces = response.aiter_raw()
        while not await anext(pieces):
            pass
        first = time.perf_counter() - started
        timings = dict(
            entry.strip().split(";dur=") for entry in response.headers["server-timing"].split(",")
        )
        if at_first_audio is not None:
            await at_first_audio()
        if not hang_up:
            async for _ in pieces:
                pass
        # Leaving unread closes the connection: the gateway sees the client gone.
        await response.aclose()
    return first, float(timings["synth"]) / 1e3


async def measured(
    speech: httpx.AsyncClient, metrics: httpx.AsyncClient, url: str, key: str
) -> Try:
    """The measured request, read to its end; synth's metrics before, at its first audio
    (the calls finished by then), and once synth is idle again."""
    scrapes = [await scrape(metrics, url)]

    async def at_first_audio() -> None:
        scrapes.append(await scrape(metrics, url))

    first, synth = await speak(speech, key, TEXT, hang_up=False, at_first_audio=at_first_audio)
    await idle(metrics, url)
    before, at_first, settled = *scrapes, await scrape(metrics, url)
    return Try(
        first_audio_ms=first * 1e3,
        synth_ms=synth * 1e3,
        calls_before_first_audio=int(at_first.delta(before, CALLS)),
        model_ms=at_first.delta(before, CALL_SECONDS) * 1e3,
        calls_until_idle=int(settled.delta(before, CALLS)),
    )


async def scenarios(mesh: LocalMesh, tries: int) -> dict[str, list[Try]]:
    async with AdminClient(
        mesh.grpc_address("auth"), mesh.grpc_address("ledger"), mesh.operator_tls
    ) as admin:
        account, _ = await admin.create_account(f"bench-{uuid.uuid4().hex[:8]}", 10**9)
        key = (await admin.create_key(account.id, name="bench")).plaintext
    url = mesh.metrics_addresses["synth"]
    gateway = mesh.addresses["gateway"]
    results: dict[str, list[Try]] = {scenario: [] for scenario in SCENARIOS}
    async with (
        httpx.AsyncClient(base_url=gateway, timeout=600) as speech,
        httpx.AsyncClient(base_url=gateway, timeout=600) as leaving,
        httpx.AsyncClient(timeout=30) as metrics,
    ):

        async def its_next_call_running() -> None:
            deadline = time.monotonic() + 60
            while not (await scrape(metrics, url)).total("kokoropay_synth_active_streams"):
                if time.monotonic() > deadline:
                    raise TimeoutError("the leaving client's second chunk never started")
                await asyncio.sleep(0.01)

        print("warming up…", flush=True)
        await speak(speech, key, TEXT, hang_up=False)
        for n in range(tries):
            # Rotate which goes first, so none always finds the machine in the same state.
            for scenario in SCENARIOS[n % 3 :] + SCENARIOS[: n % 3]:
                await idle(metrics, url)
                if scenario == HANG_UP:
                    # Another client: its first audio, then gone at once.
                    await speak(leaving, key, PASSAGE, hang_up=True)
                elif scenario == HANG_UP_IN_FLIGHT:
                    # The same, gone once its second chunk is surely being spoken.
                    await speak(
                        leaving, key, PASSAGE, hang_up=True, at_first_audio=its_next_call_running
                    )
                result = await measured(speech, metrics, url, key)
                results[scenario].append(result)
                print(
                    f"  try {n + 1}/{tries} {scenario:>38}: first audio"
                    f" {result.first_audio_ms:6.0f} ms (synth {result.synth_ms:6.0f}),"
                    f" {result.calls_before_first_audio} call(s) before it,"
                    f" {result.model_ms:6.0f} ms of model time;"
                    f" {result.calls_until_idle} call(s) until idle",
                    flush=True,
                )
        await idle(metrics, url)
    return results


# --- report -------------------------------------------------------------------------------------


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def print_report(report: Report) -> None:
    if report.sizes:
        print("\nmodel time per phoneme, by chunk size (median over rounds)")
        print(
            f"  {'phonemes':>8} {'wall ms':>9} {'wall ms/ph':>11} {'CPU ms/ph':>10} {'audio s':>8}"
        )
        for size in sorted({t.phonemes for t in report.sizes}):
            rows = [t for t in report.sizes if t.phonemes == size]
            wall = statistics.median(t.wall_ms for t in rows)
            cpu = statistics.median(t.cpu_ms for t in rows)
            print(
                f"  {size:>8} {wall:>9.0f} {wall / size:>11.1f} {cpu / size:>10.1f}"
                f" {rows[0].audio_seconds:>8.2f}"
            )
    idle = report.tries.get(IDLE)
    if not idle:
        return
    model = [t.model_ms for t in idle if t.calls_before_first_audio == 1]
    rest = [t.first_audio_ms - t.model_ms for t in idle if t.calls_before_first_audio == 1]
    idle_p50 = p([t.first_audio_ms for t in idle], 0.5)
    # The measured request's own calls, the same in every scenario.
    own_calls = statistics.median(t.calls_until_idle for t in idle)
    print(f"\nfirst audio through the gateway, {len(TEXT)} characters ({len(idle)} tries each)")
    print(
        f"  {'':<38} {'p50 ms':>7} {'p95 ms':>7} {'/ idle':>7}"
        f" {'calls before':>13} {'abandoned calls':>16}"
    )
    for scenario, tries in report.tries.items():
        firsts = [t.first_audio_ms for t in tries]
        calls = max(t.calls_before_first_audio for t in tries)
        extra = statistics.median(t.calls_until_idle for t in tries) - own_calls
        print(
            f"  {scenario:<38} {p(firsts, 0.5):>7.0f} {p(firsts, 0.95):>7.0f}"
            f" {p(firsts, 0.5) / idle_p50:>7.2f} {calls:>13} {extra:>16g}"
        )
    if model:
        name = "model time, first chunk (idle)"
        print(f"  {name:<38} {p(model, 0.5):>7.0f} {p(model, 0.95):>7.0f}")
    print(
        "  (calls before: the most model calls finished by first audio; abandoned calls: the"
        " leaving stream's model calls after it hung up, median)"
    )
    if model:
        rest_p50 = p(rest, 0.5)
        verdict = "ok" if rest_p50 < 100 else "MISSED"
        print(
            f"\n  rest of the path (first audio - model), idle: p50 {rest_p50:.0f} ms,"
            f" p95 {p(rest, 0.95):.0f} ms   target < 100 ms at p50: {verdict}"
        )
    for scenario in (HANG_UP, HANG_UP_IN_FLIGHT):
        tries = report.tries.get(scenario, [])
        if not tries:
            continue
        ratio = p([t.first_audio_ms for t in tries], 0.5) / idle_p50
        most = max(t.calls_before_first_audio for t in tries)
        print(
            f"  {scenario}: p50 {ratio:.2f}x idle, target <= 2: {'ok' if ratio <= 2 else 'MISSED'};"
            f" at most {most} model calls before first audio, target <= 2 (its own and the"
            f" abandoned stream's call in flight): {'ok' if most <= 2 else 'MISSED'}"
        )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.first_audio_bench", description=__doc__)
    parser.add_argument("--tries", type=int, default=5, help="requests per scenario (default 5)")
    parser.add_argument(
        "--size-rounds", type=int, default=3, help="rounds of the per-phoneme phase; 0 skips it"
    )
    parser.add_argument(
        "--size-threads",
        type=int,
        default=1,
        help="torch threads for the per-phoneme phase (default 1: its CPU time is then the"
        " model's work, not time spent waiting for other threads; 0: torch's default)",
    )
    parser.add_argument("--json", type=Path, help="also write the measurements here")
    args = parser.parse_args(argv)

    sizes: list[SizeTiming] = []
    if args.size_rounds:
        print("model time per phoneme (in this process)…", flush=True)
        sizes = model_time_per_phoneme(args.size_rounds, args.size_threads)
    try:
        with running_mesh() as mesh:
            tries = asyncio.run(scenarios(mesh, args.tries))
    except (RuntimeError, TimeoutError, grpc.RpcError, httpx.HTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    report = Report(sizes, tries)
    print_report(report)
    if args.json:
        args.json.write_text(json.dumps(asdict(report), indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
