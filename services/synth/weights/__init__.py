"""Kokoro-82M weights for the synth engine, available without the model hub.

`make weights` runs `python -m services.synth.weights`, which calls `resolve_weights`.
The running service calls `locate_weights` (never downloads), then loads from local paths:

    paths = locate_weights()
    install_en_core_web_sm_alias()  # before an English KPipeline: G2P offline
    model = KModel(repo_id="hexgrad/Kokoro-82M", config=str(paths.config_path),
                   model=str(paths.model_path))
    pipeline = KPipeline(lang_code="a", repo_id="hexgrad/Kokoro-82M", model=model)
    voice = pipeline.load_voice(str(paths.voice_path("af_heart")))

`paths.manifest.precision` says what the weights are ("int8-derived" is int8-precision
Kokoro-82M); show it wherever weights are listed.
"""

from services.synth.weights.errors import WeightsError
from services.synth.weights.g2p_spacy_alias import install_en_core_web_sm_alias
from services.synth.weights.layout import WeightsPaths
from services.synth.weights.manifest import Manifest
from services.synth.weights.resolve import default_cache_dir, locate_weights, resolve_weights

__all__ = [
    "Manifest",
    "WeightsError",
    "WeightsPaths",
    "default_cache_dir",
    "install_en_core_web_sm_alias",
    "locate_weights",
    "resolve_weights",
]
