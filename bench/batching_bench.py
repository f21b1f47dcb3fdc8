"""Batched model calls against one call per chunk: the synth engine, N streams at once.

    python -m bench.batching_bench [--device cpu|cuda] [--streams 1,4] [--chars 400]
        [--rounds 2] [--workers N] [--batch-max-streams N] [--random-weights CONFIG_JSON]
        [--json out.json] [--phonemes-from bench/data/passage_g2p.json]

For each stream count, N requests for the first `--chars` characters of the bench passage start
at once on the service's own engine (its G2P, chunker, scheduler and backend, in this process:
no gRPC, no encoding, so the model's share is all there is), twice: with batching off, as a
CPU runs by default, and on, as CUDA does (SYNTH_BATCH_* defaults; `--workers` and
`--batch-max-streams` set SYNTH_MAX_CONCURRENT and SYNTH_BATCH_MAX_STREAMS, as a deployment
does). Both engines first speak an untimed round (the most streams asked for, a short text), so
that thread start-up and the first batched kernels fall outside the timings. Modes alternate
round by round, so a shared machine's changing load falls on both alike. Reported per stream
count and mode: audio seconds per wall second (all streams' audio over the time until the last
ended), and the time to each stream's first chunk, p50 and p95; then the ratios batched /
unbatched.

On a CPU use `--streams 1,4`; on a GPU `--device cuda --streams 1,8,32,64` (bench/gpu/run.sh).
`--random-weights` builds a randomly initialised model from a kokoro-onnx config.json, for
machines without the weights (the same time per call: bench/random_weights.py).
`--phonemes-from` replays phonemes recorded here (bench/recorded_g2p.py; G2P then costs
nothing, where it costs about 1.5 ms a clause here) and imports Kokoro's model alone, for machines
without misaki and spaCy (bench/gpu/README.md says what else such a machine needs). `--json`
is rewritten after every stream count, so a run cut short keeps what it measured.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass, replace
from pathlib import Path

from bench.model_only import import_model_only
from bench.passage import text_of
from bench.recorded_g2p import replaying
from services.synth.engine.manager import EngineManager, SynthesisCancelled
from services.synth.settings import SynthSettings
from services.synth.voices import VoiceMix

VOICE = VoiceMix((("af_heart", 1.0),))
# The untimed round's text: two chunks, recorded by bench/recorded_g2p.py like the rest.
WARM_UP_CHARS = 120
MODES = ("unbatched", "batched")


@dataclass(frozen=True)
class Run:
    mode: str
    streams: int
    audio_seconds: float
    wall_seconds: float
    first_audio_ms: list[float]

    @property
    def throughput(self) -> float:
        return self.audio_seconds / self.wall_seconds


async def speak_at_once(engine: EngineManager, text: str, streams: int) -> Run:
    """`streams` syntheses of `text` started together, each read to its end."""
    started = time.perf_counter()

    async def one() -> tuple[float, int]:
        first: float | None = None
        samples = 0
        async for chunk in engine.stream(text, VOICE, 1.0, SynthesisCancelled()):
            if first is None:
                first = time.perf_counter() - started
            samples += len(chunk.audio)
        assert first is not None
        return first, samples

    results = await asyncio.gather(*(one() for _ in range(streams)))
    wall = time.perf_counter() - started
    return Run(
        mode="",
        streams=streams,
        audio_seconds=sum(samples for _, samples in results) / engine.sample_rate,
        wall_seconds=wall,
        first_audio_ms=[first * 1e3 for first, _ in results],
    )


def engine_for(args: argparse.Namespace, weights_dir: Path | None, batched: bool) -> EngineManager:
    from services.synth.engine.assembly import engine_from_settings
    from services.synth.engine.model_files import find_weights

    settings = SynthSettings(
        max_concurrent=args.workers,
        batching="on" if batched else "off",
        batch_max_streams=args.batch_max_streams,
    )
    weights = find_weights(weights_dir)
    if args.phonemes_from is None:
        return engine_from_settings(settings, weights, args.device)
    return engine_from_settings(settings, weights, args.device, replaying(args.phonemes_from))


def percentile(values: list[float], share: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(share * (len(ordered) - 1)))]


async def measure(args: argparse.Namespace, weights_dir: Path | None) -> list[Run]:
    text = text_of(args.chars)
    engines = {mode: engine_for(args, weights_dir, mode == "batched") for mode in MODES}
    for mode, engine in engines.items():
        print(f"loading the {mode} engine…", flush=True)
        await engine.start()
        # Untimed: the workers' first calls, and the first batches' kernels, pay for set-up.
        await speak_at_once(engine, text_of(WARM_UP_CHARS), max(args.streams))
    runs: list[Run] = []
    try:
        for measured, streams in enumerate(args.streams, start=1):
            for round_ in range(args.rounds):
                # Alternate which mode goes first, round by round.
                order = MODES if round_ % 2 == 0 else MODES[::-1]
                for mode in order:
                    run = replace(await speak_at_once(engines[mode], text, streams), mode=mode)
                    runs.append(run)
                    print(
                        f"  {streams:3d} streams, round {round_ + 1}/{args.rounds}, {mode:>9}:"
                        f" {run.throughput:7.2f} audio s/s,"
                        f" first audio p50 {statistics.median(run.first_audio_ms):7.0f} ms",
                        flush=True,
                    )
            # After each stream count, not at the end: a run cut short keeps what it measured.
            if args.json:
                write_table(args.json, summarize(runs, args.streams[:measured]))
    finally:
        for engine in engines.values():
            await engine.close()
    return runs


def summarize(runs: list[Run], stream_counts: list[int]) -> list[dict[str, float]]:
    rows = []
    for streams in stream_counts:
        row: dict[str, float] = {"streams": streams}
        for mode in MODES:
            mine = [run for run in runs if run.streams == streams and run.mode == mode]
            firsts = [ms for run in mine for ms in run.first_audio_ms]
            row[f"{mode}_audio_per_second"] = statistics.median(run.throughput for run in mine)
            row[f"{mode}_first_p50_ms"] = statistics.median(firsts)
            row[f"{mode}_first_p95_ms"] = percentile(firsts, 0.95)
        row["throughput_ratio"] = (
            row["batched_audio_per_second"] / row["unbatched_audio_per_second"]
        )
        row["first_p50_ratio"] = row["batched_first_p50_ms"] / row["unbatched_first_p50_ms"]
        rows.append(row)
    return rows


def print_table(rows: list[dict[str, float]], args: argparse.Namespace) -> None:
    print(
        f"\nbatching bench: device={args.device} workers={args.workers}"
        f" batch_max_streams={args.batch_max_streams} chars={args.chars}"
        f" rounds={args.rounds} weights={'random' if args.random_weights else 'resolved'}"
    )
    print(
        f"{'streams':>7} | {'audio s/s':>19} | {'first audio p50 ms':>19} |"
        f" {'first audio p95 ms':>19} | {'ratios batched/unbatched':>26}"
    )
    print(
        f"{'':>7} | {'unbatched':>9} {'batched':>9} | {'unbatched':>9} {'batched':>9} |"
        f" {'unbatched':>9} {'batched':>9} | {'throughput':>12} {'first p50':>13}"
    )
    for row in rows:
        print(
            f"{int(row['streams']):>7} |"
            f" {row['unbatched_audio_per_second']:9.2f} {row['batched_audio_per_second']:9.2f} |"
            f" {row['unbatched_first_p50_ms']:9.0f} {row['batched_first_p50_ms']:9.0f} |"
            f" {row['unbatched_first_p95_ms']:9.0f} {row['batched_first_p95_ms']:9.0f} |"
            f" {row['throughput_ratio']:11.2f}x {row['first_p50_ratio']:12.2f}x"
        )


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--streams",
        type=lambda value: [int(n) for n in value.split(",")],
        default=None,
        help="stream counts, comma-separated (default: 1,4 on a CPU, 1,8,32,64 on CUDA)",
    )
    parser.add_argument("--chars", type=int, default=None, help="default: 400 CPU, 2000 CUDA")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--workers", type=int, default=1, help="model workers in both modes")
    parser.add_argument(
        "--batch-max-streams",
        type=int,
        default=SynthSettings.model_fields["batch_max_streams"].default,
        help="calls per batched model call (SYNTH_BATCH_MAX_STREAMS)",
    )
    parser.add_argument("--random-weights", type=Path, metavar="CONFIG_JSON")
    parser.add_argument("--json", type=Path, help="also write the table here")
    parser.add_argument(
        "--phonemes-from",
        type=Path,
        metavar="RECORDING_JSON",
        help="replay recorded phonemes; for machines without the G2P (bench/recorded_g2p.py)",
    )
    args = parser.parse_args(argv)
    cuda = args.device == "cuda"
    args.streams = args.streams or ([1, 8, 32, 64] if cuda else [1, 4])
    args.chars = args.chars or (2_000 if cuda else 400)
    if args.phonemes_from is not None:
        import_model_only()
    with tempfile.TemporaryDirectory() as scratch:
        weights_dir = None
        if args.random_weights is not None:
            from bench.random_weights import write_random_weights
            from services.synth.voices import V1_VOICES

            weights_dir = write_random_weights(
                args.random_weights, Path(scratch) / "weights", V1_VOICES
            )
        runs = asyncio.run(measure(args, weights_dir))
    print_table(summarize(runs, args.streams), args)  # --json: written by measure()
    return 0


def write_table(path: Path, rows: list[dict[str, float]]) -> None:
    path.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
