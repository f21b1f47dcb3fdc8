"""Ledger settings: defaults an operator can rely on, and bad values caught at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.ledger.settings import LedgerSettings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DATABASE_URL", "postgresql://ledger@db/ledger")
    monkeypatch.delenv("KOKOROPAY_OPERATOR_TOKEN", raising=False)
    for name in ("PORT", "HOST", "DEFAULT_HOLD_TTL_SECONDS", "MAX_HOLD_TTL_SECONDS", "POOL_SIZE"):
        monkeypatch.delenv(f"LEDGER_{name}", raising=False)


def test_defaults() -> None:
    settings = LedgerSettings()

    assert settings.bind_address == "127.0.0.1:50052"
    assert settings.database_url == "postgresql://ledger@db/ledger"
    assert settings.default_hold_ttl_seconds <= settings.max_hold_ttl_seconds
    assert settings.operator_token is None


def test_prefixed_variables_and_the_shared_ones_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_PORT", "6000")
    monkeypatch.setenv("LEDGER_SWEEP_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("KOKOROPAY_OPERATOR_TOKEN", "secret")

    settings = LedgerSettings()

    assert settings.port == 6000
    assert settings.sweep_interval_seconds == 0.5
    assert settings.operator_token is not None
    assert settings.operator_token.get_secret_value() == "secret"


def test_a_database_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL")

    with pytest.raises(ValidationError, match="DATABASE_URL"):
        LedgerSettings()


def test_a_default_ttl_above_the_maximum_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DEFAULT_HOLD_TTL_SECONDS", "7200")
    monkeypatch.setenv("LEDGER_MAX_HOLD_TTL_SECONDS", "3600")

    with pytest.raises(ValidationError, match="DEFAULT_HOLD_TTL_SECONDS exceeds"):
        LedgerSettings()
