"""What the HTTP services (gateway, dashboard) share: uvicorn that drains like a pod should, and
FastAPI's own telemetry set the way we trace.

Only the HTTP services import this (uvicorn and FastAPI are in their images alone; the import
contract `web-in-gateway` in pyproject.toml says so).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Generator
from types import FrameType

import uvicorn
from fastapi.telemetry import TelemetryConfig

from services.common import tracing


def telemetry() -> TelemetryConfig:
    """FastAPI's `telemetry` argument: while traces are on (services/common/tracing.py), a
    SERVER span per HTTP request, named by its route template (`POST /v1/audio/speech`, never
    the raw path), with the method, path, status and a query whose values are redacted; no
    header and no body is ever an attribute. Nothing else, ever: no metrics or log records of
    its own (Prometheus has ours), no span per dependency or serialization, no exporter from the
    environment. While traces are off, FastAPI does nothing at all."""
    provider = tracing.provider()
    return {
        "tracing": provider is not None,
        "tracer_provider": provider,
        "metrics": False,
        "logs": False,
        "operation_spans": False,
        "auto_configure": False,
    }


class DrainingServer(uvicorn.Server):
    """Uvicorn that reports not-ready as soon as a stop is asked for, before it drains: the
    app's /readyz reads `draining`, so new traffic goes elsewhere while requests finish."""

    def __init__(self, config: uvicorn.Config, draining: asyncio.Event) -> None:
        super().__init__(config)
        self._draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._draining.set()
        super().handle_exit(sig, frame)

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None]:
        """Uvicorn's, less its last step: after a drain it raises the signal again for the
        handler it replaced, which for SIGTERM kills the process there and then. The caller's
        clean-up after `serve()` (closing gRPC channels, flushing the last traces) would never
        run; a drain is how a pod ends, so `serve()` returns and `main` exits 0. Ctrl-C (SIGINT)
        likewise drains and exits 0, instead of ending in KeyboardInterrupt."""
        with super().capture_signals():
            try:
                yield
            finally:
                self._captured_signals.clear()
