"""Phonemes recorded here and replayed where no G2P is installed: a GPU machine timing the model.

    python -m bench.recorded_g2p [--chars 120,400,1000,2000] [--out bench/data/passage_g2p.json]

Recording plans the bench passage's chunks (bench/passage.py, at each `--chars`) exactly as the
engine does, for a CPU's and for CUDA's chunk budgets, with misaki's English G2P, and keeps every
text the planner asked to phonemize with what it got back. Replaying gives the engine a
phonemizer that looks those texts up: the same chunks, the same phonemes, the same model calls,
with no misaki or spaCy on the machine. `bench.model_only` imports Kokoro's model without the
G2P pipeline its package also imports.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Collection, Mapping
from pathlib import Path

from bench.passage import text_of
from services.synth.engine.assembly import chunk_budgets
from services.synth.engine.manager import WARM_UP_TEXT
from services.synth.settings import SynthSettings
from services.synth.text.chunking import Phonemize, plan_chunks
from services.synth.text.words import Pronunciation

DEFAULT_FILE = Path(__file__).resolve().parent / "data" / "passage_g2p.json"
DEFAULT_CHARS = (120, 400, 1_000, 2_000)
# The bench's voices are American English (af_heart).
LANGUAGE = "a"
RECORD_COMMAND = "python -m bench.recorded_g2p --chars N,…"
# The chunk budgets differ by device: a recording covers both.
DEVICES = ("cpu", "cuda")


def record(chars: Collection[int]) -> dict[str, str]:
    """Every text the engine phonemizes to speak the passage at each length, and its phonemes."""
    from services.synth.text.g2p import build_phonemizers

    phonemize = build_phonemizers([LANGUAGE])[LANGUAGE]
    recorded: dict[str, str] = {}

    def recording(text: str) -> str:
        phonemes = Pronunciation.of(phonemize(text)).phonemes
        recorded[text] = phonemes
        return phonemes

    recording(WARM_UP_TEXT)
    plan_every_length(chars, recording)
    return recorded


def plan_every_length(chars: Collection[int], phonemize: Phonemize) -> None:
    """Plan the passage at each length as the engine would on a CPU and on CUDA, phonemizing
    with `phonemize`."""
    settings = SynthSettings()
    for device in DEVICES:
        for length in chars:
            for _ in plan_chunks(text_of(length), phonemize, chunk_budgets(settings, device)):
                pass


def replaying(path: Path) -> _Replay:
    """A phonemizer factory for the engine that speaks only what `path` recorded."""
    return _Replay(json.loads(path.read_text(encoding="utf-8")))


class _Replay:
    def __init__(self, recording: Mapping[str, object]) -> None:
        self._phonemes = dict(recording["phonemes"])  # type: ignore[call-overload]
        self._chars = recording["chars"]

    def __call__(self, language_codes: Collection[str]) -> Mapping[str, Phonemize]:
        return {LANGUAGE: self._look_up} if LANGUAGE in language_codes else {}

    def _look_up(self, text: str) -> str:
        try:
            return str(self._phonemes[text])
        except KeyError:
            raise LookupError(
                f"no recorded phonemes for {text!r}: the recording covers --chars {self._chars};"
                f" record the length you bench here, where the G2P is installed ({RECORD_COMMAND})"
            ) from None


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--chars",
        type=lambda value: [int(n) for n in value.split(",")],
        default=list(DEFAULT_CHARS),
        help="passage lengths the benches will speak (default: 120,400,1000,2000)",
    )
    parser.add_argument("--out", type=Path, default=DEFAULT_FILE)
    args = parser.parse_args(argv)
    phonemes = record(args.chars)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    recording = {"language": LANGUAGE, "chars": args.chars, "phonemes": phonemes}
    args.out.write_text(json.dumps(recording, ensure_ascii=False, indent=1) + "\n", "utf-8")
    print(f"{len(phonemes)} texts' phonemes written to {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
