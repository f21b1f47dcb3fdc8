"""Committed stubs must be exactly what `make protos` produces from the committed protos."""

from __future__ import annotations

import importlib.util
from pathlib import Path

from tests.support.paths import REPO_ROOT

PROTO_ROOT = REPO_ROOT / "protos"


def _load_generator():  # protos/generate.py is a script, not an installed module
    spec = importlib.util.spec_from_file_location("generate_protos", PROTO_ROOT / "generate.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_committed_stubs_match_the_protos(tmp_path: Path) -> None:
    generated = _load_generator().generate(tmp_path)
    assert generated, "no stubs generated"
    stale = []
    for fresh in generated:
        relative = fresh.relative_to(tmp_path)
        committed = PROTO_ROOT / relative
        if not committed.exists() or committed.read_bytes() != fresh.read_bytes():
            stale.append(str(relative))
    assert not stale, f"stubs out of date, run `make protos`: {stale}"


def test_every_service_has_its_three_stub_modules() -> None:
    for service in ("auth", "ledger", "synth"):
        folder = PROTO_ROOT / "kokoropay" / service / "v1"
        for suffix in ("_pb2.py", "_pb2.pyi", "_pb2_grpc.py"):
            assert (folder / f"{service}{suffix}").exists(), f"{service}{suffix} missing"
