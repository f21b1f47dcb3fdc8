"""The model hub as a source: asked only when it answers quickly."""

from __future__ import annotations

import os
import threading
import urllib.request
from pathlib import Path

from services.synth.engine.model_files import CONFIG_FILE, MODEL_FILE, VOICE_SUFFIX, VOICES_DIR
from services.synth.models import HUB_REPO_ID

PROBE_TIMEOUT_S = 3.0
_DEFAULT_ENDPOINT = "https://huggingface.co"
_TRUTHY = {"1", "true", "yes", "on"}


def hub_disabled() -> bool:
    """HF_HUB_OFFLINE set: the user said not to use the hub at all."""
    return os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in _TRUTHY


def hub_answers(timeout_s: float = PROBE_TIMEOUT_S) -> bool:
    """Whether the hub answers for the model within `timeout_s`, all of it included.

    urllib's timeout covers neither DNS resolution nor every retry, so the request runs on a
    daemon thread and is abandoned at the deadline: a firewalled machine never hangs here.
    """
    if hub_disabled():
        return False
    endpoint = os.environ.get("HF_ENDPOINT", _DEFAULT_ENDPOINT).rstrip("/")
    request = urllib.request.Request(f"{endpoint}/api/models/{HUB_REPO_ID}", method="HEAD")
    answered = threading.Event()
    finished = threading.Event()

    def probe() -> None:
        try:
            with urllib.request.urlopen(request, timeout=timeout_s) as response:
                if response.status == 200:
                    answered.set()
        except Exception:
            pass  # any failure (DNS, refused, TLS, HTTP error) just means "not reachable"
        finally:
            finished.set()

    threading.Thread(target=probe, name="hub-probe", daemon=True).start()
    finished.wait(timeout_s)
    return answered.is_set()


def download_from_hub(destination: Path) -> None:
    """hexgrad's config.json, kokoro-v1_0.pth and voices/*.pt, straight into `destination`."""
    from huggingface_hub import snapshot_download  # only on this path

    snapshot_download(
        HUB_REPO_ID,
        local_dir=destination,
        allow_patterns=[CONFIG_FILE, MODEL_FILE, f"{VOICES_DIR}/*{VOICE_SUFFIX}"],
    )
