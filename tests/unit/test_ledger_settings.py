"""Ledger settings: defaults an operator can rely on, and bad values caught at start-up."""

from __future__ import annotations

import pytest
from pydantic import ValidationError

from services.common.settings import load_settings
from services.ledger.settings import LedgerSettings


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("LEDGER_POOL_SIZE", raising=False)
    monkeypatch.setenv("DATABASE_URL", "postgresql://ledger@db/ledger")
    for name in ("TLS_DIR", "HEALTH_PORT"):
        monkeypatch.delenv(f"LEDGER_{name}", raising=False)
    for name in (
        "PORT",
        "HOST",
        "DEFAULT_HOLD_TTL_SECONDS",
        "MAX_HOLD_TTL_SECONDS",
        "MAX_TOP_UP_CREDITS",
    ):
        monkeypatch.delenv(f"LEDGER_{name}", raising=False)


def test_defaults() -> None:
    settings = LedgerSettings()

    assert settings.bind_address == "127.0.0.1:50052"
    assert settings.database_url == "postgresql://ledger@db/ledger"
    assert settings.default_hold_ttl_seconds <= settings.max_hold_ttl_seconds
    # Health alone, in plaintext, for kubelet; the certificate `make run` writes.
    assert settings.health_bind_address == "127.0.0.1:50062"
    assert settings.tls_dir is None
    assert settings.max_top_up_credits == 10_000_000


def test_prefixed_variables_and_the_shared_ones_are_read(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_PORT", "6000")
    monkeypatch.setenv("LEDGER_SWEEP_INTERVAL_SECONDS", "0.5")
    monkeypatch.setenv("LEDGER_TLS_DIR", "/etc/kokoropay/tls")
    monkeypatch.setenv("LEDGER_HEALTH_PORT", "6001")

    settings = LedgerSettings()

    assert settings.port == 6000
    assert settings.sweep_interval_seconds == 0.5
    assert str(settings.tls_dir) == "/etc/kokoropay/tls"
    assert settings.health_bind_address == "127.0.0.1:6001"


@pytest.mark.parametrize("value", ["0", "-1", str(10**12 + 1)])
def test_the_top_up_cap_is_positive_and_bounded(
    monkeypatch: pytest.MonkeyPatch, value: str
) -> None:
    monkeypatch.setenv("LEDGER_MAX_TOP_UP_CREDITS", value)

    with pytest.raises(ValidationError, match="max_top_up_credits"):
        LedgerSettings()


def test_a_database_url_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("DATABASE_URL")

    with pytest.raises(ValidationError, match="DATABASE_URL"):
        LedgerSettings()


def test_a_default_ttl_above_the_maximum_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_DEFAULT_HOLD_TTL_SECONDS", "7200")
    monkeypatch.setenv("LEDGER_MAX_HOLD_TTL_SECONDS", "3600")

    # The message names variables that exist, prefix and all.
    with pytest.raises(
        ValidationError, match="LEDGER_DEFAULT_HOLD_TTL_SECONDS exceeds LEDGER_MAX_HOLD_TTL_SECONDS"
    ):
        LedgerSettings()


def test_pool_sizes_use_the_same_names_as_auth(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LEDGER_POOL_MIN_SIZE", "20")
    monkeypatch.setenv("LEDGER_POOL_MAX_SIZE", "5")

    with pytest.raises(ValidationError, match="LEDGER_POOL_MIN_SIZE exceeds LEDGER_POOL_MAX_SIZE"):
        LedgerSettings()


def test_a_renamed_variable_stops_start_up_naming_the_new_one(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("LEDGER_POOL_SIZE", "10")

    with pytest.raises(SystemExit) as exited:
        load_settings(LedgerSettings)

    assert str(exited.value) == (
        "error: LEDGER_POOL_SIZE was renamed to LEDGER_POOL_MAX_SIZE;"
        " set LEDGER_POOL_MAX_SIZE instead"
    )
