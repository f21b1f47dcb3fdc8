"""The GPU check (bench/gpu/run.sh) rehearsed on the CPU, where its failures cost nothing.

A GPU machine is lent to few sessions, for minutes, without misaki or spaCy: the engine bench
there replays phonemes recorded here and imports Kokoro's model alone. These tests run that
bench with the G2P made unimportable, and hold the committed recording to what the G2P says now.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from bench.recorded_g2p import DEFAULT_FILE, record, replaying
from services.synth.engine.model_files import WeightsError, WeightsPaths, locate_weights

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]

# What a GPU machine lacks: importing any of them there fails, so here it must too.
_WITHOUT_G2P = """
import runpy, sys

class RefuseG2P:
    MISSING = {"misaki", "spacy", "en_core_web_sm", "espeakng_loader", "phonemizer"}

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in self.MISSING:
            raise ImportError(f"{name} is not installed on this machine")
        return None

sys.meta_path.insert(0, RefuseG2P())
sys.argv = ["bench.batching_bench", *sys.argv[1:]]
runpy.run_module("bench.batching_bench", run_name="__main__", alter_sys=True)
"""


@pytest.fixture(scope="module")
def weights() -> WeightsPaths:
    try:
        return locate_weights()
    except WeightsError as error:
        pytest.skip(str(error))


def test_the_engine_bench_runs_without_the_g2p(weights: WeightsPaths, tmp_path: Path) -> None:
    table = tmp_path / "batching.json"
    finished = subprocess.run(
        [
            sys.executable,
            "-c",
            _WITHOUT_G2P,
            "--device=cpu",
            "--streams=1,2",
            "--chars=120",
            "--rounds=1",
            f"--random-weights={weights.config_path}",
            f"--phonemes-from={DEFAULT_FILE}",
            f"--json={table}",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    rows = json.loads(table.read_text())
    assert [row["streams"] for row in rows] == [1, 2]
    for row in rows:
        for mode in ("unbatched", "batched"):
            assert row[f"{mode}_audio_per_second"] > 0
            assert 0 < row[f"{mode}_first_p50_ms"] <= row[f"{mode}_first_p95_ms"]


def test_a_text_not_recorded_names_the_command_that_records_it() -> None:
    phonemize = replaying(DEFAULT_FILE)(["a"])["a"]
    with pytest.raises(LookupError, match=r"python -m bench\.recorded_g2p --chars"):
        phonemize("A sentence the recording never saw.")


def test_the_committed_recording_is_what_the_g2p_says_now() -> None:
    committed = json.loads(DEFAULT_FILE.read_text(encoding="utf-8"))
    assert record(committed["chars"]) == committed["phonemes"], (
        "the G2P changed: re-record with python -m bench.recorded_g2p"
    )
