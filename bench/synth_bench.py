"""Synthesis speed: the gRPC service against Kokoro's own KPipeline, in one run.

    python -m bench.synth_bench [--device cpu|cuda] [--streams N] [--random-weights CONFIG_JSON]

For 200 and 2,000 characters it measures audio seconds per wall second and the time to the
first audio chunk, three ways, interleaved run by run (never at once, so they do not compete,
and a shared machine's changing load falls on all three alike):
- service: `python -m services.synth` as a real process, over gRPC, encoded (mp3 by default);
- kpipeline: `KPipeline(lang_code, model=KModel(...))(text, voice)` in this process, as
  Kokoro's README calls it (it cuts text at 510 phonemes, so its first chunk is long);
- same chunks: the service's own chunk plan spoken by KModel in this process, no gRPC and no
  encoding: the service's overhead alone.
Short inputs run `--repeats` times (medians reported). It prints the ratios against the
targets (throughput >= 0.95x, first-chunk overhead <= 50 ms).
`--streams N` runs N requests at once in every mode (for GPUs). `--random-weights` builds a
randomly initialised model from a kokoro-onnx config.json, for machines without the weights.
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from bench.passage import text_of
from services.cli.processes import ServiceProcess
from tests.support.pki import sync_channel, tls_env

RATE = 24_000
SIZES = (200, 2_000)


@dataclass(frozen=True)
class Run:
    first_chunk_seconds: float
    wall_seconds: float
    audio_seconds: float


@dataclass
class Result:
    mode: str
    characters: int
    # One list of concurrent runs per repeat.
    rounds: list[list[Run]] = field(default_factory=list)

    @property
    def audio_seconds(self) -> float:
        return sum(run.audio_seconds for run in self.rounds[0])

    @property
    def throughput(self) -> float:
        """Audio seconds per wall second, all streams together; the median repeat."""
        return statistics.median(
            sum(run.audio_seconds for run in runs) / max(run.wall_seconds for run in runs)
            for runs in self.rounds
        )

    @property
    def first_chunk(self) -> float:
        return statistics.median(run.first_chunk_seconds for runs in self.rounds for run in runs)


def concurrently(streams: int, once: Callable[[], Run]) -> list[Run]:
    """`streams` runs of `once` started together."""
    results: list[Run] = []
    errors: list[BaseException] = []
    barrier = threading.Barrier(streams)

    def worker() -> None:
        barrier.wait()
        try:
            results.append(once())
        except BaseException as error:  # reported by the caller
            errors.append(error)

    threads = [threading.Thread(target=worker) for _ in range(streams)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    if errors:
        raise errors[0]
    return results


def timed(chunks: Iterator[float]) -> Run:
    """A Run from an iterator yielding each chunk's audio seconds as it arrives."""
    started = time.perf_counter()
    first = None
    audio = 0.0
    for seconds in chunks:
        if first is None:
            first = time.perf_counter() - started
        audio += seconds
    return Run(first or 0.0, time.perf_counter() - started, audio)


def out_of_time(args: argparse.Namespace, mode: str, size: int) -> bool:
    if time.monotonic() < args.deadline:
        return False
    print(f"--max-seconds reached: stopped before {mode} at {size} characters")
    return True


# --- the three modes -----------------------------------------------------------------------------


Mode = Callable[[str], Run]


@contextmanager
def service_mode(
    args: argparse.Namespace, weights_dir: Path | None, log_dir: Path
) -> Iterator[Mode]:
    """`python -m services.synth` as a process; one request, read to its end, per run."""
    env = {
        "SYNTH_DEVICE": args.device,
        "SYNTH_MAX_CONCURRENT": str(args.streams),
        "SYNTH_LOG_LEVEL": "WARNING",
        **tls_env("synth"),
    }
    if weights_dir is not None:
        env["SYNTH_WEIGHTS_DIR"] = str(weights_dir)
    if args.torch_threads:
        env["SYNTH_TORCH_THREADS"] = str(args.torch_threads)
    process = ServiceProcess("synth", env=env, log_dir=log_dir).start(timeout=args.start_timeout)
    audio_format = synth_pb2.AudioFormat.Value(f"AUDIO_FORMAT_{args.format.upper()}")
    try:
        # Over mutual TLS with the gateway's certificate, as synth is called in the mesh.
        with sync_channel(process.address, "gateway") as channel:
            stub = synth_pb2_grpc.SynthServiceStub(channel)

            def once(text: str) -> Run:
                request = synth_pb2.SynthesizeRequest(
                    text=text, voice=args.voice, format=audio_format
                )
                return timed(
                    chunk.duration_seconds for chunk in stub.Synthesize(request, timeout=600)
                )

            yield once
    finally:
        process.stop()


