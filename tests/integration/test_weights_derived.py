"""The derived (int8-precision) Kokoro-82M weights speak, and agree with the int8 ONNX.

Needs `make weights` (the derived source); skipped otherwise. The ONNX comparison also
needs onnxruntime, and is skipped without it.

Why these measures: the ONNX quantizes activations to int8 at run time and torch does not,
so the two disagree slightly everywhere; a rounded phoneme duration can flip by one frame,
which shifts everything after it, so raw waveforms are not comparable. What must agree:
the per-phoneme duration predictions before rounding (alignment-free), and the
log-magnitude spectrograms. The export's own iSTFT omits torch.istft's window-overlap
normalization and is exactly 1.5x louder, which the loudness check accounts for.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch

from services.synth.engine.model_files import WeightsError, WeightsPaths, locate_weights
from services.synth.models import HUB_REPO_ID
from services.synth.text.g2p_spacy_alias import install_en_core_web_sm_alias
from services.synth.weights.derive import onnx_path

pytestmark = pytest.mark.model

SAMPLE_RATE = 24_000
PHRASE = "The quick brown fox jumps over the lazy dog."
VOICE = "af_heart"
ONNX_ISTFT_GAIN = 1.5
DURATION_SUMS_OUTPUT = "/encoder/predictor/ReduceSum_output_0"

# Measured on this phrase and voice (2-core CPU, onnxruntime 1.31.1): duration-sum
# correlation 0.9998, log-spectrogram correlation 0.969 (0.85-0.97 on other phrases and
# voices; two different sentences score about 0.33), loudness ratio 1.04.
MIN_DURATION_CORRELATION = 0.99
MIN_LOG_SPECTROGRAM_CORRELATION = 0.85
LOUDNESS_RATIO_RANGE = (0.75, 1.33)


@dataclass(frozen=True)
class Utterance:
    audio: np.ndarray
    token_ids: list[int]
    style: np.ndarray
    duration_sums: np.ndarray


@pytest.fixture(scope="module")
def weights() -> WeightsPaths:
    try:
        paths = locate_weights()
    except WeightsError as error:
        pytest.skip(str(error))
    if paths.manifest.source != "derived":
        pytest.skip(f"for derived weights; {paths.root} holds {paths.manifest.source} ones")
    return paths


@pytest.fixture(scope="module")
def utterance(weights: WeightsPaths) -> Iterator[Utterance]:
    from kokoro import KModel, KPipeline

    # Local paths only: with config, model and voice files given, kokoro asks no hub.
    install_en_core_web_sm_alias()
    torch.manual_seed(0)  # the harmonic source adds noise
    model = KModel(
        repo_id=HUB_REPO_ID, config=str(weights.config_path), model=str(weights.model_path)
    ).eval()
    pipeline = KPipeline(lang_code="a", repo_id=HUB_REPO_ID, model=model)
    voice = pipeline.load_voice(str(weights.voice_path(VOICE)))
    result = next(iter(pipeline(PHRASE, voice=voice)))
    phonemes = result.phonemes
    token_ids = [i for i in (model.vocab.get(p) for p in phonemes) if i is not None]
    style = voice[len(phonemes) - 1]
    with torch.no_grad():
        tokens = torch.LongTensor([[0, *token_ids, 0]])
        hidden = model.bert(tokens, attention_mask=torch.ones_like(tokens))
        encoded = model.bert_encoder(hidden).transpose(-1, -2)
        lengths = torch.LongTensor([tokens.shape[1]])
        mask = torch.zeros_like(tokens, dtype=torch.bool)
        durations = model.predictor.text_encoder(encoded, style[:, 128:], lengths, mask)
        lstm_out, _ = model.predictor.lstm(durations)
        duration_sums = torch.sigmoid(model.predictor.duration_proj(lstm_out)).sum(-1)
    yield Utterance(
        audio=result.audio.numpy(),
        token_ids=token_ids,
        style=style.numpy(),
        duration_sums=duration_sums.numpy().ravel(),
    )


def _log_spectrogram(audio: np.ndarray, frame: int = 1024, hop: int = 256) -> np.ndarray:
    window = np.hanning(frame)
    starts = range(0, len(audio) - frame, hop)
    frames = np.stack([audio[start : start + frame] * window for start in starts])
    return np.log(np.abs(np.fft.rfft(frames, axis=1)) + 1e-5)


def _rms(audio: np.ndarray) -> float:
    return float(np.sqrt(np.mean(np.square(audio))))


def test_derived_weights_speak_for_a_plausible_time(utterance: Utterance) -> None:
    audio = utterance.audio
    seconds = len(audio) / SAMPLE_RATE
    per_phoneme = seconds / len(utterance.token_ids)

    assert np.isfinite(audio).all()
    assert _rms(audio) > 0.01, "silent output"
    assert np.abs(audio).max() < 1.0, "clipping output"
    assert 0.04 < per_phoneme < 0.15, f"{seconds:.2f} s for {len(utterance.token_ids)} phonemes"
    frame_loudness = np.sqrt(np.mean(audio[: len(audio) // 480 * 480].reshape(-1, 480) ** 2, 1))
    assert (frame_loudness > 0.01).mean() > 0.5, "mostly silence"


def test_derived_weights_agree_with_the_int8_onnx(
    weights: WeightsPaths, utterance: Utterance
) -> None:
    ort = pytest.importorskip("onnxruntime")
    onnx = pytest.importorskip("onnx")
    exported = onnx_path(weights.root)
    if not exported.is_file():
        pytest.skip(f"{exported} is gone; run `make weights` again")
    model = onnx.load(str(exported))
    model.graph.output.append(onnx.helper.make_empty_tensor_value_info(DURATION_SUMS_OUTPUT))
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    onnx_audio, onnx_duration_sums = session.run(
        None,
        {
            "tokens": np.array([[0, *utterance.token_ids, 0]], dtype=np.int64),
            "style": utterance.style.astype(np.float32),
            "speed": np.array([1.0], dtype=np.float32),
        },
    )

    duration_correlation = np.corrcoef(utterance.duration_sums, onnx_duration_sums.ravel())[0, 1]
    assert duration_correlation > MIN_DURATION_CORRELATION

    overlap = min(len(utterance.audio), len(onnx_audio))
    assert overlap > 0.9 * max(len(utterance.audio), len(onnx_audio)), "durations disagree"
    spectrogram_correlation = np.corrcoef(
        _log_spectrogram(utterance.audio[:overlap]).ravel(),
        _log_spectrogram(onnx_audio[:overlap]).ravel(),
    )[0, 1]
    assert spectrogram_correlation > MIN_LOG_SPECTROGRAM_CORRELATION

    loudness_ratio = _rms(utterance.audio) / (_rms(onnx_audio) / ONNX_ISTFT_GAIN)
    low, high = LOUDNESS_RATIO_RANGE
    assert low < loudness_ratio < high


def test_weights_are_labelled_int8_precision(weights: WeightsPaths) -> None:
    assert weights.manifest.precision == "int8-derived"
    assert "int8-precision Kokoro-82M" in weights.manifest.description
    assert len(weights.voice_names) == 54
    assert Path(weights.model_path).stat().st_size > 300_000_000
