"""Synthesis dies: the customer gets a broken stream or a 502, and never pays for it.

The synth process is killed (SIGKILL, like an OOM-killed pod) during a long request, then
requests are made while it is down; afterwards it is started again on the same port and the
test waits until the gateway is ready, so the session's other tests find the mesh whole.
"""

from __future__ import annotations

import asyncio

import httpx
import pytest

from services.cli.mesh import START_TIMEOUT_SECONDS, LocalMesh
from tests.e2e.conftest import NewCustomer, balance_becomes, balance_of

pytestmark = [pytest.mark.model, pytest.mark.slow]

# Long enough that synthesis is still running when the first audio has arrived.
LONG_TEXT = " ".join(
    f"Sentence number {n} is here so that the model keeps talking for a good while."
    for n in range(1, 13)
)


async def test_synth_killed_mid_stream_cuts_the_stream_and_refunds(
    mesh: LocalMesh,
    http: httpx.AsyncClient,
    new_customer: NewCustomer,
    synth_restarted_after: None,
) -> None:
    customer = await new_customer(credits=5_000)
    body = {"input": LONG_TEXT, "voice": "af_sky", "response_format": "wav"}
    received = 0
    async with http.stream(
        "POST", "/audio/speech", headers=customer.headers, json=body
    ) as response:
        assert response.status_code == 200
        chunks = response.aiter_raw()
        received += len(await chunks.__anext__())
        await asyncio.to_thread(mesh.process("synth").kill)
        # The body must not end cleanly: the client has to be able to tell it is incomplete.
        with pytest.raises(httpx.RemoteProtocolError):
            async for chunk in chunks:
                received += len(chunk)
    assert received > 0
    await balance_becomes(http, customer, 5_000)

    # While synth is down: a clean 502 before any audio, refunded, and safe to retry.
    failed = await http.post(
        "/audio/speech",
        headers=customer.headers,
        json={"input": "Anyone there?", "voice": "af_sky"},
    )
    assert failed.status_code == 502
    assert "refunded" in failed.json()["detail"]
    assert failed.headers["x-should-retry"] == "true"
    await balance_becomes(http, customer, 5_000)
    assert await balance_of(http, customer) == 5_000
    ready = await http.get(str(mesh.addresses["gateway"]) + "/readyz")
    assert ready.status_code == 503
    assert "synth" in ready.json()["detail"]

    # Synth comes back: it listens at once but loads the model first. A request meanwhile is
    # told that synthesis is not serving yet (503, Retry-After), not blamed on it (502).
    synth = mesh.process("synth")
    await asyncio.to_thread(synth.start, False)
    statuses: list[int] = []
    warming_up: httpx.Response | None = None
    while warming_up is None and synth.status() != "SERVING":
        response = await http.post(
            "/audio/speech",
            headers=customer.headers,
            json={"input": "Are you up yet?", "voice": "af_sky"},
        )
        statuses.append(response.status_code)
        if response.status_code == 503:
            warming_up = response
        await asyncio.sleep(0.2)
    assert warming_up is not None, f"never saw a 503 while synth warmed up: {statuses}"
    assert set(statuses) <= {502, 503}  # 502 only before its port was open
    assert warming_up.headers["retry-after"] == "5"
    assert warming_up.headers["x-should-retry"] == "true"
    assert "not serving yet" in warming_up.json()["detail"]
    assert await balance_of(http, customer) == 5_000
    await asyncio.to_thread(synth.wait_for, "SERVING", START_TIMEOUT_SECONDS.get("synth", 600.0))
