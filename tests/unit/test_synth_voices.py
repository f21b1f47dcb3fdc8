"""Voice expressions: built-ins, aliases, blends, validation; the model's names."""

from __future__ import annotations

import pytest

from services.synth.models import MODEL_ID, UnknownModelError, model_info, resolve_model
from services.synth.voices import (
    HOSTED_LISTING_VOICES,
    OPENAI_ALIASES,
    V1_VOICES,
    VoiceCatalog,
    VoiceError,
    VoiceKind,
    VoiceMix,
)

SPOKEN = "abefhip"


@pytest.fixture
def catalog() -> VoiceCatalog:
    return VoiceCatalog(V1_VOICES, SPOKEN)


def test_v1_has_54_voices() -> None:
    assert len(V1_VOICES) == len(set(V1_VOICES)) == 54


def test_builtin_voice(catalog: VoiceCatalog) -> None:
    assert catalog.resolve("bf_emma") == VoiceMix((("bf_emma", 1.0),))
    assert catalog.resolve(" bf_emma ").language_code == "b"


def test_every_hosted_listing_voice_resolves(catalog: VoiceCatalog) -> None:
    for voice in HOSTED_LISTING_VOICES:
        assert catalog.resolve(voice).components


def test_af_is_an_equal_blend_of_bella_and_sarah(catalog: VoiceCatalog) -> None:
    assert catalog.resolve("af") == VoiceMix((("af_bella", 0.5), ("af_sarah", 0.5)))


def test_blend_weights_are_normalized_and_default_to_one(catalog: VoiceCatalog) -> None:
    mix = catalog.resolve("af_bella(2)+af_sky(1)")
    assert mix.components == (("af_bella", pytest.approx(2 / 3)), ("af_sky", pytest.approx(1 / 3)))
    assert catalog.resolve("af_bella+af_sky(3)").components[1][1] == pytest.approx(0.75)
    assert mix.expression == "af_bella(0.6667)+af_sky(0.3333)"


def test_blend_speaks_its_first_components_language(catalog: VoiceCatalog) -> None:
    assert catalog.resolve("bm_george(1)+af_sky(3)").language_code == "b"


def test_aliases_expand_inside_blends(catalog: VoiceCatalog) -> None:
    mix = catalog.resolve("af(2)+af_sky(2)")
    assert dict(mix.components) == pytest.approx(
        {"af_bella": 0.25, "af_sarah": 0.25, "af_sky": 0.5}
    )


def test_openai_voices_map_to_kokoro_voices(catalog: VoiceCatalog) -> None:
    assert set(OPENAI_ALIASES) == {
        "alloy", "ash", "ballad", "coral", "echo", "fable", "nova", "onyx", "sage", "shimmer",
        "verse",
    }  # fmt: skip
    assert catalog.resolve("onyx").expression == "am_onyx"
    assert catalog.resolve("fable").language_code == "b"


@pytest.mark.parametrize(
    ("expression", "message"),
    [
        ("", "required"),
        ("nobody", "unknown voice 'nobody'"),
        ("af_bella(0)", "positive"),
        ("af_bella(x)", "cannot read"),
        ("af_bella++af_sky", "cannot read"),
        ("+".join(["af_bella"] * 9), "at most 8"),
    ],
)
def test_invalid_expressions_say_why(catalog: VoiceCatalog, expression: str, message: str) -> None:
    with pytest.raises(VoiceError, match=message.replace("(", r"\(")):
        catalog.resolve(expression)


def test_unknown_voice_suggests_valid_ones(catalog: VoiceCatalog) -> None:
    with pytest.raises(VoiceError) as error:
        catalog.resolve("af_nobody")
    assert "af_bella" in str(error.value) and "ListVoices" in str(error.value)


def test_unspoken_language_is_refused_and_not_listed(catalog: VoiceCatalog) -> None:
    with pytest.raises(VoiceError, match="Japanese"):
        catalog.resolve("jf_alpha")
    listed = {entry.id for entry in catalog.entries()}
    assert "jf_alpha" not in listed and "zf_xiaobei" not in listed
    assert "ff_siwis" in listed


def test_listing_builtins_first_then_aliases_and_blends(catalog: VoiceCatalog) -> None:
    entries = catalog.entries()
    kinds = [entry.kind for entry in entries]
    assert kinds == sorted(kinds, key=lambda kind: kind is not VoiceKind.BUILTIN)
    by_id = {entry.id: entry for entry in entries}
    assert by_id["af_sky"].language == "en-us" and by_id["af_sky"].gender == "female"
    assert by_id["bm_lewis"].language == "en-gb" and by_id["bm_lewis"].gender == "male"
    assert by_id["af"].kind is VoiceKind.BLEND and by_id["af"].target == "af_bella(1)+af_sarah(1)"
    assert by_id["alloy"].kind is VoiceKind.ALIAS and by_id["alloy"].target == "af_alloy"


def test_aliases_over_missing_voices_are_dropped() -> None:
    catalog = VoiceCatalog(["af_bella", "am_onyx"], "a")
    ids = {entry.id for entry in catalog.entries()}
    assert "onyx" in ids and "af" not in ids and "alloy" not in ids


def test_model_names() -> None:
    assert resolve_model("") == MODEL_ID
    for alias in ("tts-1", "tts-1-hd", "gpt-4o-mini-tts", "kokoro"):
        assert resolve_model(alias) == MODEL_ID
    with pytest.raises(UnknownModelError, match="tts-1"):
        resolve_model("whisper-1")
    assert "int8-derived" in model_info("int8-derived").description
    assert model_info("").sample_rate == 24_000
