"""`make run` and the tests' mesh give every process a metrics port of its own (services/cli)."""

from __future__ import annotations

from pathlib import Path

from services.cli.mesh import SERVICES, LocalMesh
from services.common.mesh import METRICS_PORTS, PREDICTIONS_WORKER_METRICS_PORT


def _mesh(tmp_path: Path, metrics_ports: dict[str, int] | None = None) -> LocalMesh:
    # Built, not started: the ports and variables are decided here.
    return LocalMesh(
        data_dir=tmp_path,
        database_url="postgresql://unused.invalid/db",
        log_dir=tmp_path / "logs",
        metrics_ports=metrics_ports,
    )


def test_every_process_gets_a_free_metrics_port_of_its_own(tmp_path: Path) -> None:
    mesh = _mesh(tmp_path)
    ports = {name: mesh.process(name).metrics_port for name in SERVICES}
    assert len(set(ports.values())) == len(SERVICES)
    assert not set(ports.values()) & set(METRICS_PORTS.values())
    # The worker's is its own variable: PREDICTIONS_METRICS_PORT is the service's.
    worker_env = mesh.process("predictions-worker")._env
    assert worker_env["PREDICTIONS_WORKER_METRICS_PORT"] == str(ports["predictions-worker"])
    assert mesh.process("ledger")._env["LEDGER_METRICS_PORT"] == str(ports["ledger"])
    # Every process serves its metrics, the gateway and the worker included.
    assert mesh.metrics_addresses == {
        name: f"http://127.0.0.1:{ports[name]}/metrics" for name in SERVICES
    }


def test_make_run_uses_the_default_metrics_ports(tmp_path: Path) -> None:
    defaults = {**METRICS_PORTS, "predictions-worker": PREDICTIONS_WORKER_METRICS_PORT}
    mesh = _mesh(tmp_path, defaults)
    assert {name: mesh.process(name).metrics_port for name in SERVICES} == defaults
