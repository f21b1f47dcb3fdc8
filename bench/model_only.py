"""Kokoro's model without its G2P pipeline, for machines that only time the model.

`kokoro/__init__.py` imports KPipeline beside KModel, and KPipeline imports misaki (and through
it spaCy and espeak-ng), none of which a GPU machine measuring model calls needs or has. This
registers the `kokoro` package without running its `__init__`, so that `from kokoro import
KModel` and `kokoro.istftnet` load only the model's own modules (torch, transformers' ALBERT,
attrs, loguru, huggingface_hub).
"""

from __future__ import annotations

import importlib.util
import sys


def import_model_only() -> None:
    if "kokoro" in sys.modules:
        return
    spec = importlib.util.find_spec("kokoro")
    if spec is None or spec.submodule_search_locations is None:
        raise SystemExit("error: kokoro is not installed: pip install --no-deps kokoro==0.9.4")
    # The package as the import system makes it (spec, path, loader), minus running __init__.
    package = importlib.util.module_from_spec(spec)
    sys.modules["kokoro"] = package
    from kokoro.model import KModel

    package.KModel = KModel  # type: ignore[attr-defined]
    # As kokoro's __init__ would: its loguru debug lines (the whole config) are not ours to print.
    from loguru import logger

    logger.disable("kokoro")
