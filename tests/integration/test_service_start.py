"""What an operator sees when a service cannot start: one line saying why, not a traceback."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from services.cli.processes import ServiceFailed, ServiceProcess
from tests.support.pki import tls_env


def test_a_taken_port_is_one_clear_line(database_url: str, log_dir: Path) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        ledger = ServiceProcess(
            "ledger",
            {"DATABASE_URL": database_url, **tls_env("ledger")},
            log_dir,
            port=port,
        )
        with pytest.raises(ServiceFailed) as failed:
            ledger.start(timeout=30)
    assert failed.value.summary.startswith(
        f"ledger exited during start-up: cannot listen on 127.0.0.1:{port}: "
        "is another process using it?"
    ), failed.value.summary
    assert "Traceback" not in ledger.logs()
