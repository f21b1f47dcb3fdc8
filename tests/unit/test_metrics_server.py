"""The exporter every process runs (services/common/metrics.py): Prometheus' text on a port of
its own, a setting per service, and nothing on the public port; the gateway's process serves its
own there."""

from __future__ import annotations

import socket
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from services.cli.processes import ServiceProcess, free_port
from services.common.mesh import METRICS_PORTS
from services.common.metrics import MetricsServer, start_metrics_server
from services.dashboard.app import create_app
from services.dashboard.settings import DashboardSettings
from services.gateway.settings import GatewaySettings
from services.synth.settings import SynthSettings
from tests.support.metrics import Exposition
from tests.support.pki import tls_env


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
    assert GatewaySettings().metrics_listen_port == METRICS_PORTS["gateway"]
    assert len(set(METRICS_PORTS.values())) == len(METRICS_PORTS)
    monkeypatch.setenv("SYNTH_METRICS_PORT", "9999")
    assert SynthSettings().metrics_listen_port == 9999
    monkeypatch.setenv("SYNTH_METRICS_PORT", "0")
    assert SynthSettings().metrics_listen_port == 0


def test_the_public_port_serves_no_metrics() -> None:
    app = create_app(DashboardSettings(), backends=None)  # type: ignore[arg-type]
    assert TestClient(app).get("/metrics").status_code == 404


def _get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=5) as reply:
        return str(reply.read().decode())


def test_the_gateway_process_serves_its_metrics_on_its_own_port(tmp_path: Path) -> None:
    # No upstream answers (nothing listens on port 9): /healthz needs none, /readyz says so.
    nowhere = "127.0.0.1:9"
    env = {
        **tls_env("gateway"),
        **{
            f"GATEWAY_{name}_ADDRESS": nowhere
            for name in ("AUTH", "LEDGER", "SYNTH", "PREDICTIONS")
        },
    }
    gateway = ServiceProcess("gateway", env, tmp_path, http_ready_path="/healthz").start()
    try:
        assert _get(f"http://{gateway.address}/healthz")
        with pytest.raises(urllib.error.HTTPError):
            _get(f"http://{gateway.address}/v1/prediction/pred_0001/no/such/path")
        exposition = Exposition.parse(_get(gateway.metrics_url))
        # On the public port, /metrics is an unknown path like any other.
        with pytest.raises(urllib.error.HTTPError, match="404"):
            _get(f"http://{gateway.address}/metrics")
    finally:
        gateway.stop()

    healthz = {"route": "/healthz", "method": "GET", "status": "200"}
    assert exposition.total("kokoropay_gateway_http_requests_total", **healthz) >= 2
    assert exposition.total("kokoropay_gateway_http_requests_total", route="other") == 1
    for series in (
        "kokoropay_gateway_characters_charged_total",
        "kokoropay_gateway_first_audio_seconds_count",
        "kokoropay_gateway_active_streams",
    ):
        assert exposition.has(series), series
    assert exposition.has("kokoropay_gateway_audio_bytes_total", format="opus")
    assert exposition.has("kokoropay_gateway_rate_limited_total", limit="invalid_keys")
    # The process collector's series too, and no `_created` twins.
    assert exposition.has("process_cpu_seconds_total")
    assert not any(name.endswith("_created") for name, _ in exposition.samples)
