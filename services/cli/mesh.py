"""The whole kokoro-pay mesh on one machine: each service its own process on loopback.

`kokoro-pay up`, the end-to-end tests and the benchmarks all start the mesh through this one
class, so what they exercise is what a user runs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from pathlib import Path

from services.cli.embedded_database import DatabaseUrls
from services.cli.local_pki import ensure_local_pki
from services.cli.local_secrets import ensure_local_secrets
from services.cli.processes import ServiceProcess, free_port
from services.common.mesh import KEY_HASH_SECRET_ENV, PKI_DIR, URL_SIGNING_SECRET_ENV

# Start order matters only for reporting: the gateway waits on its upstreams by itself.
SERVICES = ("auth", "ledger", "synth", "predictions", "predictions-worker", "gateway", "dashboard")
# Processes that are not a service of their own name: module, settings prefix, health variable,
# metrics port variable.
WORKERS = {
    "predictions-worker": (
        "services.predictions.worker",
        "PREDICTIONS",
        "PREDICTIONS_WORKER_HEALTH_PORT",
        "PREDICTIONS_WORKER_METRICS_PORT",
    ),
}
# Served over HTTP; ready when /readyz answers 200.
HTTP_SERVICES = ("gateway", "dashboard")
# Loading and warming up the model dominates start-up on a CPU.
START_TIMEOUT_SECONDS = {"synth": 600.0}


class LocalMesh:
    def __init__(
        self,
        *,
        data_dir: Path,
        # One URL (auth and ledger serve as its role, the owner) or the roles' URLs.
        database_url: str | DatabaseUrls,
        log_dir: Path,
        ports: dict[str, int] | None = None,
        health_ports: dict[str, int] | None = None,
        metrics_ports: dict[str, int] | None = None,
        env: dict[str, str] | None = None,
        services: Sequence[str] = SERVICES,
    ) -> None:
        unknown = set(services) - set(SERVICES)
        if unknown:
            raise ValueError(f"unknown services: {sorted(unknown)}")
        self.services = [name for name in SERVICES if name in services]
        chosen = ports if ports is not None else {name: free_port() for name in SERVICES}
        self.ports = {name: chosen.get(name) or free_port() for name in SERVICES}
        secrets = ensure_local_secrets(data_dir)
        self.pki = ensure_local_pki(data_dir / PKI_DIR)
        # The operator's certificate: what the local run's bootstrap and the tests administer with.
        self.operator_tls = self.pki.identity("operator")
        self.addresses = {name: f"127.0.0.1:{port}" for name, port in self.ports.items()}
        for name in HTTP_SERVICES:
            self.addresses[name] = f"http://127.0.0.1:{self.ports[name]}"
        databases = (
            database_url
            if isinstance(database_url, DatabaseUrls)
            else DatabaseUrls.single(database_url)
        )
        self.databases = databases
        shared_env = {
            KEY_HASH_SECRET_ENV: secrets.key_hash_secret,
            URL_SIGNING_SECRET_ENV: secrets.url_signing_secret,
            "PREDICTIONS_LEDGER_ADDRESS": self.grpc_address("ledger"),
            "PREDICTIONS_SYNTH_ADDRESS": self.grpc_address("synth"),
            # Output URLs point at this run's gateway; webhooks may go to this machine.
            "PREDICTIONS_PUBLIC_BASE_URL": self.addresses["gateway"],
            "PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS": "true",
            "GATEWAY_PREDICTIONS_ADDRESS": self.grpc_address("predictions"),
            "DASHBOARD_PREDICTIONS_ADDRESS": self.grpc_address("predictions"),
            "GATEWAY_AUTH_ADDRESS": self.grpc_address("auth"),
            "GATEWAY_LEDGER_ADDRESS": self.grpc_address("ledger"),
            "GATEWAY_SYNTH_ADDRESS": self.grpc_address("synth"),
            "DASHBOARD_AUTH_ADDRESS": self.grpc_address("auth"),
            "DASHBOARD_LEDGER_ADDRESS": self.grpc_address("ledger"),
            "DASHBOARD_PUBLIC_API_URL": f"{self.addresses['gateway']}/v1",
            "DASHBOARD_SYNTH_ADDRESS": self.grpc_address("synth"),
            "DASHBOARD_GATEWAY_URL": self.addresses["gateway"],
            "DASHBOARD_PUBLIC_URL": self.addresses["dashboard"],
            # A 402 sends the customer to this run's billing page.
            "GATEWAY_BILLING_URL": f"{self.addresses['dashboard']}/billing",
            **(env or {}),
        }
        log_dir.mkdir(parents=True, exist_ok=True)
        self._log_dir = log_dir
        self._shared_env = shared_env
        self._processes = {}
        for name in self.services:
            module, prefix, health_variable, metrics_variable = WORKERS.get(
                name, (None, name.upper(), None, None)
            )
            identity = name.removesuffix("-worker")  # workers prove themselves as their service
            self._processes[name] = ServiceProcess(
                name,
                self._process_env(name, prefix, identity),
                log_dir,
                port=self.ports[name],
                http_ready_path="/readyz" if name in HTTP_SERVICES else None,
                health_port=(health_ports or {}).get(name),
                module=module,
                env_prefix=prefix,
                health_port_variable=health_variable,
                metrics_port=(metrics_ports or {}).get(name),
                metrics_port_variable=metrics_variable,
            )
        # Prometheus' /metrics of each process (free ports unless `metrics_ports` names them).
        self.metrics_addresses = {
            name: process.metrics_url for name, process in self._processes.items()
        }

    def replica(self, name: str, env: dict[str, str] | None = None) -> ServiceProcess:
        """Another process of service `name` on ports of its own, configured like the mesh's
        (plus `env`): a second gateway replica sharing the mesh's upstreams and limits. Not
        started, and not stopped with the mesh: the caller owns it."""
        if name not in HTTP_SERVICES:
            raise ValueError(f"only HTTP services are replicated here, not {name!r}")
        return ServiceProcess(
            name,
            {**self._process_env(name, name.upper(), name), **(env or {})},
            self._log_dir,
            http_ready_path="/readyz",
        )

    def _process_env(self, name: str, prefix: str, identity: str) -> dict[str, str]:
        # Each process proves itself with its own certificate.
        return {
            **self.databases.env(name),
            **self._shared_env,
            f"{prefix}_TLS_DIR": str(self.pki.folder(identity)),
        }

    def grpc_address(self, name: str) -> str:
        return f"127.0.0.1:{self.ports[name]}"

    def process(self, name: str) -> ServiceProcess:
        return self._processes[name]

    def start(self, on_ready: Callable[[str, float], None] | None = None) -> None:
        """Start every service at once, then wait for each to report SERVING."""
        started = time.monotonic()
        for process in self._processes.values():
            process.start(wait_serving=False)
        try:
            for name, process in self._processes.items():
                process.wait_for("SERVING", START_TIMEOUT_SECONDS.get(name, 90.0))
                if on_ready is not None:
                    on_ready(name, time.monotonic() - started)
        except BaseException:
            self.stop()
            raise

    def exited(self) -> list[str]:
        """Services whose process has ended."""
        return [
            name
            for name, process in self._processes.items()
            if process.process is not None and process.process.poll() is not None
        ]

    def stop(self) -> None:
        """SIGTERM to every service at once (they drain in parallel), then wait for each."""
        for process in self._processes.values():
            process.terminate()
        for process in self._processes.values():
            process.stop()
