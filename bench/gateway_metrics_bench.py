"""What the gateway's own metrics cost a request: the app over in-memory upstreams, called as
ASGI in this process, with the metrics recorded and with every recording made a no-op.

    python -m bench.gateway_metrics_bench [--requests 3000]

Two requests: `GET /healthz` (the HTTP metrics alone: the route's template, a counter and a
histogram), and a streamed `POST /v1/audio/speech` of three pieces (those, and the first audio
byte, the audio bytes and seconds, the active streams, the characters charged). The two sides
alternate in blocks, so both see the same machine; each side's median per request is reported,
and the cost is their difference. No network and no real upstream: what is measured is the
gateway's own Python, which is all the metrics add to. Target: at most 20 µs a request.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import statistics
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

from starlette.types import ASGIApp, Message

from services.gateway import metrics, middleware
from services.gateway.clients import KeyUse
from tests.support.gateway_fakes import ACCOUNT, FakeKeyLimits, auth_header, fake_mesh

TARGET_US = 20.0
BLOCK = 100
SPEECH_BODY = b'{"input": "Metrics are counted where the work happens.", "voice": "af_sky"}'

Request = tuple[str, str, bytes, dict[str, str]]
HEALTHZ: Request = ("GET", "/healthz", b"", {})
SPEECH: Request = ("POST", "/v1/audio/speech", SPEECH_BODY, auth_header())


async def call(app: ASGIApp, request: Request) -> int:
    """One request through the whole ASGI app, as uvicorn would hand it over; its status."""
    method, path, body, headers = request
    raw_headers = [(b"host", b"bench")]
    raw_headers += [(name.lower().encode(), value.encode()) for name, value in headers.items()]
    if body:
        raw_headers += [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ]
    scope = {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": method,
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "query_string": b"",
        "headers": raw_headers,
        "client": ("127.0.0.1", 40000),
        "server": ("127.0.0.1", 8000),
    }
    done = asyncio.Event()
    sent_body = False
    status = 0

    async def receive() -> Message:
        nonlocal sent_body
        if not sent_body:
            sent_body = True
            return {"type": "http.request", "body": body, "more_body": False}
        await done.wait()
        return {"type": "http.disconnect"}

    async def send(message: Message) -> None:
        nonlocal status
        if message["type"] == "http.response.start":
            status = message["status"]
        elif message["type"] == "http.response.body" and not message.get("more_body", False):
            done.set()

    await app(scope, receive, send)
    done.set()
    return status


def _noop(*_: Any, **__: Any) -> None:
    return None


@contextlib.contextmanager
def metrics_off() -> Iterator[None]:
    """Every recording of the gateway's metrics a no-op, and no route template looked up."""
    patched: list[tuple[Any, str, Any]] = []

    def patch(owner: Any, name: str, value: Any) -> None:
        patched.append((owner, name, getattr(owner, name)))
        setattr(owner, name, value)

    for name in (
        "record_request",
        "record_first_audio",
        "record_audio",
        "record_settlement",
        "record_payment_required",
        "record_rate_limited",
    ):
        patch(metrics, name, _noop)
    patch(metrics, "streaming", contextlib.nullcontext)
    patch(middleware, "route_template", lambda scope, routes: metrics.OTHER_ROUTE)
    try:
        yield
    finally:
        for owner, name, value in reversed(patched):
            setattr(owner, name, value)


async def side(
    app: ASGIApp, request: Request, count: int, context: Callable[[], Any]
) -> list[float]:
    """`count` requests one after another, each timed in microseconds."""
    times = []
    with context():
        for _ in range(count):
            started = time.perf_counter()
            status = await call(app, request)
            times.append((time.perf_counter() - started) * 1e6)
            assert status == 200, status
    return times


async def measure(request: Request, requests: int) -> tuple[float, float]:
    """The median microseconds a request takes with the metrics on and off."""
    mesh = fake_mesh()
    mesh.ledger.balances[ACCOUNT] = 10**12
    for use in KeyUse:
        mesh.auth.limits[use] = FakeKeyLimits(10**9, 10**6)
    app = mesh.app
    await side(app, request, BLOCK, contextlib.nullcontext)  # warm-up: imports, caches
    on: list[float] = []
    off: list[float] = []
    for _ in range(max(1, requests // BLOCK)):
        on += await side(app, request, BLOCK, contextlib.nullcontext)
        off += await side(app, request, BLOCK, metrics_off)
    await mesh.seller.drain()
    return statistics.median(on), statistics.median(off)


async def main_async(requests: int) -> int:
    worst = 0.0
    for name, request in (("GET /healthz", HEALTHZ), ("POST /v1/audio/speech", SPEECH)):
        on, off = await measure(request, requests)
        cost = on - off
        worst = max(worst, cost)
        print(
            f"{name:<24} metrics on {on:8.1f} µs   off {off:8.1f} µs   "
            f"cost {cost:+6.1f} µs ({cost / off:+.1%})"
        )
    print(
        f"target: at most {TARGET_US:.0f} µs a request: {'met' if worst <= TARGET_US else 'MISSED'}"
    )
    return 0 if worst <= TARGET_US else 1


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=3000, help="requests per side")
    args = parser.parse_args()
    return asyncio.run(main_async(args.requests))


if __name__ == "__main__":
    sys.exit(main())
