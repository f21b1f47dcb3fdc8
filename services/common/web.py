"""The HTTP services' server (gateway, dashboard): uvicorn that drains like a pod should.

Only the HTTP services import this (uvicorn is in their images alone; the import contract
`web-in-gateway` in pyproject.toml says so).
"""

from __future__ import annotations

import asyncio
from types import FrameType

import uvicorn


class DrainingServer(uvicorn.Server):
    """Uvicorn that reports not-ready as soon as a stop is asked for, before it drains: the
    app's /readyz reads `draining`, so new traffic goes elsewhere while requests finish."""

    def __init__(self, config: uvicorn.Config, draining: asyncio.Event) -> None:
        super().__init__(config)
        self._draining = draining

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        self._draining.set()
        super().handle_exit(sig, frame)
