"""Two database URLs per service: the owner's for migrations, the serving role's for the rest."""

from __future__ import annotations

import pytest

from services.auth.settings import AuthSettings
from services.cli.embedded_database import DatabaseUrls
from services.ledger.settings import LedgerSettings

SERVING = "postgresql://kokoropay_ledger@db/kokoropay"
OWNER = "postgresql://kokoropay_owner@db/kokoropay"


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", SERVING)
    for name in ("AUTH_MIGRATION_DATABASE_URL", "LEDGER_MIGRATION_DATABASE_URL"):
        monkeypatch.delenv(name, raising=False)


def test_without_an_owner_url_migrations_use_the_serving_one() -> None:
    settings = LedgerSettings()

    assert settings.migration_database_url is None
    assert settings.migration_url == SERVING


def test_each_service_reads_its_own_owner_url(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_MIGRATION_DATABASE_URL", OWNER)

    assert LedgerSettings().migration_url == OWNER
    assert LedgerSettings().database_url == SERVING
    assert AuthSettings().migration_url == SERVING
    assert LedgerSettings.env_name("migration_database_url") == "LEDGER_MIGRATION_DATABASE_URL"
    assert AuthSettings.env_name("migration_database_url") == "AUTH_MIGRATION_DATABASE_URL"


def test_the_local_mesh_gives_each_service_its_urls() -> None:
    urls = DatabaseUrls(owner=OWNER, auth="postgresql://a@db/k", ledger=SERVING)

    assert urls.env("ledger") == {"DATABASE_URL": SERVING, "LEDGER_MIGRATION_DATABASE_URL": OWNER}
    assert urls.env("auth") == {
        "DATABASE_URL": "postgresql://a@db/k",
        "AUTH_MIGRATION_DATABASE_URL": OWNER,
    }
    assert urls.env("synth") == {}
    # One URL: the services migrate and serve as it, as before the roles.
    assert DatabaseUrls.single(OWNER).env("ledger") == {"DATABASE_URL": OWNER}
