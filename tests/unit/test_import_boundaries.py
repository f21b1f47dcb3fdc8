"""The architecture's import rules, checked on the source so a slip fails CI.

torch only under services/synth (the gateway and the money services stay light and start
fast); psycopg only where data is owned (auth, ledger) and in the shared migration runner.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

SERVICES = REPO_ROOT / "services"

# Top-level module -> the folders (relative to services/) allowed to import it.
ALLOWED = {
    "torch": ["synth"],
    "kokoro": ["synth"],
    "misaki": ["synth"],
    "av": ["synth"],
    "psycopg": ["auth", "ledger", "common/postgres.py"],
    "psycopg_pool": ["auth", "ledger", "common/postgres.py"],
    "fastapi": ["gateway"],
}


def _imported_top_levels(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), filename=str(path))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name.split(".")[0] for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return names


def _source_files() -> list[Path]:
    return sorted(SERVICES.rglob("*.py"))


@pytest.mark.parametrize("module", sorted(ALLOWED))
def test_heavy_and_data_imports_stay_in_their_service(module: str) -> None:
    offenders = []
    for path in _source_files():
        relative = path.relative_to(SERVICES).as_posix()
        if module in _imported_top_levels(path) and not any(
            relative == allowed or relative.startswith(allowed + "/") for allowed in ALLOWED[module]
        ):
            offenders.append(relative)
    assert not offenders, f"{module} imported outside {ALLOWED[module]}: {offenders}"


def test_the_checker_sees_imports() -> None:
    # Guards the test above against passing because it parses nothing.
    synth_imports = set().union(
        *(_imported_top_levels(p) for p in (SERVICES / "synth").rglob("*.py"))
    )
    assert "torch" in synth_imports
