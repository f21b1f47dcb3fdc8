"""Floods of made-up keys are shed before auth: per client address, after a burst, 429.

The app runs in process over the fakes; each client is given its own socket peer, and a fake
clock moves the throttle's windows. `mesh.auth.verified` lists every key auth was asked about:
each one a database lookup in the real auth.
"""

from __future__ import annotations

import secrets
import string
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager

import grpc
import httpx
import pytest
from pydantic import ValidationError

from services.auth import keys as auth_keys
from services.gateway.key_floods import (
    MAX_CHECKS_IN_FLIGHT,
    InvalidKeyThrottle,
    Throttled,
    looks_like_key,
)
from services.gateway.settings import GatewaySettings
from tests.support.gateway_fakes import (
    GOOD_KEY,
    REVOKED_KEY,
    FakeClock,
    FakeMesh,
    auth_header,
    fake_mesh,
)

SPEECH = "/v1/audio/speech"
LIMIT = 20  # GATEWAY_INVALID_KEYS_PER_ADDRESS's default
WINDOW = 60  # GATEWAY_INVALID_KEY_WINDOW_SECONDS's default
CLIENT = "203.0.113.7"
OTHER_CLIENT = "198.51.100.9"
PROXY = "10.1.2.3"
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase

Client = Callable[[str], AbstractAsyncContextManager[httpx.AsyncClient]]


def random_key() -> str:
    """A well-formed key that no account holds: it reaches auth, which rejects it."""
    return "kp_live_" + "".join(secrets.choice(_BASE62) for _ in range(43))


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def mesh(clock: FakeClock, gateway_settings: dict[str, object]) -> FakeMesh:
    return fake_mesh(clock, **gateway_settings)


@pytest.fixture
def client_at(mesh: FakeMesh) -> Client:
    """A client whose connections come from `peer`."""

    @asynccontextmanager
    async def connect(peer: str) -> AsyncIterator[httpx.AsyncClient]:
        transport = httpx.ASGITransport(app=mesh.app, client=(peer, 40000))
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway.test") as c:
            yield c

    return connect


async def balance(client: httpx.AsyncClient, key: str, **headers: str) -> httpx.Response:
    return await client.get("/v1/balance", headers={**auth_header(key), **headers})


async def burst(client: httpx.AsyncClient, count: int = LIMIT, **headers: str) -> None:
    """`count` random keys, each refused by auth with 401."""
    for _ in range(count):
        response = await balance(client, random_key(), **headers)
        assert response.status_code == 401, response.text


def assert_throttled(response: httpx.Response, retry_after: int = WINDOW) -> None:
    assert response.status_code == 429, response.text
    assert response.headers["retry-after"] == str(retry_after)
    assert response.headers["x-should-retry"] == "true"
    assert list(response.json()) == ["detail"]
    assert "invalid API keys from your address" in response.json()["detail"]


async def test_after_the_burst_the_next_bad_key_is_429_and_never_reaches_auth(
    mesh: FakeMesh, client_at: Client
) -> None:
    async with client_at(CLIENT) as client:
        await burst(client)
        assert len(mesh.auth.verified) == LIMIT
        assert_throttled(await balance(client, random_key()))
        # Refused before auth is asked, speech included (a malformed body is still a 400).
        speech = await client.post(SPEECH, json={"input": "hi"}, headers=auth_header(random_key()))
        assert_throttled(speech)
        assert len(mesh.auth.verified) == LIMIT
        # A valid key from a throttled address is refused too: the address is misbehaving, and
        # telling the keys apart would take the very lookup the throttle saves.
        assert_throttled(await balance(client, GOOD_KEY))
        assert len(mesh.auth.verified) == LIMIT
        # A request without a key costs nothing and is answered as always.
        missing = await client.get("/v1/balance")
        assert missing.status_code == 401
        assert "missing API key" in missing.json()["detail"]


async def test_prediction_routes_answer_429_in_the_listing_envelope(
    mesh: FakeMesh, client_at: Client
) -> None:
    async with client_at(CLIENT) as client:
        await burst(client)
        create = await client.post(
            "/v1/prediction/",
            json={"input": {"text": "hello"}},
            headers={"X-API-Key": random_key()},
        )
        poll = await client.get("/v1/prediction/pred_0001", headers={"X-API-Key": GOOD_KEY})
    for response in (create, poll):
        assert response.status_code == 429
        assert response.headers["retry-after"] == str(WINDOW)
        body = response.json()
        assert body["status"] == "error"
        assert body["details"] == "too_many_invalid_keys"
        assert "invalid API keys from your address" in body["message"]
    assert len(mesh.auth.verified) == LIMIT


