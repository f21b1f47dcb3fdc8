"""Fixtures for the gateway's unit tests: the app over fakes, in process or under real uvicorn.

tests/conftest.py loads them for every test (`pytest_plugins`). The app is
built from `gateway_settings`; a test that needs other settings parametrizes that name:

    @pytest.mark.parametrize("gateway_settings", [{"max_input_chars": 10}])
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass

import httpx
import pytest
import uvicorn
from starlette.types import Message

from services.cli.processes import free_port
from services.common.web import DrainingServer
from services.gateway.delivery import DeliveryResponse, SpeechDelivery
from services.gateway.protocol import SpeechRequest
from tests.support.gateway_fakes import GOOD_KEY, FakeMesh, fake_mesh


@pytest.fixture
def gateway_settings() -> dict[str, object]:
    """GatewaySettings fields the app is built with beyond the defaults."""
    return {}


@pytest.fixture
def mesh(gateway_settings: dict[str, object]) -> FakeMesh:
    return fake_mesh(**gateway_settings)


@pytest.fixture
async def client(mesh: FakeMesh) -> AsyncIterator[httpx.AsyncClient]:
    """An in-process client: fast, but it buffers bodies and raises the app's exceptions."""
    transport = httpx.ASGITransport(app=mesh.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as client:
        yield client


@pytest.fixture
async def live_url(mesh: FakeMesh) -> AsyncIterator[str]:
    """The base URL of the app under real uvicorn, which streams as a client sees it."""
    async with live_gateway(mesh) as gateway:
        yield gateway.url


@pytest.fixture
async def http(live_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=live_url) as client:
        yield client


@dataclass(frozen=True)
class LiveGateway:
    server: DrainingServer
    url: str


class _QuietGatewayServer(DrainingServer):
    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield  # the test process keeps its own signal handlers


@contextlib.asynccontextmanager
async def live_gateway(mesh: FakeMesh, *, grace: float | None = None) -> AsyncIterator[LiveGateway]:
    """The app under the gateway's own uvicorn server on a free port, in this event loop, until
    the block ends or the server is told to exit; `grace` bounds its drain."""
    port = free_port()
    config = uvicorn.Config(
        mesh.app,
        host="127.0.0.1",
        port=port,
        log_config=None,
        access_log=False,
        lifespan="on",
        # Typed int, but any number of seconds works: a fraction keeps the tests quick.
        timeout_graceful_shutdown=grace,  # type: ignore[arg-type]
    )
    server = _QuietGatewayServer(config, mesh.app.state.draining)
    task = asyncio.ensure_future(server.serve())
    while not server.started:
        if task.done():
            task.result()
        await asyncio.sleep(0.01)
    try:
        yield LiveGateway(server, f"http://127.0.0.1:{port}")
    finally:
        server.should_exit = True
        await task


async def sell(mesh: FakeMesh, text: str) -> SpeechDelivery:
    """A sale made straight on the serving layer, as the speech route makes it."""
    seller = mesh.seller
    principal = await seller.authenticate(GOOD_KEY)
    order = await seller.validate(SpeechRequest(input=text))
    return await seller.sell(
        principal, order, request_id="r1", request_id_is_ours=True, idempotency_key=None
    )


async def eventually(condition: Callable[[], bool], timeout: float = 5.0) -> None:
    """Wait until `condition()` holds: settlement finishes just after the response does."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not condition():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError("condition not reached in time")
        await asyncio.sleep(0.01)


# What uvicorn, which serves the gateway, puts in every scope: Starlette streams differently
# under spec 2.4 (no disconnect listener), so tests drive the path production takes
# (tests/unit/test_gateway_streaming.py checks the live server against it).
UVICORN_ASGI = {"version": "3.0", "spec_version": "2.3"}


async def deliver_to_a_stalled_client(delivery: SpeechDelivery, send_timeout: float) -> list[bytes]:
    """Run `delivery` as uvicorn would for a client that takes the first piece of the body,
    then never reads again (its window stays full); the pieces it took."""
    bodies: list[bytes] = []

    async def send(message: Message) -> None:
        if message["type"] == "http.response.body":
            if bodies:
                await asyncio.Event().wait()
            bodies.append(message["body"])

    async def receive() -> Message:
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    response = DeliveryResponse(delivery, send_timeout=send_timeout)
    await asyncio.wait_for(response({"type": "http", "asgi": UVICORN_ASGI}, receive, send), 5)
    return bodies
