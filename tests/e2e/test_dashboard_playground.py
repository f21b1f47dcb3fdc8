"""The playground and top-ups as a person uses them: a real Chromium against the whole mesh.

The playground is billed through the gateway exactly like an API request; previews cost nothing;
its key is the session's and ends with it. Credits are bought through the dashboard's real
Stripe code against a stand-in for Stripe's API, and granted only by a signed event, once.
"""

from __future__ import annotations

import asyncio
import json
import re
import time

import httpx
import pytest
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from playwright.async_api import Page, expect

from services.cli.mesh import LocalMesh
from services.common.channels import open_channel
from tests.e2e.test_dashboard import SIGNUP_CREDITS, new_email, sign_up
from tests.support.browser import screenshot
from tests.support.fake_stripe import FakeStripe, completed_checkout_event, signed

pytestmark = [pytest.mark.model, pytest.mark.slow]


async def balance_shown(page: Page) -> int:
    answer = await page.request.get("/playground/balance")
    return int((await answer.json())["balance"])


async def balance_becomes(page: Page, expected: int, timeout: float = 20.0) -> None:
    """Settlement ends just after the stream does; wait for it."""
    deadline = time.monotonic() + timeout
    while (current := await balance_shown(page)) != expected:
        assert time.monotonic() < deadline, f"balance {current}, expected {expected}"
        await asyncio.sleep(0.2)


async def test_the_playground_plays_and_charges_exactly_the_characters(page: Page) -> None:
    await sign_up(page, new_email())
    await page.get_by_role("navigation").get_by_role("link", name="Playground").click()
    text = "Hello there, this is the playground speaking."
    await page.get_by_label("Text").fill(text)
    await expect(page.locator("#cost")).to_have_text(str(len(text)))
    await page.get_by_label("Voice", exact=True).select_option("af_bella")
    await screenshot(page, "playground")
    await page.get_by_role("button", name="Speak").click()
    await expect(page.locator("#player")).to_have_js_property("ended", True, timeout=90_000)
    await expect(page.get_by_role("link", name="Download")).to_be_visible()
    await expect(page.locator("#status")).to_have_text("Done.")
    await balance_becomes(page, SIGNUP_CREDITS - len(text))
    await expect(page.locator("#balance")).to_have_text(f"{SIGNUP_CREDITS - len(text):,}")
    await screenshot(page, "playground-played")

    await page.get_by_role("link", name="Usage").click()
    row = page.locator("#requests tbody tr").first
    for cell in ("Playground", str(len(text)), "af_bella", "mp3", "charged"):
        await expect(row).to_contain_text(cell)


async def test_voice_previews_play_and_cost_nothing(page: Page) -> None:
    await sign_up(page, new_email())
    await page.goto("/playground")
    for voice in ("af_sky", "am_adam"):
        await page.get_by_label("Voice", exact=True).select_option(voice)
        await page.get_by_role("button", name="Preview voice").click()
        await expect(page.locator("#preview")).to_have_js_property("ended", True, timeout=90_000)
    again = await page.request.get("/playground/voices/af_sky/preview")  # cached: same clip
    assert again.status == 200 and again.headers["content-type"] == "audio/mpeg"
    unknown = await page.request.get("/playground/voices/xx_nobody/preview")
    assert unknown.status == 404
    assert await balance_shown(page) == SIGNUP_CREDITS
    await page.goto("/")
    await expect(page.locator("#requests")).to_have_count(0)


async def _playground_key(mesh: LocalMesh, page: Page) -> str:
    """The session's playground key, as auth hands it to the dashboard (never to the browser)."""
    [cookie] = [c for c in await page.context.cookies() if c["name"].endswith("kp_session")]
    async with open_channel(mesh.grpc_address("auth"), mesh.pki.identity("dashboard")) as channel:
        response = await auth_pb2_grpc.AuthServiceStub(channel).MintPlaygroundKey(
            auth_pb2.MintPlaygroundKeyRequest(session_token=cookie["value"])
        )
    return response.plaintext


async def test_the_playground_key_is_unlisted_and_ends_with_the_session(
    page: Page, mesh: LocalMesh, base_url: str
) -> None:
    await sign_up(page, new_email())
    key = await _playground_key(mesh, page)
    headers = {"Authorization": f"Bearer {key}"}
    async with httpx.AsyncClient(base_url=base_url) as http:
        assert (await http.get("/balance", headers=headers)).status_code == 200
        await page.goto("/keys")
        await expect(page.locator("main")).not_to_contain_text("Playground")
        await expect(page.locator("main")).not_to_contain_text(key[:12])
        await page.get_by_role("button", name="Sign out").click()
        await expect(page).to_have_url(re.compile(r"/signin$"))
        refused = await http.get("/balance", headers=headers)
    assert refused.status_code == 401, refused.text


