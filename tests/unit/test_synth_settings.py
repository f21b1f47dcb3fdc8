"""synth's settings: defaults, the SYNTH_ prefix, and refusals of budgets that cannot work."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.synth.settings import MODEL_MAX_PHONEMES, SynthSettings


def test_defaults() -> None:
    settings = SynthSettings()
    assert settings.port == 50053 and settings.device == "auto"
    assert settings.max_concurrent == 1 and settings.max_input_chars == 20_000
    assert (settings.first_chunk_phonemes, settings.chunk_phonemes) == (50, None)
    # Later chunks: clause-sized on a CPU, longer on a GPU, unless set.
    assert (settings.chunk_budget("cpu"), settings.chunk_budget("cuda:0")) == (50, 200)
    assert SynthSettings(chunk_phonemes=120).chunk_budget("cpu") == 120
    assert SynthSettings(first_chunk_phonemes=80).chunk_budget("cpu") == 80


def test_environment_with_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SYNTH_DEVICE", "cpu")
    monkeypatch.setenv("SYNTH_MAX_CONCURRENT", "4")
    monkeypatch.setenv("SYNTH_FIRST_CHUNK_PHONEMES", "80")
    settings = SynthSettings()
    assert (settings.device, settings.max_concurrent, settings.first_chunk_phonemes) == (
        "cpu",
        4,
        80,
    )


@pytest.mark.parametrize(
    "values",
    [
        {"chunk_phonemes": MODEL_MAX_PHONEMES + 1},
        {"first_chunk_phonemes": 300, "chunk_phonemes": 200},
        {"device": "tpu"},
        {"max_concurrent": 0},
        {"batching": "sometimes"},
        # A batch must hold at least one chunk of the model's longest.
        {"batch_max_phonemes": MODEL_MAX_PHONEMES},
        {"batch_max_streams": 0},
        {"batch_wait_ms": -1},
    ],
)
def test_impossible_values_are_refused(values: dict[str, object]) -> None:
    with pytest.raises(ValidationError):
        SynthSettings(**values)  # type: ignore[arg-type]


def test_batching_is_on_for_cuda_and_off_on_a_cpu_unless_set(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings = SynthSettings()
    assert (settings.batching_on("cuda:0"), settings.batching_on("cpu")) == (True, False)
    monkeypatch.setenv("SYNTH_BATCHING", "on")
    assert SynthSettings().batching_on("cpu")
    monkeypatch.setenv("SYNTH_BATCHING", "off")
    assert not SynthSettings().batching_on("cuda")
    assert (settings.batch_max_phonemes, settings.batch_wait_ms, settings.batch_max_streams) == (
        16_384,
        2.0,
        32,
    )
