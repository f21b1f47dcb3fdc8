"""How fast the gateway refuses requests built to hurt it, against an ordinary refusal.

    python -m bench.abuse_bench [--rounds 50]

A gateway process is started on its own (no upstream is needed: every request here is refused
while its body is read and parsed, before any key check). Each round sends, in turn:

- baseline: `{"input": ""}`, an ordinary 400 from request validation;
- a 50 KB pathological voice, `"a(" + "1" * 50000 + "!"`, once 45 s of one CPU core;
- the same voice in OpenAI's object form `{"id": …}`;
- a 2 MB body, refused with 413 from its Content-Length.

It prints p50 and p99 per case and the ratio of each p50 to the baseline's. Target: the
pathological voice refused in under 50 ms. It also times the shared voice parser in-process on
adversarial strings of growing length with its cap lifted, to show linear growth.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import httpx

from services.cli.processes import ServiceProcess, free_port
from services.common.voice_expressions import VoiceExpressionError, parse_voice_expression

PATHOLOGICAL_VOICE = "a(" + "1" * 50_000 + "!"
TARGET_MS = 50.0


def cases() -> dict[str, tuple[bytes, int]]:
    return {
        "baseline (empty input)": (b'{"input": ""}', 400),
        "50 KB voice string": (
            json.dumps({"input": "hi", "voice": PATHOLOGICAL_VOICE}).encode(),
            400,
        ),
        "50 KB voice object": (
            json.dumps({"input": "hi", "voice": {"id": PATHOLOGICAL_VOICE}}).encode(),
            400,
        ),
        "2 MB body": (b'{"input": "' + b"a" * 2_000_000 + b'"}', 413),
    }


async def refusal_times(url: str, rounds: int) -> dict[str, list[float]]:
    timings: dict[str, list[float]] = {name: [] for name in cases()}
    headers = {"authorization": "Bearer kp_live_bench", "content-type": "application/json"}
    async with httpx.AsyncClient(base_url=url, timeout=120) as http:
        for _ in range(rounds):
            for name, (body, status) in cases().items():
                started = time.perf_counter()
                response = await http.post("/v1/audio/speech", content=body, headers=headers)
                timings[name].append((time.perf_counter() - started) * 1e3)
                if response.status_code != status:
                    raise SystemExit(f"{name}: expected {status}, got {response.status_code}")
    return timings


def parser_growth() -> list[tuple[int, float]]:
    """Best-of-5 seconds to refuse `a(` + n digits + `!` with the cap lifted."""
    rows = []
    for n in (50_000, 100_000, 200_000, 400_000):
        expression = "a(" + "1" * n + "!"
        best = float("inf")
        for _ in range(5):
            started = time.perf_counter()
            with contextlib.suppress(VoiceExpressionError):
                parse_voice_expression(expression, max_chars=None)
            best = min(best, time.perf_counter() - started)
        rows.append((n, best * 1e3))
    return rows


def p(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=50)
    args = parser.parse_args(argv)

    port = free_port()
    with tempfile.TemporaryDirectory() as log_dir:
        gateway = ServiceProcess(
            "gateway",
            {
                "GATEWAY_PORT": str(port),
                # Nothing listens there: no request in this benchmark gets that far.
                "GATEWAY_AUTH_ADDRESS": f"127.0.0.1:{free_port()}",
                "GATEWAY_LEDGER_ADDRESS": f"127.0.0.1:{free_port()}",
                "GATEWAY_SYNTH_ADDRESS": f"127.0.0.1:{free_port()}",
            },
            Path(log_dir),
            port=port,
        ).start(wait_serving=False)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 60
            while True:
                try:
                    if httpx.get(f"{url}/healthz").status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline:
                    raise SystemExit("the gateway did not start")
                time.sleep(0.1)
            timings = asyncio.run(refusal_times(url, args.rounds))
        finally:
            gateway.stop()

    baseline = statistics.median(timings["baseline (empty input)"])
    print(f"refusals through a gateway process, {args.rounds} rounds (ms)")
    print(f"{'case':<26} {'p50':>8} {'p99':>8} {'p50/baseline':>13}")
    for name, values in timings.items():
        median = statistics.median(values)
        print(f"{name:<26} {median:8.2f} {p(values, 0.99):8.2f} {median / baseline:13.2f}")
    worst = max(p(timings[name], 0.99) for name in timings if "voice" in name)
    verdict = "meets" if worst < TARGET_MS else "MISSES"
    print(f"pathological voice p99 {worst:.2f} ms: {verdict} the {TARGET_MS:.0f} ms target")

    print("\nvoice parser in-process, cap lifted: `a(` + n digits + `!`")
    rows = parser_growth()
    for n, ms in rows:
        print(f"  n={n:>7}: {ms:7.3f} ms  ({ms / rows[0][1]:.2f}x the n=50000 time)")
    return 0 if worst < TARGET_MS else 1


if __name__ == "__main__":
    sys.exit(main())