async def test_a_request_that_fails_upstream_is_refunded_in_the_playground(
    page: Page, mesh: LocalMesh, synth_restarted_after: None
) -> None:
    await sign_up(page, new_email())
    await page.goto("/playground")
    long_text = " ".join(f"Sentence {n} keeps the model talking for a while." for n in range(12))
    await page.get_by_label("Text").fill(long_text)
    await page.get_by_label("Format").select_option("wav")
    await page.get_by_role("button", name="Speak").click()
    deadline = time.monotonic() + 60
    while (await (await page.request.get("/playground/balance")).json())["held"] == 0:
        assert time.monotonic() < deadline, "the request never placed its hold"
        await asyncio.sleep(0.05)
    await asyncio.sleep(1.0)  # synthesis under way
    await asyncio.to_thread(mesh.process("synth").kill)
    await expect(page.locator("#status")).to_have_class(re.compile("error"), timeout=60_000)
    await screenshot(page, "playground-failed")
    await balance_becomes(page, SIGNUP_CREDITS)
    await page.goto("/")
    await expect(page.locator("#requests tbody tr").first).to_contain_text("refunded")


async def test_a_402_and_the_dashboard_lead_to_the_billing_page(page: Page) -> None:
    await sign_up(page, new_email())
    await page.goto("/playground")
    await page.get_by_label("Text").fill("x" * (SIGNUP_CREDITS + 1))
    await page.get_by_role("button", name="Speak").click()
    status = page.locator("#status")
    await expect(status).to_contain_text("Insufficient credits — top up your balance at")
    await expect(status).to_contain_text("/billing")
    await screenshot(page, "playground-402")
    await status.get_by_role("link", name="Buy credits").click()
    await expect(page.get_by_role("heading", name="Billing")).to_be_visible()
    await page.goto("/")
    await page.get_by_role("link", name="Buy credits").click()
    await expect(page.get_by_role("heading", name="Billing")).to_be_visible()


async def test_credits_bought_are_granted_once_per_signed_event(
    page: Page, fake_stripe: FakeStripe, dashboard_url: str
) -> None:
    await sign_up(page, new_email())
    await page.goto("/billing")
    await screenshot(page, "billing")
    await page.get_by_label("Packs").fill("2")
    await page.get_by_role("button", name="Buy credits").click()
    await expect(page).to_have_url(re.compile(re.escape(fake_stripe.url) + r"/pay/cs_test_"))
    session_id = page.url.rsplit("/", 1)[1]
    checkout = fake_stripe.sessions[session_id]
    assert checkout["line_items[0][quantity]"] == "2"
    assert checkout["metadata[credits]"] == str(2 * 10_000)
    event = completed_checkout_event(checkout, session_id, amount_total=2 * 500)
    payload, signature = signed(event)

    async with httpx.AsyncClient(base_url=dashboard_url) as http:

        async def deliver(body: bytes, header: str) -> httpx.Response:
            return await http.post(
                "/billing/webhook",
                content=body,
                headers={"Stripe-Signature": header, "Content-Type": "application/json"},
            )

        first = await deliver(payload, signature)
        assert first.status_code == 200 and first.json()["granted"] is True, first.text
        replay = await deliver(payload, signature)
        assert replay.status_code == 200 and replay.json()["granted"] is False
        forged = {**event, "id": "evt_forged"}
        bad = await deliver(*signed(forged, secret="whsec_not_the_secret"))
        assert bad.status_code == 400
        _, genuine_header = signed(event)  # Stripe's signature, on another body
        tampered = await deliver(json.dumps(forged).encode(), genuine_header)
        assert tampered.status_code == 400
        # Signed, but paying less than the checkout asked: refused, nothing granted.
        cheap = completed_checkout_event(checkout, session_id, amount_total=1)
        assert (await deliver(*signed(cheap))).status_code == 400

    expected = SIGNUP_CREDITS + 2 * 10_000
    assert await balance_shown(page) == expected
    await page.goto("/billing?paid=1")
    await expect(page.locator("#balance")).to_have_text(f"{expected:,}")
    await screenshot(page, "billing-paid")
