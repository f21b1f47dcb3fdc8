"""Fixtures shared by every test layer: a real PostgreSQL and a folder for service logs."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.postgres import create_database, postgres_server_url


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
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return Path(tmp_path_factory.mktemp("service-logs"))
