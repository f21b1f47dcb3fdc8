"""Fixtures shared by every test layer: a real PostgreSQL and a folder for service logs; and
what tests measured, printed at the end of the run."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING

import pytest

from tests.support.postgres import create_database, postgres_server_url

if TYPE_CHECKING:
    from services.synth.engine.model_files import WeightsPaths

# The gateway's in-process and live-app fixtures, for the gateway's unit tests.
pytest_plugins = ["tests.support.gateway_fixtures"]


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A running PostgreSQL server (embedded unless DATABASE_URL is set)."""
    with postgres_server_url() as url:
        yield url


@pytest.fixture
def database_url(postgres_url: str) -> str:
    """A fresh, empty database for one test."""
    return create_database(postgres_url)


@pytest.fixture(scope="session")
def weights() -> WeightsPaths:
    """The Kokoro weights `make weights` resolved; tests that load the model skip without them
    (and CI fails at the start instead: pytest_sessionstart)."""
    from services.synth.engine.model_files import WeightsError, locate_weights

    try:
        return locate_weights()
    except WeightsError as error:
        pytest.skip(str(error))


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("service-logs"))


def pytest_sessionstart(session: pytest.Session) -> None:
    """In CI, model tests must run, not skip: missing weights fail the run at once."""
    from tests.support.paths import REPO_ROOT

    manifest = REPO_ROOT / ".data" / "weights" / "manifest.json"
    if os.environ.get("CI") and not manifest.exists():
        pytest.exit("Kokoro weights missing in CI: `make test` should run `make weights`", 2)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    """Each `record_property("report", line)` a test made, passed or failed, after the run (and
    in a JUnit XML report as the test's property): measurements such as a word error rate."""
    lines = [
        str(value)
        for reports in terminalreporter.stats.values()
        for report in reports
        if getattr(report, "when", None) == "call"
        for name, value in getattr(report, "user_properties", ())
        if name == "report"
    ]
    if lines:
        terminalreporter.write_sep("=", "measurements")
        for line in lines:
            terminalreporter.write_line(line)
