"""The architecture's import rules, checked by import-linter as `make lint` checks them.

The contracts are in pyproject.toml (`[tool.importlinter]`, docs/architecture.md "Import
boundaries"): no service imports another; torch and the model stack only under services.synth;
psycopg only in the stores and services.common.postgres; the running synth never imports
services.synth.weights. The first test holds the tree to them; the others show that the check
fails, naming the contract, when a forbidden import is added to a copy of the tree.
"""

from __future__ import annotations

import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest

from tests.support.paths import REPO_ROOT

LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def _contracts() -> dict[str, str]:
    """Contract id -> name, as pyproject declares them."""
    config = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {contract["id"]: contract["name"] for contract in config["contracts"]}


def _lint_imports(root: Path, *contract_ids: str) -> subprocess.CompletedProcess[str]:
    """`lint-imports` in `root`, whose services/ package it analyses (it puts the working
    directory first on sys.path), limited to the given contracts when any are named."""
    selected = [argument for cid in contract_ids for argument in ("--contract", cid)]
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-logo", "--no-cache", *selected],
        cwd=root,
        capture_output=True,
        text=True,
        timeout=120,
    )


def _one_line(text: str) -> str:
    # lint-imports wraps long lines to the terminal width.
    return " ".join(text.split())


def test_the_tree_keeps_every_import_contract() -> None:
    result = _lint_imports(REPO_ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"{len(_contracts())} kept, 0 broken" in result.stdout


@pytest.fixture
def tree_copy(tmp_path: Path) -> Path:
    """services/ and the lint configuration, where a test may add a forbidden import."""
    shutil.copytree(
        REPO_ROOT / "services",
        tmp_path / "services",
        ignore=shutil.ignore_patterns("__pycache__", "*.pyc"),
    )
    shutil.copy(REPO_ROOT / "pyproject.toml", tmp_path / "pyproject.toml")
    return tmp_path


# A module a careless change might add, the import it makes, and the contract that refuses it.
FORBIDDEN = {
    "torch in the gateway": (
        "services/gateway/voice_preview.py",
        "import torch\n",
        "model-stack-in-synth",
    ),
    "psycopg reached from the gateway through a shared helper": (
        "services/gateway/balance_cache.py",
        "from services.common import postgres\n",
        "gateway-without-database",
    ),
    "psycopg outside a store": (
        "services/ledger/reports.py",
        "import psycopg\n",
        "psycopg-in-stores",
    ),
    "one service importing another": (
        "services/gateway/local_auth.py",
        "from services.auth import keys\n",
        "independent-services",
    ),
    "the running synth importing the offline weights tool": (
        "services/synth/engine/fetch_weights.py",
        "import services.synth.weights\n",
        "synth-runtime-without-weights",
    ),
    "torch reached from shared code": (
        "services/common/audio_checks.py",
        "import torch\n",
        "light-images-without-torch",
    ),
    "shared code importing a service": (
        "services/common/shortcuts.py",
        "import services.ledger.store\n",
        "shared-and-tools",
    ),
}


@pytest.mark.parametrize("case", sorted(FORBIDDEN))
def test_a_forbidden_import_fails_the_lint(tree_copy: Path, case: str) -> None:
    module, source, contract_id = FORBIDDEN[case]
    name = _contracts()[contract_id]
    before = _lint_imports(tree_copy, contract_id)
    assert before.returncode == 0, f"the tree already breaks {name!r}:\n{before.stdout}"

    (tree_copy / module).write_text(f'"""A forbidden import: {case}."""\n\n{source}')
    after = _lint_imports(tree_copy, contract_id)

    output = _one_line(after.stdout)
    assert after.returncode != 0, output
    assert f"{_one_line(name)} BROKEN" in output
    importer = module.removesuffix(".py").replace("/", ".")
    assert importer in output, "the report names the module that made the import"
