"""Does batching Kokoro's forward pass pay? One padded call for B inputs against B calls.

    python -m bench.batched_forward_bench [--device cpu|cuda] [--batch 1,2,4,8]
        [--random-weights CONFIG_JSON] [--sizes 50,200] [--repeats 3]

For inputs of about 50 and about 200 phonemes (fixed phonemes, no G2P: windows of one passage,
so a batch's items differ a little in length as a real batch's would), it times
`forward_batch` of B items against `forward_one` on each of them in turn, and prints audio
seconds per wall second for both and their ratio (above 1: batching pays), the median of
`--repeats` runs, and how much padding the batch carried (its frames, padding included, over
its items' own: the extra work batching does). The two modes alternate run by run, so a shared
machine's changing load falls on both alike. `--random-weights` builds a randomly initialised
model from a config.json, for machines without the weights (bench/random_weights.py).
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from bench.model_only import import_model_only
from services.synth.engine.batched_forward import (
    BatchItem,
    ItemOutput,
    forward_batch,
    forward_one,
)
from services.synth.engine.model_files import locate_weights
from services.synth.models import HUB_REPO_ID, SAMPLE_RATE

if TYPE_CHECKING:
    from kokoro import KModel

VOICE = "af_heart"
# misaki's American English for a passage of bench/passage.py's PASSAGE (294 phonemes).
PHONEMES = (
    "sˌʌm wˈɪntəɹz ðə stˈɔɹmz wɜɹ sˌO fˈɪɹs ðæt ðə ɡlˈæs ʃˈʊk ɪn ɪts fɹˈAm, jˈɛt ðə lˈæmp "
    "nˈɛvəɹ fˈAld. hˌi kˈɛpt ɐ lˈɔɡ ʌv ˈɛvəɹi vˈɛsᵊl, ˈɛvəɹi ɡˈAl, ænd ˈɛvəɹi kwˈIət dˈɔn, "
    "ænd wˌɛn hi ɡɹˈu ˈOld hi ɡˈAv ðə bˈʊk tə ðə ɡˈɜɹl fɹʌm ðə vˈɪlɪʤ hˌu hæd ˈæskt, jˈɪɹ "
    "ˈæftəɹ jˈɪɹ, tə sˈi ðə lˈIt ˌʌp klˈOs."
)


def window(size: int, item: int) -> str:
    """About `size` phonemes of the passage, from word `3 * item` on, whole words only."""
    words = (PHONEMES + " ") * (size // len(PHONEMES) + 2)
    start = [i for i, p in enumerate(words) if p == " "][3 * item] + 1
    text = words[start : start + size + 1]
    return text[: text.rfind(" ")]


def items_of(
    model: KModel, pack: torch.Tensor, texts: Sequence[str], device: str
) -> list[BatchItem]:
    """The texts at speed 1 in one voice, each item with its own freshly seeded generator."""

    def item(index: int, phonemes: str) -> BatchItem:
        ids = [model.vocab[p] for p in phonemes if p in model.vocab]
        return BatchItem(
            input_ids=torch.LongTensor([0, *ids, 0]),
            style=pack[len(phonemes) - 1],
            speed=1.0,
            generator=torch.Generator(device=device).manual_seed(index),
        )

    return [item(index, phonemes) for index, phonemes in enumerate(texts)]


@dataclass
class Measurement:
    audio_seconds: float
    # The batch's frames, padding included, over its items' own frames.
    padding: float
    # Audio seconds per wall second, the median run.
    batched: float
    one_by_one: float


def measure(
    model: KModel, pack: torch.Tensor, texts: Sequence[str], args: argparse.Namespace
) -> Measurement:
    def batched() -> list[ItemOutput]:
        return forward_batch(model, items_of(model, pack, texts, args.device))

    def one_by_one() -> list[ItemOutput]:
        return [forward_one(model, item) for item in items_of(model, pack, texts, args.device)]

    rates: dict[str, list[float]] = {"batched": [], "one_by_one": []}
    outputs: list[ItemOutput] = []
    for repeat in range(args.repeats):
        runs = [("batched", batched), ("one_by_one", one_by_one)]
        # Alternate which goes first, so that neither always follows the other.
        for mode, run in runs if repeat % 2 == 0 else runs[::-1]:
            started = time.perf_counter()
            outputs = run()
            wall = time.perf_counter() - started
            rates[mode].append(audio_seconds(outputs) / wall)
    frames = [int(output.pred_dur.sum()) for output in outputs]
    return Measurement(
        audio_seconds=audio_seconds(outputs),
        padding=len(frames) * max(frames) / sum(frames),
        batched=statistics.median(rates["batched"]),
        one_by_one=statistics.median(rates["one_by_one"]),
    )


def audio_seconds(outputs: Sequence[ItemOutput]) -> float:
    return sum(len(output.audio) for output in outputs) / SAMPLE_RATE


def load_model(args: argparse.Namespace, scratch: Path) -> tuple[KModel, torch.Tensor]:
    from kokoro import KModel

    if args.random_weights is not None:
        from bench.random_weights import write_random_weights
        from services.synth.engine.model_files import (
            CONFIG_FILE,
            MODEL_FILE,
            VOICE_SUFFIX,
            VOICES_DIR,
        )

        root = write_random_weights(args.random_weights, scratch / "weights", [VOICE])
        config, weights = root / CONFIG_FILE, root / MODEL_FILE
        voice = root / VOICES_DIR / f"{VOICE}{VOICE_SUFFIX}"
    else:
        paths = locate_weights()
        config, weights, voice = paths.config_path, paths.model_path, paths.voice_path(VOICE)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", (UserWarning, FutureWarning))
        model = KModel(repo_id=HUB_REPO_ID, config=str(config), model=str(weights))
    model = model.to(args.device).eval()
    return model, torch.load(voice, map_location="cpu", weights_only=True)


def arguments(argv: list[str] | None) -> argparse.Namespace:
    def numbers(text: str) -> list[int]:
        return [int(part) for part in text.split(",")]

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--device", choices=("cpu", "cuda"), default="cuda" if torch.cuda.is_available() else "cpu"
    )
    parser.add_argument("--batch", type=numbers, default=[1, 2, 4, 8], help="e.g. 1,2,4,8")
    parser.add_argument("--sizes", type=numbers, default=[50, 200], help="phonemes per input")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--random-weights",
        type=Path,
        metavar="CONFIG_JSON",
        help="randomly initialise Kokoro from this config.json; for timing only",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = arguments(argv)
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    # Its phonemes are fixed: the G2P that `import kokoro` would also load is not needed.
    import_model_only()
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="batched-forward-bench-") as scratch:
        model, pack = load_model(args, Path(scratch))

    # Untimed: the first calls pay for allocator and kernel set-up.
    warm = items_of(model, pack, [window(min(args.sizes), 0)] * 2, args.device)
    forward_batch(model, warm)
    forward_one(model, warm[0])

    print(
        f"batched forward bench: device={args.device} torch_threads={torch.get_num_threads()} "
        f"weights={'random' if args.random_weights else 'resolved'} "
        f"median of {args.repeats} (audio seconds per wall second)"
    )
    print(f"{'phonemes':>8} {'batch':>5} {'audio s':>8} {'padding':>7} {'batched':>8} "
          f"{'one by one':>10} {'ratio':>6}")  # fmt: skip
    for size in args.sizes:
        for batch in args.batch:
            texts = [window(size, item) for item in range(batch)]
            result = measure(model, pack, texts, args)
            print(
                f"{'~' + str(size):>8} {batch:>5} {result.audio_seconds:>8.1f} "
                f"{result.padding:>7.2f} "
                f"{result.batched:>8.2f} {result.one_by_one:>10.2f} "
                f"{result.batched / result.one_by_one:>6.2f}",
                flush=True,
            )
    print(f"\nbench took {time.perf_counter() - started:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
