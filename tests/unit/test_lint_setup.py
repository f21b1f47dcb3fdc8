"""The repository explains and checks itself: every Makefile target that is declared exists and
is listed by `make help`, `make lint` runs the import-boundary check with a pinned import-linter,
and the docs and code point inside the repository (docs/architecture.md), not to files beside it.
"""

from __future__ import annotations

import re
import subprocess
import tomllib
from pathlib import Path

from packaging.requirements import Requirement

from tests.support.paths import REPO_ROOT

MAKEFILE = REPO_ROOT / "Makefile"


def _phony_targets() -> set[str]:
    text = MAKEFILE.read_text().replace("\\\n", " ")
    declared = re.search(r"^\.PHONY:(.*)$", text, re.MULTILINE)
    assert declared, "the Makefile declares its phony targets"
    return set(declared.group(1).split())


def _rules() -> dict[str, str]:
    """Target -> its `##` help text ('' when it has none)."""
    rules = {}
    for line in MAKEFILE.read_text().splitlines():
        match = re.match(r"^([a-z0-9-]+):(?!=)([^#]*)(?:## (.*))?$", line)
        if match:
            rules[match.group(1)] = match.group(3) or ""
    return rules


def _recipe(target: str) -> list[str]:
    lines = MAKEFILE.read_text().splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(f"{target}:"))
    recipe = []
    for line in lines[start + 1 :]:
        if not line.startswith("\t"):
            break
        recipe.append(line.strip())
    return recipe


def test_every_declared_target_exists_and_says_what_it_does() -> None:
    rules = _rules()
    phantoms = _phony_targets() - set(rules)
    assert not phantoms, f"declared .PHONY but no rule: {sorted(phantoms)}"
    undocumented = sorted(t for t in _phony_targets() if not rules[t])
    assert not undocumented, f"`make help` lists a target by its `## ` text: {undocumented}"


def test_make_help_lists_every_target() -> None:
    result = subprocess.run(
        ["make", "--no-print-directory", "-C", str(REPO_ROOT), "help"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    listed = set(re.findall(r"^\s+make (\S+)", result.stdout, re.MULTILINE))
    assert listed == _phony_targets()


def test_the_test_subsets_run_their_folders() -> None:
    for target, folder in (
        ("unit", "unit"),
        ("integration", "integration"),
        ("e2e", "e2e"),
        ("chaos", "chaos"),
    ):
        assert any(f"pytest tests/{folder}" in line for line in _recipe(target)), target


def test_make_lint_checks_the_import_boundaries() -> None:
    assert any("lint-imports" in line for line in _recipe("lint"))
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    contracts = pyproject["tool"]["importlinter"]["contracts"]
    assert {"forbidden", "protected", "independence"} <= {c["type"] for c in contracts}
    pins = [Requirement(r) for r in pyproject["project"]["optional-dependencies"]["dev"]]
    [import_linter] = [r for r in pins if r.name == "import-linter"]
    lock = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    assert f"import-linter{import_linter.specifier}" in lock


# A path outside the repository, or the design document that used to live there.
OUTSIDE = re.compile(r"\.\./shared|shared/DESIGN|\bDESIGN\.md\b")


def _repository_text_files() -> list[Path]:
    listed = subprocess.run(
        ["git", "ls-files", "--cached", "--others", "--exclude-standard"],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    ).stdout.splitlines()
    here = Path(__file__).resolve()
    files = []
    for name in listed:
        path = REPO_ROOT / name
        if path.is_file() and path.resolve() != here:
            files.append(path)
    return files


def test_docs_and_code_point_inside_the_repository() -> None:
    assert (REPO_ROOT / "docs" / "architecture.md").is_file()
    hits = []
    for path in _repository_text_files():
        try:
            text = path.read_text()
        except UnicodeDecodeError:
            continue
        for number, line in enumerate(text.splitlines(), start=1):
            if OUTSIDE.search(line):
                hits.append(f"{path.relative_to(REPO_ROOT)}:{number}: {line.strip()}")
    assert not hits, "point to docs/architecture.md instead:\n" + "\n".join(hits)
