"""`make bench`: every benchmark in bench/, each in its own process, one after another.

Each benchmark starts what it needs, measures a baseline in the same run and prints ratios
against it, so numbers from different machines are comparable by their ratios.
"""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path

BENCH_DIR = Path(__file__).resolve().parent


def main(argv: list[str]) -> int:
    names = argv or sorted(p.stem for p in BENCH_DIR.glob("*_bench.py"))
    failed = []
    for name in names:
        print(f"\n=== {name} ===", flush=True)
        started = time.monotonic()
        result = subprocess.run([sys.executable, "-m", f"bench.{name}"], check=False)
        print(
            f"--- {name}: {time.monotonic() - started:.0f}s, exit {result.returncode}", flush=True
        )
        if result.returncode != 0:
            failed.append(name)
    if failed:
        print(f"\nfailed: {', '.join(failed)}", file=sys.stderr)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
