"""The exporter every process runs (services/common/metrics.py): Prometheus' text on a port of
its own, a setting per service, and nothing on the public port."""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from services.cli.processes import free_port
from services.common.mesh import METRICS_PORTS
from services.common.metrics import MetricsServer, start_metrics_server
from services.dashboard.app import create_app
from services.dashboard.settings import DashboardSettings
from services.synth.settings import SynthSettings
from tests.support.metrics import Exposition


@pytest.fixture
def exporter() -> Iterator[MetricsServer]:
    server = start_metrics_server("127.0.0.1", free_port())
    assert server is not None
    yield server
    server.stop()


def test_the_metrics_port_serves_prometheus_text(exporter: MetricsServer) -> None:
    with urllib.request.urlopen(f"http://127.0.0.1:{exporter.port}/metrics", timeout=5) as reply:
        assert reply.status == 200
        assert reply.headers["Content-Type"].startswith("text/plain; version=0.0.4")
        exposition = Exposition.parse(reply.read().decode())
    # The process collector's series, and no `_created` twin beside each counter.
    assert exposition.has("process_cpu_seconds_total")
    assert not any(name.endswith("_created") for name, _ in exposition.samples)


def test_port_zero_turns_the_exporter_off() -> None:
    assert start_metrics_server("127.0.0.1", 0) is None


def test_a_taken_port_stops_the_process_with_one_line() -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(SystemExit, match=f"cannot serve metrics on 127.0.0.1:{port}"):
            start_metrics_server("127.0.0.1", port)


def test_each_service_has_its_own_default_port_and_a_setting_to_move_or_drop_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert SynthSettings().metrics_listen_port == METRICS_PORTS["synth"]
    assert DashboardSettings().metrics_listen_port == METRICS_PORTS["dashboard"]
    assert len(set(METRICS_PORTS.values())) == len(METRICS_PORTS)
    monkeypatch.setenv("SYNTH_METRICS_PORT", "9999")
    assert SynthSettings().metrics_listen_port == 9999
    monkeypatch.setenv("SYNTH_METRICS_PORT", "0")
    assert SynthSettings().metrics_listen_port == 0


def test_the_public_port_serves_no_metrics() -> None:
    app = create_app(DashboardSettings(), backends=None)  # type: ignore[arg-type]
    assert TestClient(app).get("/metrics").status_code == 404
