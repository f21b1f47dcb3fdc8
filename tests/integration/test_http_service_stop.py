"""SIGTERM ends the HTTP services the way it ends a pod: drained, cleaned up, exit 0.

Uvicorn raises a caught SIGTERM again once it has drained, which killed the process before the
code after `serve()` ran (closing gRPC channels, flushing the last traces): exit -15 and no
"stopped". services/common/web.py keeps the signal from being raised twice.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest

from services.cli.processes import ServiceProcess, free_port
from tests.support.pki import tls_env

# Upstreams nobody listens on: stopping must not wait for them.
_NOWHERE = "127.0.0.1:9"


def _listening(port: int) -> bool:
    with socket.socket() as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


@pytest.mark.parametrize("name", ["gateway", "dashboard"])
def test_sigterm_runs_the_clean_up_and_exits_0(name: str, log_dir: Path) -> None:
    prefix = name.upper()
    upstreams = ("AUTH", "LEDGER", "SYNTH", "PREDICTIONS")
    env = {**tls_env(name), **{f"{prefix}_{up}_ADDRESS": _NOWHERE for up in upstreams}}
    process = ServiceProcess(name, env, log_dir, port=free_port()).start(wait_serving=False)
    try:
        deadline = time.monotonic() + 60
        while not _listening(process.port):
            assert process.process is not None and process.process.poll() is None, process.logs()
            assert time.monotonic() < deadline, process.logs()
            time.sleep(0.1)
    finally:
        code = process.stop(timeout=30)
    assert code == 0, process.logs()[-3000:]
    assert '"stopped"' in process.logs()
