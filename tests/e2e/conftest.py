"""The whole mesh as separate processes: real PostgreSQL, the real model, the real gateway.

One mesh per session (the model loads once). Customers are created the way an operator does it,
through auth and ledger over gRPC; tests then speak to the gateway only as a client would.
"""

from __future__ import annotations

import asyncio
import io
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import av
import httpx
import pytest

from services.cli.admin import AdminClient
from services.cli.mesh import START_TIMEOUT_SECONDS, LocalMesh
from tests.support import fake_stripe as fake_stripe_module
from tests.support.browser import chromium_path
from tests.support.fake_stripe import FakeStripe
from tests.support.paths import REPO_ROOT
from tests.support.postgres import create_database

WEIGHTS_MANIFEST = REPO_ROOT / ".data" / "weights" / "manifest.json"
# Stream slots of a gateway that dies free themselves after this long, not the default 30 s, so
# test_gateway_limits.py watches it happen in seconds.
SLOT_LEASE_SECONDS = 4


@dataclass(frozen=True)
class Customer:
    account_id: str
    key: str
    key_id: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}


NewCustomer = Callable[..., Awaitable[Customer]]


@pytest.fixture(scope="session")
def fake_stripe() -> Iterator[FakeStripe]:
    """Stripe's API as the dashboard reaches it in the tests (tests/support/fake_stripe.py)."""
    with FakeStripe() as fake:
        yield fake


@pytest.fixture(scope="session")
def mesh(
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    log_dir: Path,
    fake_stripe: FakeStripe,
) -> Iterator[LocalMesh]:
    if not WEIGHTS_MANIFEST.exists():
        pytest.skip("the Kokoro weights are not under .data/weights (run `make weights`)")
    mesh = LocalMesh(
        data_dir=tmp_path_factory.mktemp("mesh"),
        database_url=create_database(postgres_url, prefix="e2e"),
        log_dir=log_dir,
        # Every test signs in and up from 127.0.0.1: the per-address limits are auth's
        # integration tests' to check (tests/integration/test_auth_people.py), not to trip here.
        env={
            "AUTH_SIGN_INS_PER_ADDRESS_PER_MINUTE": "10000",
            "AUTH_SIGN_UPS_PER_ADDRESS_PER_HOUR": "10000",
            # The tests are the gateway's Ingress: an X-Forwarded-For they send names the client,
            # so test_gateway_key_floods.py floods from an address of its own and leaves
            # 127.0.0.1, which every other test (and its few refused keys) comes from, alone.
            "GATEWAY_TRUSTED_PROXIES": "127.0.0.1",
            "AUTH_SLOT_LEASE_SECONDS": str(SLOT_LEASE_SECONDS),
            # A webhook receiver that fails is retried within a second, not half a minute.
            "PREDICTIONS_WEBHOOK_RETRY_BASE_SECONDS": "0.5",
            "PREDICTIONS_WEBHOOK_RETRY_MAX_DELAY_SECONDS": "2",
            # The dashboard sells credits through its real Stripe code, against the stand-in.
            "DASHBOARD_STRIPE_SECRET_KEY": fake_stripe_module.SECRET_KEY,
            "DASHBOARD_STRIPE_WEBHOOK_SECRET": fake_stripe_module.WEBHOOK_SECRET,
            "DASHBOARD_STRIPE_API_BASE": fake_stripe.url,
        },
    )
    mesh.start()
    yield mesh
    mesh.stop()


@pytest.fixture(scope="session")
def base_url(mesh: LocalMesh) -> str:
    """What a customer puts in their client: the gateway's `…/v1`."""
    return f"{mesh.addresses['gateway']}/v1"


@pytest.fixture(scope="session")
def dashboard_url(mesh: LocalMesh) -> str:
    """What a person opens in their browser."""
    return mesh.addresses["dashboard"]


