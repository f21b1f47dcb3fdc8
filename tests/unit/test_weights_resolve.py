"""Choosing and finding weights without downloading anything: fast, on tiny fake folders."""

from __future__ import annotations

import http.server
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from services.synth.engine.manifest import (
    Manifest,
    describe_files,
    file_problems,
    read_manifest,
    write_manifest,
)
from services.synth.engine.model_files import (
    MANIFEST_FILE,
    WeightsError,
    layout_files,
    locate_weights,
)
from services.synth.weights.hub import hub_answers
from services.synth.weights.resolve import resolve_weights


@pytest.fixture(autouse=True)
def no_local_dir(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("KOKORO_WEIGHTS_DIR", raising=False)
    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)


def _hexgrad_layout(root: Path) -> Path:
    (root / "voices").mkdir(parents=True)
    (root / "config.json").write_text("{}")
    (root / "kokoro-v1_0.pth").write_bytes(b"weights")
    (root / "voices" / "af_heart.pt").write_bytes(b"voice")
    return root


def _derived_cache(root: Path) -> Path:
    _hexgrad_layout(root)
    manifest = Manifest(
        source="derived",
        precision="int8-derived",
        description="int8-precision Kokoro-82M",
        files=describe_files(root, layout_files(root), hashed=True),
    )
    write_manifest(root / MANIFEST_FILE, manifest)
    return root


def test_manifest_round_trips(tmp_path: Path) -> None:
    cache = _derived_cache(tmp_path / "cache")
    manifest = read_manifest(cache / MANIFEST_FILE)
    assert manifest is not None
    assert manifest.source == "derived"
    assert set(manifest.files) == {"config.json", "kokoro-v1_0.pth", "voices/af_heart.pt"}
    assert file_problems(cache, manifest, hashed=True) == []


def test_a_changed_file_is_noticed(tmp_path: Path) -> None:
    cache = _derived_cache(tmp_path / "cache")
    (cache / "kokoro-v1_0.pth").write_bytes(b"WEIGHTS")  # same size, other bytes
    manifest = read_manifest(cache / MANIFEST_FILE)
    assert manifest is not None
    assert file_problems(cache, manifest, hashed=False) == []
    assert file_problems(cache, manifest, hashed=True) == [
        "kokoro-v1_0.pth has changed (sha256 differs)"
    ]


def test_verified_cache_resolves_without_downloading(tmp_path: Path) -> None:
    cache = _derived_cache(tmp_path / "cache")
    paths = resolve_weights(cache, allow_download=False)
    assert paths.model_path == cache / "kokoro-v1_0.pth"
    assert paths.voice_names == ["af_heart"]
    assert paths.manifest.precision == "int8-derived"


def test_missing_weights_name_make_weights(tmp_path: Path) -> None:
    with pytest.raises(WeightsError, match="make weights"):
        resolve_weights(tmp_path / "empty", allow_download=False)
    with pytest.raises(WeightsError, match="make weights"):
        locate_weights(tmp_path / "empty")


def test_locate_finds_resolved_weights(tmp_path: Path) -> None:
    cache = _derived_cache(tmp_path / "cache")
    assert locate_weights(cache).config_path == cache / "config.json"
    (cache / "voices" / "af_heart.pt").unlink()
    with pytest.raises(WeightsError, match="incomplete"):
        locate_weights(cache)


def test_local_folder_is_used_as_is(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    local = _hexgrad_layout(tmp_path / "hexgrad")
    monkeypatch.setenv("KOKORO_WEIGHTS_DIR", str(local))
    cache = tmp_path / "cache"

    resolved = resolve_weights(cache, allow_download=True)
    located = locate_weights(cache)

    assert resolved.root == located.root == local.resolve()
    assert resolved.manifest.source == "local"
    recorded = read_manifest(cache / MANIFEST_FILE)
    assert recorded is not None and recorded.root == str(local.resolve())


def test_incomplete_local_folder_says_what_is_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    local = _hexgrad_layout(tmp_path / "hexgrad")
    (local / "kokoro-v1_0.pth").unlink()
    monkeypatch.setenv("KOKORO_WEIGHTS_DIR", str(local))
    with pytest.raises(WeightsError, match="lacks kokoro-v1_0.pth"):
        resolve_weights(tmp_path / "cache", allow_download=True)


@pytest.fixture
def silent_server() -> Iterator[str]:
    """Accepts connections and never answers: a hub behind a black hole."""
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        yield f"http://127.0.0.1:{listener.getsockname()[1]}"


def test_hub_probe_gives_up_at_its_deadline(
    silent_server: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("HF_ENDPOINT", silent_server)
    started = time.monotonic()
    assert hub_answers(timeout_s=0.3) is False
    assert time.monotonic() - started < 1.0


def test_hub_probe_sees_an_answering_hub(monkeypatch: pytest.MonkeyPatch) -> None:
    class Answering(http.server.BaseHTTPRequestHandler):
        def do_HEAD(self) -> None:
            self.send_response(200)
            self.end_headers()

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.HTTPServer(("127.0.0.1", 0), Answering)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{server.server_port}")
        assert hub_answers(timeout_s=2.0) is True
        monkeypatch.setenv("HF_HUB_OFFLINE", "1")
        assert hub_answers(timeout_s=2.0) is False
    finally:
        server.shutdown()
        server.server_close()