def in_process_modes(args: argparse.Namespace, weights_dir: Path | None) -> dict[str, Mode]:
    """KPipeline as its README calls it, and KModel over the service's own chunk plan."""
    import torch
    from kokoro import KModel, KPipeline
    from loguru import logger

    from services.synth.engine.kokoro_backend import choose_device
    from services.synth.engine.model_files import find_weights
    from services.synth.models import HUB_REPO_ID
    from services.synth.settings import MODEL_MAX_PHONEMES, SynthSettings
    from services.synth.text.chunking import ChunkBudgets, plan_chunks
    from services.synth.text.g2p_spacy_alias import install_en_core_web_sm_alias

    logger.disable("kokoro")
    install_en_core_web_sm_alias()
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    if args.torch_threads:
        torch.set_num_threads(args.torch_threads)
    weights = find_weights(weights_dir)
    device = choose_device(args.device)
    model = KModel(
        repo_id=HUB_REPO_ID,
        config=str(weights.config_path),
        model=str(weights.model_path),
    )
    model = model.to(device).eval()
    pipeline = KPipeline(lang_code=args.voice[0], repo_id=HUB_REPO_ID, model=model)
    voice_path = str(weights.voice_path(args.voice))
    pack = pipeline.load_voice(voice_path).to(device)
    defaults = SynthSettings(port=1)
    budgets = ChunkBudgets(
        defaults.first_chunk_phonemes, defaults.chunk_budget(device), MODEL_MAX_PHONEMES
    )

    def kpipeline(text: str) -> Run:
        return timed(
            len(result.audio) / RATE
            for result in pipeline(text, voice=voice_path)
            if result.audio is not None
        )

    def same_chunks(text: str) -> Run:
        def phonemize(piece: str) -> str:
            return str(pipeline.g2p(piece)[0] or "").strip()

        def spoken() -> Iterator[float]:
            for chunk in plan_chunks(text, phonemize, budgets):
                if chunk.phonemes:
                    with torch.inference_mode():
                        audio = model(chunk.phonemes, pack[len(chunk.phonemes) - 1], 1.0)
                    yield len(audio) / RATE

        return timed(spoken())

    return {"kpipeline": kpipeline, "same chunks": same_chunks}


def measure(modes: dict[str, Mode], args: argparse.Namespace) -> list[Result]:
    """Every mode, interleaved run by run, so the load of a shared machine hits them alike."""
    for once in modes.values():
        once(text_of(60))  # warm-up (and the service's connection), untimed
    results = {(mode, size): Result(mode, size) for size in args.sizes for mode in modes}
    for size in args.sizes:
        for _ in range(args.repeats if size < 1_000 else 1):
            for mode, once in modes.items():
                if out_of_time(args, mode, size):
                    return [result for result in results.values() if result.rounds]
                runs = concurrently(args.streams, functools.partial(once, text_of(size)))
                results[(mode, size)].rounds.append(runs)
    return list(results.values())


# --- report --------------------------------------------------------------------------------------


def report(results: list[Result], args: argparse.Namespace, elapsed: float) -> None:
    by_key = {(result.mode, result.characters): result for result in results}
    print(
        f"\nsynth bench: device={args.device} streams={args.streams} voice={args.voice} "
        f"format={args.format} weights={'random' if args.random_weights else 'resolved'}"
    )
    print(f"{'mode':<12} {'chars':>6} {'audio s':>8} {'audio s/s':>10} {'first chunk':>12}")
    for result in results:
        print(
            f"{result.mode:<12} {result.characters:>6} {result.audio_seconds:>8.2f} "
            f"{result.throughput:>10.2f} {result.first_chunk * 1e3:>10.0f}ms"
        )
    print(
        "\nratios (service vs baseline)     throughput (>= 0.95)   first-chunk overhead (<= 50 ms)"
    )
    for baseline in ("kpipeline", "same chunks"):
        for size in args.sizes:
            service, base = by_key.get(("service", size)), by_key.get((baseline, size))
            if service is None or base is None:
                continue
            ratio = service.throughput / base.throughput
            overhead_ms = (service.first_chunk - base.first_chunk) * 1e3
            print(
                f"  vs {baseline:<12} {size:>6} chars   {ratio:>8.3f} "
                f"{'ok' if ratio >= 0.95 else 'BELOW':>7}   {overhead_ms:>+10.0f} ms "
                f"{'ok' if overhead_ms <= 50 else 'ABOVE':>6}"
            )
    print(f"\nbench took {elapsed:.0f} s")


def arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--device", choices=("cpu", "cuda", "auto"), default="auto")
    parser.add_argument("--streams", type=int, default=1, help="requests at once (GPU)")
    parser.add_argument(
        "--random-weights",
        type=Path,
        metavar="CONFIG_JSON",
        help="randomly initialise Kokoro from this config.json (kokoro-onnx's) instead of "
        "loading the resolved weights; for timing only",
    )
    parser.add_argument("--voice", default="af_heart")
    parser.add_argument(
        "--format", default="mp3", choices=("mp3", "opus", "aac", "flac", "wav", "pcm")
    )
    parser.add_argument("--torch-threads", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=3, help="runs of each short input")
    parser.add_argument(
        "--sizes", type=int, nargs="+", default=list(SIZES), help="input lengths in characters"
    )
    parser.add_argument(
        "--max-seconds",
        type=float,
        default=900.0,
        help="stop starting new measurements after this long (what ran is still reported)",
    )
    parser.add_argument("--start-timeout", type=float, default=300.0)
    parser.add_argument(
        "--skip", choices=("service", "in-process"), action="append", default=[],
        help="leave a side out",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    started = time.perf_counter()
    args.deadline = time.monotonic() + args.max_seconds
    with tempfile.TemporaryDirectory(prefix="synth-bench-") as scratch:
        weights_dir: Path | None = None
        if args.random_weights is not None:
            from bench.random_weights import write_random_weights
            from services.synth.voices import V1_VOICES

            weights_dir = write_random_weights(
                args.random_weights, Path(scratch) / "weights", V1_VOICES
            )
        with ExitStack() as stack:
            modes: dict[str, Mode] = {}
            if "service" not in args.skip:
                modes["service"] = stack.enter_context(
                    service_mode(args, weights_dir, Path(scratch))
                )
            if "in-process" not in args.skip:
                modes.update(in_process_modes(args, weights_dir))
            results = measure(modes, args)
    report(results, args, time.perf_counter() - started)
    return 0


if __name__ == "__main__":
    sys.exit(main())
