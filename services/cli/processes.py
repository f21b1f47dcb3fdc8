"""Services as real processes on real sockets: how `kokoro-pay up`, the tests and the benchmarks
run the mesh, each service its own process, stopped with SIGTERM like a pod."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from services.common.settings import REPO_ROOT


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def health_status(address: str, service: str = "", timeout: float = 1.0) -> str | None:
    """The health status name, or None when nothing answers."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return None
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(response.status))


def http_status(url: str, timeout: float = 1.0) -> str | None:
    """SERVING for a 200, NOT_SERVING for another status, None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            return "SERVING" if response.status == 200 else "NOT_SERVING"
    except urllib.error.HTTPError:
        return "NOT_SERVING"
    except OSError:
        return None


class ServiceFailed(RuntimeError):
    """A service that died or never became ready; `summary` is one line for a person."""

    def __init__(self, service: ServiceProcess, what: str) -> None:
        logs = service.logs()
        last_line = next((line for line in reversed(logs.splitlines()) if line.strip()), "")
        reason = last_line.strip().removeprefix("error: ")[:300]
        self.summary = f"{service.name} {what}: {reason} (log: {service.log_path})"
        # The tail goes into the exception text so a failing test shows what happened.
        super().__init__(f"{self.summary}\n{logs[-4000:]}")


class ServiceProcess:
    """`python -m services.<name>` on a free port, stopped with SIGTERM like a pod.

    `module`, `env_prefix`, `health_port_variable` and `metrics_port_variable` are for a process
    that is not a service of its own name, such as the predictions workers
    (`services.predictions.worker`, configured as PREDICTIONS_*, reporting health on
    PREDICTIONS_WORKER_HEALTH_PORT).

    Every process gets a metrics port of its own, free unless given, so that processes started
    side by side never contend for the default ones (services/common/mesh.py)."""

    def __init__(
        self,
        name: str,
        env: dict[str, str],
        log_dir: Path,
        port: int | None = None,
        http_ready_path: str | None = None,
        health_port: int | None = None,
        module: str | None = None,
        env_prefix: str | None = None,
        health_port_variable: str | None = None,
        metrics_port: int | None = None,
        metrics_port_variable: str | None = None,
    ) -> None:
        self.name = name
        self.module = module or f"services.{name}"
        # HTTP services (the gateway) report readiness on a path instead of gRPC health.
        self.http_ready_path = http_ready_path
        self.port = port or free_port()
        self.address = f"127.0.0.1:{self.port}"
        # gRPC services answer health checks on a plaintext port of their own (no certificate).
        self.health_port = health_port or free_port()
        self.health_address = f"127.0.0.1:{self.health_port}"
        # Prometheus' /metrics, plain HTTP (services/common/metrics.py).
        self.metrics_port = metrics_port or free_port()
        self.metrics_url = f"http://127.0.0.1:{self.metrics_port}/metrics"
        self.log_path = log_dir / f"{name}-{self.port}.log"
        prefix = env_prefix or name.upper()
        self._env = {
            **os.environ,
            **env,
            f"{prefix}_PORT": str(self.port),
            f"{prefix}_HOST": "127.0.0.1",
            health_port_variable or f"{prefix}_HEALTH_PORT": str(self.health_port),
            metrics_port_variable or f"{prefix}_METRICS_PORT": str(self.metrics_port),
        }
        self.process: subprocess.Popen[bytes] | None = None

    def reconfigure(self, env: Mapping[str, str | None]) -> dict[str, str | None]:
        """Settings for its next start (None: unset), such as a restart with batching on; the
        values they replace, to put back the same way."""
        previous = {name: self._env.get(name) for name in env}
        for name, value in env.items():
            if value is None:
                self._env.pop(name, None)
            else:
                self._env[name] = value
        return previous

    def start(self, wait_serving: bool = True, timeout: float = 60.0) -> ServiceProcess:
        # The child keeps its own copy of the descriptor; the parent's is closed at once.
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [sys.executable, "-m", self.module],
                cwd=REPO_ROOT,
                env=self._env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        if wait_serving:
            self.wait_for("SERVING", timeout)
        return self

    def wait_for(self, status: str, timeout: float = 60.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ServiceFailed(self, "exited during start-up")
            if self.status() == status:
                return
            time.sleep(0.1)
        raise ServiceFailed(self, f"not {status} after {timeout:.0f}s")

    def status(self) -> str | None:
        """SERVING / NOT_SERVING / None (nothing answers), for gRPC and HTTP services alike."""
        if self.http_ready_path is None:
            return health_status(self.health_address)
        return http_status(f"http://{self.address}{self.http_ready_path}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def terminate(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30.0) -> int | None:
        if self.process is None:
            return None
        self.terminate()
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def kill(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.kill()
            self.process.wait()
