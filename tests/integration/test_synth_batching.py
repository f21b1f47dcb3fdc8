"""A batched Kokoro forward pass (issue 18, item 1): each item sounds as it does alone.

Eight inputs of different lengths, in voices of five languages (American and British English,
Spanish, French, Mandarin) and a blend of two voice packs, at speeds 0.8, 1.0 and 1.3, go
through `forward_batch` in one call; each is also run alone with `forward_one`, its random draws
from a generator seeded the same way. Each item's durations must
agree within one frame, and its audio by at least 30 dB signal-to-difference ratio,
10 log10(sum(ref^2) / sum((ref - batched)^2)). The worst ratio and how many durations differ are
printed after the run under "measurements" (tests/conftest.py), pass or fail.

A stream cancelled mid-batch leaves it: the same batch less its longest item (which narrows
every other item's padding) must give each remaining item the full batch's durations and audio
within the same 30 dB.

Measured on the real weights (2-core CPU): every duration equal, worst item 46.6 dB (the eight:
46.6 to 59.6 dB); the batch less its longest item, 45.9 dB at worst against the full batch. That
is float rounding: the vocoder's inputs agree to ~3e-7 relative, and the harmonic source's
float32 phase (thousands of radians by a second's end) grows that to ~1e-3 in voiced stretches;
the unbatched model itself moves by 43 to 48 dB when its style is perturbed by 1e-7. (Norm
statistics in float64 did not help: 43.3 dB at worst, further from torch's float32 instance norm.)

The phonemes are misaki's output for English and Chinese, written by hand for Spanish and
French, so no G2P runs here.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

import pytest
import torch

from services.synth.engine.batched_forward import (
    BatchItem,
    ItemOutput,
    forward_batch,
    forward_one,
)
from services.synth.engine.model_files import WeightsPaths
from services.synth.models import HUB_REPO_ID

if TYPE_CHECKING:
    from kokoro import KModel

pytestmark = pytest.mark.model

MIN_SDR_DB = 30.0


@dataclass(frozen=True)
class Case:
    phonemes: str
    # (voice, weight) pairs; more than one is a blend.
    voices: tuple[tuple[str, float], ...]
    speed: float
    seed: int


# Kept short (46 to 93 frames, 1 to 2.3 s): the batch pads every item to the longest.
CASES = (
    Case("jˈɛs.", (("af_heart", 1.0),), 0.8, 11),
    Case("ˈola, ˈkomo ˈestas?", (("ef_dora", 1.0),), 1.3, 12),
    Case("θˈaŋk juː vˈɛɹi mˈʌʧ.", (("bm_george", 1.0),), 1.3, 13),
    Case("bɔ̃ʒuʁ, kɔmɑ̃ ale vu?", (("ff_siwis", 1.0),), 1.0, 14),
    Case("ni↓xau↓, ɕje↘ɕje↘.", (("zf_xiaobei", 1.0),), 1.3, 15),
    Case("wˌɛɹ ɪz ðə tɹˈAn stˈAʃən?", (("af_bella", 0.6), ("am_adam", 0.4)), 1.3, 16),
    Case("ðə wˈɛðəɹ wʌz lˈʌvli.", (("am_michael", 1.0),), 1.0, 17),
    Case("ðə lˈIthˌWs kˈipəɹ klˈImd ðə stˈɛɹz.", (("af_sky", 1.0),), 1.3, 18),
)


@dataclass(frozen=True)
class Loaded:
    model: KModel
    voices: dict[str, torch.Tensor]


@pytest.fixture(scope="module")
def loaded(weights: WeightsPaths) -> Loaded:
    from kokoro import KModel

    model = KModel(
        repo_id=HUB_REPO_ID, config=str(weights.config_path), model=str(weights.model_path)
    ).eval()
    names = {name for case in CASES for name, _ in case.voices}
    voices = {
        name: torch.load(weights.voice_path(name), map_location="cpu", weights_only=True)
        for name in names
    }
    return Loaded(model=model, voices=voices)


def item_of(loaded: Loaded, case: Case, *, seeded: bool = True) -> BatchItem:
    """The case as KModel.forward would run it; a freshly seeded generator every time."""
    vocab = loaded.model.vocab
    ids = [vocab[p] for p in case.phonemes if p in vocab]
    pack = sum(loaded.voices[name] * weight for name, weight in case.voices)
    assert isinstance(pack, torch.Tensor)
    return BatchItem(
        input_ids=torch.LongTensor([0, *ids, 0]),
        style=pack[len(case.phonemes) - 1],
        speed=case.speed,
        generator=torch.Generator().manual_seed(case.seed) if seeded else None,
    )


@pytest.fixture(scope="module")
def alone(loaded: Loaded) -> list[ItemOutput]:
    return [forward_one(loaded.model, item_of(loaded, case)) for case in CASES]


@pytest.fixture(scope="module")
def batched(loaded: Loaded) -> list[ItemOutput]:
    return forward_batch(loaded.model, [item_of(loaded, case) for case in CASES])


def sdr_db(reference: torch.Tensor, other: torch.Tensor) -> float:
    """Signal-to-difference ratio in dB; -inf when the lengths differ (a shifted duration)."""
    if reference.shape != other.shape:
        return -math.inf
    difference = float((reference.double() - other.double()).square().sum())
    signal = float(reference.double().square().sum())
    return math.inf if difference == 0 else 10 * math.log10(signal / difference)


def test_each_item_of_a_batch_sounds_as_it_does_alone(
    alone: Sequence[ItemOutput],
    batched: Sequence[ItemOutput],
    record_property: Callable[[str, object], None],
) -> None:
    ratios = [sdr_db(one.audio, many.audio) for one, many in zip(alone, batched, strict=True)]
    differing = [
        int((one.pred_dur != many.pred_dur).sum()) for one, many in zip(alone, batched, strict=True)
    ]
    worst = min(range(len(CASES)), key=ratios.__getitem__)
    record_property(
        "report",
        f"batched forward: {len(CASES)} items, worst SDR {ratios[worst]:.1f} dB "
        f"({'+'.join(name for name, _ in CASES[worst].voices)}), "
        f"{sum(differing)} of {sum(len(one.pred_dur) for one in alone)} durations differ",
    )
    for case, one, ratio, count in zip(CASES, alone, ratios, differing, strict=True):
        record_property(
            "report",
            f"  {len(one.pred_dur):3d} tokens, {int(one.pred_dur.sum()):4d} frames, "
            f"speed {case.speed}: {ratio:.1f} dB, {count} durations differ",
        )

    for one, many in zip(alone, batched, strict=True):
        assert one.pred_dur.shape == many.pred_dur.shape
        assert int((one.pred_dur - many.pred_dur).abs().max()) <= 1
    assert min(ratios) >= MIN_SDR_DB, ratios


def test_forward_one_is_kmodels_forward(loaded: Loaded) -> None:
    # Every layer runs its module's own forward and the draws are KModel's: bit for bit.
    item = item_of(loaded, CASES[1], seeded=False)
    torch.manual_seed(7)
    audio, durations = loaded.model.forward_with_tokens(
        item.input_ids[None], item.style, item.speed
    )
    torch.manual_seed(7)
    mine = forward_one(loaded.model, item)

    assert torch.equal(mine.pred_dur, durations)
    assert torch.equal(mine.audio, audio)


def test_an_item_leaving_the_batch_changes_no_other_items_result(
    loaded: Loaded,
    batched: Sequence[ItemOutput],
    record_property: Callable[[str, object], None],
) -> None:
    # A cancelled stream leaves the batch: here its longest item, so every other item's padding
    # changes too.
    longest = max(range(len(CASES)), key=lambda index: int(batched[index].pred_dur.sum()))
    staying = [index for index in range(len(CASES)) if index != longest]
    narrower = forward_batch(loaded.model, [item_of(loaded, CASES[i]) for i in staying])

    ratios = [
        sdr_db(batched[index].audio, narrower[position].audio)
        for position, index in enumerate(staying)
    ]
    record_property(
        "report",
        f"the batch less its longest item: worst SDR against the full batch {min(ratios):.1f} dB",
    )
    for position, index in enumerate(staying):
        assert torch.equal(narrower[position].pred_dur, batched[index].pred_dur)
    assert min(ratios) >= MIN_SDR_DB, ratios