@pytest.fixture(scope="session")
def browser_type_launch_args(browser_type_launch_args: dict[str, Any]) -> dict[str, Any]:
    """pytest-playwright-asyncio launches Debian's Chromium (tests/support/browser.py)."""
    return {
        **browser_type_launch_args,
        "executable_path": chromium_path(),
        "headless": True,
        # The playground starts audio on a click; previews and tests need no further gesture.
        "args": ["--autoplay-policy=no-user-gesture-required"],
    }


@pytest.fixture(scope="session")
def browser_context_args(
    browser_context_args: dict[str, Any], dashboard_url: str
) -> dict[str, Any]:
    return {**browser_context_args, "base_url": dashboard_url}


@pytest.fixture(scope="session")
async def admin(mesh: LocalMesh) -> AsyncIterator[AdminClient]:
    async with AdminClient(
        mesh.grpc_address("auth"),
        mesh.grpc_address("ledger"),
        mesh.operator_tls,
        mesh.grpc_address("predictions"),
    ) as admin:
        yield admin


@pytest.fixture(scope="session")
def new_customer(admin: AdminClient) -> NewCustomer:
    """Creates an account with `credits` (and the unlimited flag) and one live key."""

    async def create(credits: int = 0, unlimited: bool = False) -> Customer:
        account, _ = await admin.create_account(f"e2e-{uuid.uuid4().hex[:12]}", credits, unlimited)
        created = await admin.create_key(account.id, name="e2e")
        return Customer(account.id, created.plaintext, created.key.id)

    return create


@pytest.fixture
async def synth_restarted_after(mesh: LocalMesh) -> AsyncIterator[None]:
    """For tests that kill synth: afterwards it runs again and the gateway is ready."""
    yield
    synth = mesh.process("synth")
    if synth.process is not None and synth.process.poll() is None:
        return
    await asyncio.to_thread(synth.start, True, START_TIMEOUT_SECONDS.get("synth", 600.0))
    deadline = time.monotonic() + 300
    async with httpx.AsyncClient(base_url=mesh.addresses["gateway"]) as client:
        while (await client.get("/readyz")).status_code != 200:
            assert time.monotonic() < deadline, "gateway not ready after synth restarted"
            await asyncio.sleep(0.5)


@pytest.fixture
async def http(base_url: str) -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(base_url=base_url, timeout=300) as client:
        yield client


async def balance_of(http: httpx.AsyncClient, customer: Customer) -> int:
    response = await http.get("/balance", headers=customer.headers)
    assert response.status_code == 200, response.text
    return int(response.json()["balance"])


async def balance_becomes(
    http: httpx.AsyncClient, customer: Customer, expected: int, timeout: float = 30.0
) -> None:
    """Settlement ends just after the response does; wait for the balance to reach `expected`."""
    deadline = time.monotonic() + timeout
    while (current := await balance_of(http, customer)) != expected:
        if time.monotonic() > deadline:
            raise AssertionError(f"balance is {current}, expected {expected}")
        await asyncio.sleep(0.1)


@dataclass(frozen=True)
class DecodedAudio:
    container: str  # FFmpeg's demuxer name: mp3, ogg, aac, flac, wav, s16le
    sample_rate: int
    seconds: float


def decode(data: bytes, audio_format: str = "mp3") -> DecodedAudio:
    """Decode every frame with PyAV (FFmpeg): a truncated or garbled stream raises."""
    if audio_format == "pcm":
        # Headerless, so described here: 16-bit little-endian, 24 kHz, mono.
        options = {"sample_rate": "24000", "ch_layout": "mono"}
        container = av.open(io.BytesIO(data), "r", format="s16le", options=options)
    else:
        container = av.open(io.BytesIO(data), "r")
    with container:
        stream = container.streams.audio[0]
        samples = 0
        sample_rate = 0
        for frame in container.decode(stream):
            samples += frame.samples
            sample_rate = frame.sample_rate
        return DecodedAudio(container.format.name, sample_rate, samples / sample_rate)