async def test_another_address_is_unaffected(mesh: FakeMesh, client_at: Client) -> None:
    async with client_at(CLIENT) as flooding, client_at(OTHER_CLIENT) as other:
        await burst(flooding)
        assert_throttled(await balance(flooding, GOOD_KEY))
        assert (await balance(other, GOOD_KEY)).status_code == 200
        assert (await balance(other, random_key())).status_code == 401
    assert len(mesh.auth.verified) == LIMIT + 2


async def test_ipv6_clients_are_counted_by_their_64(mesh: FakeMesh, client_at: Client) -> None:
    async with client_at("2001:db8:1:2::1") as first, client_at("2001:db8:1:2::ffff") as second:
        await burst(first, LIMIT // 2)
        await burst(second, LIMIT - LIMIT // 2)
        assert_throttled(await balance(first, GOOD_KEY))
    async with client_at("2001:db8:1:3::1") as next_network:
        assert (await balance(next_network, GOOD_KEY)).status_code == 200


async def test_forwarded_for_from_an_untrusted_peer_is_ignored(
    mesh: FakeMesh, client_at: Client
) -> None:
    """GATEWAY_TRUSTED_PROXIES is empty by default: a client rotating the header stays itself."""
    async with client_at(CLIENT) as client:
        for n in range(LIMIT):
            forged = {"x-forwarded-for": f"192.0.2.{n + 1}"}
            assert (await balance(client, random_key(), **forged)).status_code == 401
        fresh = {"x-forwarded-for": "192.0.2.200"}
        assert_throttled(await balance(client, random_key(), **fresh))
        assert_throttled(await balance(client, GOOD_KEY, **fresh))
    assert len(mesh.auth.verified) == LIMIT


@pytest.mark.parametrize("gateway_settings", [{"trusted_proxies": "10.0.0.0/8"}])
async def test_forwarded_for_from_a_trusted_proxy_names_the_client(
    mesh: FakeMesh, client_at: Client
) -> None:
    async with client_at(PROXY) as ingress:
        await burst(ingress, **{"x-forwarded-for": CLIENT})
        assert_throttled(await balance(ingress, GOOD_KEY, **{"x-forwarded-for": CLIENT}))
        # What the client writes itself is on the left: the proxy's entry, on the right, counts.
        padded = {"x-forwarded-for": f"192.0.2.1, {CLIENT}"}
        assert_throttled(await balance(ingress, GOOD_KEY, **padded))
        # The same proxy relaying another client, or one reaching it without the header.
        other = {"x-forwarded-for": OTHER_CLIENT}
        assert (await balance(ingress, GOOD_KEY, **other)).status_code == 200
        assert (await balance(ingress, GOOD_KEY)).status_code == 200
    async with client_at(CLIENT) as direct:
        # The client itself, connecting straight to the gateway, is the same address.
        assert_throttled(await balance(direct, GOOD_KEY))


async def test_the_window_passing_lets_the_address_in_again(
    mesh: FakeMesh, client_at: Client, clock: FakeClock
) -> None:
    async with client_at(CLIENT) as client:
        await burst(client)
        clock.advance(30.5)
        assert_throttled(await balance(client, GOOD_KEY), retry_after=30)  # rounded up
        clock.advance(29)
        assert_throttled(await balance(client, GOOD_KEY), retry_after=1)
        clock.advance(0.5)
        assert (await balance(client, GOOD_KEY)).status_code == 200
        # A new window, with the whole burst again.
        await burst(client)
        assert_throttled(await balance(client, random_key()))
    assert len(mesh.auth.verified) == 2 * LIMIT + 1


@pytest.mark.parametrize(
    "junk",
    [
        "garbage",
        "kp_live_garbled",
        "kp_live_" + "a" * 42,
        "kp_live_" + "a" * 44,
        "kp_live_" + "a" * 42 + "-",
        "kp_live_" + "é" * 43,
        "kp_test_" + "a" * 43,
        "kp_live_" + "x" * 8000,
    ],
)
async def test_junk_never_reaches_auth_and_counts_as_a_failure(
    mesh: FakeMesh, client_at: Client, junk: str
) -> None:
    async with client_at(CLIENT) as client:
        for _ in range(LIMIT):
            # Latin-1, as servers read header bytes: "é" arrives as one character.
            refused = await client.get("/v1/balance", headers={"X-API-Key": junk.encode("latin-1")})
            assert refused.status_code == 401
            assert refused.json() == {"detail": "invalid API key"}
        assert_throttled(await balance(client, GOOD_KEY))
    assert mesh.auth.verified == []


async def test_revoked_keys_count_and_missing_or_conflicting_ones_do_not(
    mesh: FakeMesh, client_at: Client
) -> None:
    async with client_at(CLIENT) as client:
        for _ in range(3 * LIMIT):
            assert (await client.get("/v1/balance")).status_code == 401
            conflicting = {**auth_header(), "X-API-Key": random_key()}
            assert (await client.get("/v1/balance", headers=conflicting)).status_code == 401
        assert (await balance(client, GOOD_KEY)).status_code == 200
        for _ in range(LIMIT):
            assert (await balance(client, REVOKED_KEY)).status_code == 401
        assert_throttled(await balance(client, GOOD_KEY))


async def test_auth_failing_is_not_the_clients_doing(mesh: FakeMesh, client_at: Client) -> None:
    mesh.auth.failures = [grpc.StatusCode.UNAVAILABLE] * (2 * LIMIT)
    async with client_at(CLIENT) as client:
        for _ in range(2 * LIMIT):
            assert (await balance(client, random_key())).status_code == 503
        assert (await balance(client, GOOD_KEY)).status_code == 200


async def test_a_valid_key_does_not_count(mesh: FakeMesh, client_at: Client) -> None:
    async with client_at(CLIENT) as client:
        for _ in range(3 * LIMIT):
            assert (await balance(client, GOOD_KEY)).status_code == 200
        await burst(client)
        assert_throttled(await balance(client, random_key()))


# The throttle on its own: concurrency, the map's bound, the shape rule.


def test_checks_running_count_once_the_address_has_failed() -> None:
    """Concurrent keys from a failing address cannot all slip into auth at once: past its
    remaining failures plus MAX_CHECKS_IN_FLIGHT running, it waits a second. Its legitimate
    concurrency below that is untouched, and a clean address is not tracked at all."""
    clock = FakeClock()
    throttle = InvalidKeyThrottle(LIMIT, WINDOW, clock=clock)
    clean = [throttle.admit(OTHER_CLIENT).__enter__() for _ in range(10 * LIMIT)]
    assert len(throttle) == 0
    throttle.count_failure(CLIENT)
    running = [throttle.admit(CLIENT).__enter__() for _ in range(LIMIT - 1 + MAX_CHECKS_IN_FLIGHT)]
    with pytest.raises(Throttled) as busy:
        throttle.admit(CLIENT)
    assert busy.value.retry_after == 1
    # One check ends with a valid key: its slot is free again.
    running.pop().__exit__(None, None, None)
    with throttle.admit(CLIENT) as last:
        last.failed()
    for check in running[: LIMIT - 2]:
        check.failed()
    for check in running:
        check.__exit__(None, None, None)
    with pytest.raises(Throttled) as throttled:
        throttle.admit(CLIENT)
    assert throttled.value.retry_after == WINDOW
    for check in clean:
        check.__exit__(None, None, None)


def test_the_map_is_bounded_and_forgets_windows_that_passed() -> None:
    clock = FakeClock()
    throttle = InvalidKeyThrottle(1, WINDOW, max_addresses=3, clock=clock)
    for n in range(4):
        throttle.count_failure(f"192.0.2.{n}")
        clock.advance(1)
    assert len(throttle) == 3
    throttle.admit("192.0.2.0")  # the oldest was dropped to make room: admitted
    with pytest.raises(Throttled):
        throttle.admit("192.0.2.3")
    clock.advance(WINDOW)
    throttle.count_failure("192.0.2.9")
    assert len(throttle) == 1


def test_the_key_shape_is_auths() -> None:
    samples = [
        auth_keys.generate_key().plaintext,
        GOOD_KEY,
        "",
        "kp_live_",
        "kp_live_" + "A" * 42,
        "kp_live_" + "A" * 43 + "\n",
        " kp_live_" + "A" * 43,
        "Bearer kp_live_" + "A" * 43,
        "kp_live_" + "٣" * 43,  # Arabic-Indic digits: `\d` would take them, the rule does not
        "kp_live_" + "a" * 10_000,
    ]
    for sample in samples:
        assert looks_like_key(sample) == auth_keys.looks_like_key(sample), sample
    assert looks_like_key(auth_keys.generate_key().plaintext)


def test_a_bad_trusted_proxy_setting_names_the_entry() -> None:
    with pytest.raises(ValidationError, match="'10.0.0.300'"):
        GatewaySettings(trusted_proxies="10.0.0.0/8, 10.0.0.300")
    settings = GatewaySettings(trusted_proxies="10.0.0.0/8, 2001:db8::/32")
    assert [str(net) for net in settings.trusted_networks] == ["10.0.0.0/8", "2001:db8::/32"]
