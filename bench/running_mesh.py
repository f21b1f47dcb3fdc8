"""The mesh a benchmark measures: every service as its own process on an embedded PostgreSQL in
a scratch folder, as `make run` starts it, with progress while the model loads."""

from __future__ import annotations

import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from services.cli.embedded_database import local_database
from services.cli.mesh import LocalMesh


@contextmanager
def running_mesh(env: dict[str, str] | None = None) -> Iterator[LocalMesh]:
    """Started on entry (with `env` on top of its own settings), stopped (and its data deleted)
    on exit, whatever happened inside."""
    with tempfile.TemporaryDirectory(prefix="kokoropay-bench-") as scratch:
        data_dir = Path(scratch)
        with local_database(data_dir) as database_url:
            mesh = LocalMesh(
                data_dir=data_dir, database_url=database_url, log_dir=data_dir / "logs", env=env
            )
            print("starting the mesh (the model takes a while to load)…", flush=True)
            try:
                mesh.start(on_ready=lambda name, t: print(f"  {name} ready ({t:.1f}s)", flush=True))
                yield mesh
            finally:
                mesh.stop()
