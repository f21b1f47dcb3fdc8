"""The GPU check (bench/gpu/run.sh) rehearsed on the CPU, where its failures cost nothing.

A GPU machine is lent to few sessions, for minutes, with its own Python packages and the wheels
bench/gpu/wheels.sh carries, nothing else: no misaki, no spaCy, no weights. These tests run
both of its benches where only those packages can be imported, and hold the committed phoneme
recording to what the G2P says now and to the chunks the engine plans.
"""

from __future__ import annotations

import importlib.metadata
import json
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path

import pytest

from bench.recorded_g2p import DEFAULT_FILE, plan_every_length, record, replaying
from services.synth.engine.model_files import WeightsPaths

pytestmark = pytest.mark.model

REPO = Path(__file__).resolve().parents[2]

# What the GPU machine's own Python has that the benches use (the device tool's KINDS.md lists
# all it has); each comes with what it requires, which is there too.
GPU_MACHINE_DISTRIBUTIONS = (
    "torch",
    "numpy",
    "transformers",
    "huggingface-hub",
    "prometheus-client",
    "attrs",
    "grpcio",
    "protobuf",
)


def _carried() -> list[str]:
    """The distributions bench/gpu/wheels.sh downloads for that machine."""
    script = (REPO / "bench" / "gpu" / "wheels.sh").read_text()
    names = re.search(r'NAMES="([^"]*)"', script)
    assert names is not None, "wheels.sh lists its wheels in NAMES"
    return names.group(1).split()


def _requirements(distributions: Iterable[str]) -> set[str]:
    """`distributions` and, recursively, what they require (extras left out), as installed."""
    seen: set[str] = set()
    waiting = [name.lower().replace("_", "-") for name in distributions]
    while waiting:
        name = waiting.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        for requirement in requires:
            if "extra ==" in requirement:
                continue
            found = re.match(r"[A-Za-z0-9._-]+", requirement)
            if found:
                waiting.append(found.group(0).lower().replace("_", "-"))
    return seen


def _importable_there() -> set[str]:
    """Top-level modules the GPU machine can import: the standard library, its packages with
    what they require, the carried wheels (not what they require: carried with --no-deps) and
    this repository's own."""
    distributions = _requirements(GPU_MACHINE_DISTRIBUTIONS) | {
        name.lower().replace("_", "-") for name in _carried()
    }
    modules = {
        module
        for module, owners in importlib.metadata.packages_distributions().items()
        if any(owner.lower().replace("_", "-") in distributions for owner in owners)
    }
    return modules | set(sys.stdlib_module_names) | {"bench", "services", "cython_runtime"}


# Runs a bench in a process whose finders find nothing outside ALLOWED: an import of anything
# else fails, and a probe (importlib.util.find_spec, as transformers makes for optional
# packages) says absent, as they would there.
_ON_THE_GPU_MACHINE = """
import json, runpy, sys

ALLOWED = set(json.loads(sys.argv[1]))

class OnlyWhatTheGpuMachineHas:
    def __init__(self, finder):
        self.finder = finder

    def find_spec(self, name, path=None, target=None):
        top = name.split(".")[0]
        if top not in ALLOWED and not top.startswith("_"):
            return None
        return self.finder.find_spec(name, path, target)

    def invalidate_caches(self):
        getattr(self.finder, "invalidate_caches", lambda: None)()

    def find_distributions(self, *args, **kwargs):  # metadata: versions checked at import
        return getattr(self.finder, "find_distributions", lambda *a, **k: [])(*args, **kwargs)

sys.meta_path[:] = [OnlyWhatTheGpuMachineHas(finder) for finder in sys.meta_path]
module = sys.argv[2]
sys.argv = [module, *sys.argv[3:]]
runpy.run_module(module, run_name="__main__", alter_sys=True)
"""


def _run_there(module: str, *arguments: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-c",
            _ON_THE_GPU_MACHINE,
            json.dumps(sorted(_importable_there())),
            module,
            *arguments,
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def test_the_engine_bench_runs_with_what_the_gpu_machine_has(
    weights: WeightsPaths, tmp_path: Path
) -> None:
    table = tmp_path / "batching.json"
    finished = _run_there(
        "bench.batching_bench",
        "--device=cpu",
        "--streams=1,2",
        "--chars=120",
        "--rounds=1",
        "--workers=2",
        "--batch-max-streams=2",
        f"--random-weights={weights.config_path}",
        f"--phonemes-from={DEFAULT_FILE}",
        f"--json={table}",
    )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    rows = json.loads(table.read_text())
    assert [row["streams"] for row in rows] == [1, 2]
    for row in rows:
        for mode in ("unbatched", "batched"):
            assert row[f"{mode}_audio_per_second"] > 0
            assert 0 < row[f"{mode}_first_p50_ms"] <= row[f"{mode}_first_p95_ms"]
    assert "workers=2 batch_max_streams=2" in finished.stdout


def test_the_forward_bench_runs_with_what_the_gpu_machine_has(weights: WeightsPaths) -> None:
    finished = _run_there(
        "bench.batched_forward_bench",
        "--device=cpu",
        "--batch=1,2",
        "--sizes=50",
        "--repeats=1",
        f"--random-weights={weights.config_path}",
    )
    assert finished.returncode == 0, finished.stdout[-2000:] + finished.stderr[-3000:]
    rows = [line.split() for line in finished.stdout.splitlines() if line.startswith("     ~50")]
    assert [row[1] for row in rows] == ["1", "2"]


def test_what_the_gpu_machine_lacks_cannot_be_imported_in_the_rehearsal() -> None:
    finished = _run_there("misaki.en")
    assert finished.returncode != 0
    assert "No module named 'misaki'" in finished.stderr


def test_the_recording_covers_every_chunk_the_engine_plans_on_either_device() -> None:
    phonemize = replaying(DEFAULT_FILE)(["a"])["a"]
    committed = json.loads(DEFAULT_FILE.read_text(encoding="utf-8"))
    plan_every_length(committed["chars"], phonemize)  # a text not recorded raises LookupError


def test_a_text_not_recorded_names_the_command_that_records_it() -> None:
    phonemize = replaying(DEFAULT_FILE)(["a"])["a"]
    with pytest.raises(LookupError, match=r"python -m bench\.recorded_g2p --chars"):
        phonemize("A sentence the recording never saw.")


def test_the_committed_recording_is_what_the_g2p_says_now() -> None:
    committed = json.loads(DEFAULT_FILE.read_text(encoding="utf-8"))
    assert record(committed["chars"]) == committed["phonemes"], (
        "the G2P changed: re-record with python -m bench.recorded_g2p"
    )
