"""The dashboard's routes over a recording stand-in for auth and ledger (this layer only; the
browser tests in tests/e2e/test_dashboard.py run the real mesh)."""

from __future__ import annotations

from typing import Any

import grpc
import pytest
from fastapi.testclient import TestClient

from services.dashboard import cookies, csrf
from services.dashboard.app import create_app
from services.dashboard.clients import BackendError
from services.dashboard.routes.playground import SessionStreams
from services.dashboard.settings import DashboardSettings
from tests.support.metrics import scrape


class RecordingBackends:
    """Refuses every sign-in (wrong credentials, unless told otherwise), remembering the address
    auth was told."""

    def __init__(self, refusal: BackendError | None = None) -> None:
        self.addresses: list[str] = []
        self.refusal = refusal or BackendError(
            "auth", grpc.StatusCode.UNAUTHENTICATED, "no", "CREDENTIALS_INVALID"
        )

    async def sign_in(self, email: str, password: str, address: str) -> Any:
        self.addresses.append(address)
        raise self.refusal

    async def resolve_session(self, token: str) -> Any:
        raise BackendError("auth", grpc.StatusCode.UNAUTHENTICATED, "no", "SESSION_INVALID")


def _client(backends: RecordingBackends, peer: str, **settings: Any) -> TestClient:
    app = create_app(DashboardSettings(**settings), backends)  # type: ignore[arg-type]
    return TestClient(app, client=(peer, 50000))


def _post_sign_in(client: TestClient, headers: dict[str, str] | None = None) -> int:
    client.get("/signin")
    secret = client.cookies[cookies.PRESESSION]
    form = {"email": "a@example.com", "password": "x" * 8, "csrf_token": csrf.token_for(secret)}
    return client.post("/signin", data=form, headers=headers or {}).status_code


def test_ipv6_clients_of_one_64_share_a_throttle_bucket() -> None:
    backends = RecordingBackends()
    for peer in ("2001:db8:1:2::1", "2001:db8:1:2:ffff::9"):
        assert _post_sign_in(_client(backends, peer)) == 401
    assert backends.addresses == ["2001:db8:1:2::/64", "2001:db8:1:2::/64"]


def test_forwarded_for_counts_only_from_a_trusted_proxy() -> None:
    backends = RecordingBackends()
    spoofed = {"X-Forwarded-For": "198.51.100.77"}
    assert _post_sign_in(_client(backends, "203.0.113.5"), spoofed) == 401
    proxied = _client(backends, "10.0.0.2", trusted_proxies="10.0.0.0/8")
    assert _post_sign_in(proxied, spoofed) == 401
    assert backends.addresses == ["203.0.113.5", "198.51.100.77"]


@pytest.mark.parametrize("token", ["", "é" * 43, "x" * 5000])
def test_a_bad_csrf_token_is_a_403_and_reaches_no_backend(token: str) -> None:
    backends = RecordingBackends()
    client = _client(backends, "203.0.113.5")
    client.get("/signin")
    form = {"email": "a@example.com", "password": "x" * 8, "csrf_token": token}
    assert client.post("/signin", data=form).status_code == 403
    assert backends.addresses == []


def test_behind_https_the_cookies_carry_the_host_prefix() -> None:
    client = _client(RecordingBackends(), "203.0.113.5", cookie_secure=True)
    cookie = client.get("/signin", headers={"host": "dash.example"}).headers["set-cookie"]
    assert cookie.startswith("__Host-kp_csrf=") and "Secure" in cookie and "Path=/" in cookie


def test_every_page_carries_the_security_headers() -> None:
    response = _client(RecordingBackends(), "203.0.113.5").get("/signin")
    assert "script-src 'self'" in response.headers["content-security-policy"]
    assert response.headers["x-frame-options"] == "DENY"
    assert response.headers["cache-control"] == "no-store"
    cookie = response.headers["set-cookie"].lower()
    assert "httponly" in cookie and "samesite=lax" in cookie


def test_a_session_has_at_most_two_playground_streams_at_once() -> None:
    streams = SessionStreams(limit=2)
    assert streams.acquire("a") and streams.acquire("a")
    assert not streams.acquire("a")
    assert streams.acquire("b")  # another person is not affected
    streams.release("a")
    assert streams.acquire("a")


@pytest.mark.parametrize(
    ("refusal", "status", "outcome"),
    [
        (
            BackendError("auth", grpc.StatusCode.UNAUTHENTICATED, "no", "CREDENTIALS_INVALID"),
            401,
            "wrong_credentials",
        ),
        (BackendError("auth", grpc.StatusCode.RESOURCE_EXHAUSTED, "slow down"), 429, "throttled"),
        (BackendError("auth", grpc.StatusCode.UNAVAILABLE, "away"), 503, "error"),
    ],
)
def test_each_sign_in_is_counted_once_by_outcome(
    refusal: BackendError, status: int, outcome: str
) -> None:
    before = scrape()
    assert _post_sign_in(_client(RecordingBackends(refusal), "203.0.113.5")) == status
    after = scrape()
    assert after.delta(before, "kokoropay_dashboard_sign_ins_total", outcome=outcome) == 1
    assert after.delta(before, "kokoropay_dashboard_sign_ins_total") == 1


def test_an_expired_form_and_a_closed_sign_up_are_counted() -> None:
    before = scrape()
    expired = _client(RecordingBackends(), "203.0.113.5")
    assert (
        expired.post("/signin", data={"email": "a@example.com", "csrf_token": ""}).status_code
        == 403
    )
    closed = _client(RecordingBackends(), "203.0.113.5", signup_enabled=False)
    assert closed.post("/signup", data={}).status_code == 403
    after = scrape()
    assert after.delta(before, "kokoropay_dashboard_sign_ins_total", outcome="expired_form") == 1
    assert after.delta(before, "kokoropay_dashboard_sign_ups_total", outcome="disabled") == 1
