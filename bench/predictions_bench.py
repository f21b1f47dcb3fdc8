"""Predictions against speech: how long from create to `success`, and how many an hour.

Baseline measured in the same run: the same text through `/v1/audio/speech`, read to its last
byte. A prediction adds queueing, storage and settlement around the same synthesis, so the ratio
of the two times is what this benchmark watches; then predictions completed per minute when a
batch is created at once and one synth (this machine's CPU) works through it.

    python -m bench.predictions_bench [--rounds 4] [--batch 8]
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid

import httpx

from bench.running_mesh import running_mesh
from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh

TEXT = (
    "Hi, welcome to Eachlabs AI! We are here to help you discover the power of artificial "
    "intelligence and provide you with the best experience."
)


async def speech_seconds(http: httpx.AsyncClient, key: str) -> float:
    started = time.perf_counter()
    async with http.stream(
        "POST",
        "/v1/audio/speech",
        headers={"Authorization": f"Bearer {key}"},
        json={"model": "kokoro", "input": TEXT, "voice": "af_heart", "response_format": "mp3"},
    ) as response:
        response.raise_for_status()
        async for _ in response.aiter_raw():
            pass
    return time.perf_counter() - started


async def create(http: httpx.AsyncClient, key: str) -> str:
    answer = await http.post(
        "/v1/prediction/",
        headers={"X-API-Key": key},
        json={"model": "kokoro-82m", "input": {"text": TEXT, "voice": "af_heart"}},
    )
    answer.raise_for_status()
    return str(answer.json()["predictionID"])


async def until_done(http: httpx.AsyncClient, key: str, prediction_id: str) -> None:
    while True:
        answer = await http.get(f"/v1/prediction/{prediction_id}", headers={"X-API-Key": key})
        answer.raise_for_status()
        status = answer.json()["status"]
        if status == "success":
            return
        if status == "error":
            raise RuntimeError(f"prediction {prediction_id} failed: {answer.json()}")
        await asyncio.sleep(0.05)


async def prediction_seconds(http: httpx.AsyncClient, key: str) -> float:
    started = time.perf_counter()
    await until_done(http, key, await create(http, key))
    return time.perf_counter() - started


async def measure(mesh: LocalMesh, rounds: int, batch: int) -> None:
    async with AdminClient(
        mesh.grpc_address("auth"), mesh.grpc_address("ledger"), mesh.operator_tls
    ) as admin:
        account, _ = await admin.create_account(f"bench-{uuid.uuid4().hex[:8]}", 10**9)
        key = (await admin.create_key(account.id, name="bench")).plaintext
    async with httpx.AsyncClient(base_url=mesh.addresses["gateway"], timeout=600) as http:
        print("warming up…", flush=True)
        await speech_seconds(http, key)
        await prediction_seconds(http, key)
        speech: list[float] = []
        predictions: list[float] = []
        for n in range(rounds):
            pair = (speech_seconds, prediction_seconds)
            for measure_one, into in zip(
                pair if n % 2 == 0 else pair[::-1],
                (speech, predictions) if n % 2 == 0 else (predictions, speech),
                strict=True,
            ):
                into.append(await measure_one(http, key))
            print(
                f"  round {n + 1}/{rounds}: speech {speech[-1]:.2f} s,"
                f" prediction {predictions[-1]:.2f} s",
                flush=True,
            )
        started = time.perf_counter()
        ids = await asyncio.gather(*(create(http, key) for _ in range(batch)))
        await asyncio.gather(*(until_done(http, key, i) for i in ids))
        batch_seconds = time.perf_counter() - started

    s, p = statistics.median(speech), statistics.median(predictions)
    print(
        f"""
{len(TEXT)} characters, median of {rounds} rounds
  /v1/audio/speech to its last byte   {s:6.2f} s   (baseline)
  create → success (polled 50 ms)      {p:6.2f} s   ratio {p / s:.2f}  (queue, storage, settling)
{batch} predictions created at once, one CPU synth
  all done in {batch_seconds:.1f} s: {batch * 60 / batch_seconds:.1f} predictions a minute"""
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench.predictions_bench", description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--batch", type=int, default=8)
    args = parser.parse_args(argv)
    try:
        with running_mesh() as mesh:
            asyncio.run(measure(mesh, args.rounds, args.batch))
    except (RuntimeError, TimeoutError, httpx.HTTPError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
