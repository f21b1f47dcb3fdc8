"""The dashboard as a person uses it: a real Chromium against the whole mesh as processes.

Each test signs up a fresh person through the pages (argon2id, sessions and throttling are
auth's own; the sign-up credits the ledger's), then does what a customer does: create a key,
read it once, call the API with it, find the request in the usage, revoke the key. Every page
visited is photographed under build/screenshots/.
"""

from __future__ import annotations

import asyncio
import re
import time
import uuid
from collections.abc import Awaitable, Callable

import httpx
import pytest
from playwright.async_api import BrowserContext, Page, expect

from tests.support.browser import screenshot

pytestmark = [pytest.mark.model, pytest.mark.slow]

PASSWORD = "correct horse battery"
SIGNUP_CREDITS = 1000  # LEDGER_SIGNUP_GRANT_CREDITS' local default


def new_email() -> str:
    return f"person-{uuid.uuid4().hex[:10]}@example.com"


async def sign_up(page: Page, email: str, password: str = PASSWORD) -> None:
    await page.goto("/signup")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign up").click()
    await expect(page.get_by_role("heading", name="Usage")).to_be_visible()


async def sign_in(page: Page, email: str, password: str = PASSWORD) -> None:
    await page.goto("/signin")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()


async def create_key(page: Page, name: str) -> tuple[str, str]:
    """Create a key through the page; (its plaintext as shown once, its id)."""
    await page.goto("/keys")
    await page.get_by_label("Name").fill(name)
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_role("heading", name=re.compile("Your new key"))).to_be_visible()
    plaintext = await page.get_by_label("API key").input_value()
    await page.goto("/keys")
    row = page.locator("#keys tbody tr", has_text=name)
    return plaintext, str(await row.get_attribute("data-key-id"))


def _bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
async def other_person(new_context: Callable[..., Awaitable[BrowserContext]]) -> Page:
    """A second browser, with cookies of its own: another person."""
    context = await new_context()
    return await context.new_page()


async def test_sign_up_out_and_in_and_a_wrong_password_is_refused(page: Page) -> None:
    email = new_email()
    await page.goto("/signup")
    await screenshot(page, "signup")
    await sign_up(page, email)
    await expect(page.locator("#balance")).to_have_text(f"{SIGNUP_CREDITS:,}")
    await screenshot(page, "usage-new-account")

    await page.get_by_role("button", name="Sign out").click()
    await expect(page.get_by_role("heading", name="Sign in")).to_be_visible()
    await screenshot(page, "signin")

    await sign_in(page, email, "not the password")
    await expect(page.locator("#password-error")).to_have_text("Wrong email or password.")
    await expect(page.get_by_label("Password")).to_have_attribute("aria-invalid", "true")
    await screenshot(page, "signin-wrong-password")

    await sign_in(page, email.upper())  # emails are compared without case
    await expect(page.get_by_role("heading", name="Usage")).to_be_visible()
    await expect(page.get_by_text(email)).to_be_visible()


async def test_a_burst_of_wrong_passwords_is_slowed_but_the_right_one_still_gets_in(
    page: Page,
) -> None:
    email = new_email()
    await sign_up(page, email)
    await page.context.clear_cookies()
    took = []
    for _ in range(5):
        started = time.monotonic()
        await sign_in(page, email, "guess-guess")
        await expect(page.locator("#password-error")).to_be_visible()
        took.append(time.monotonic() - started)
    # Auth's defaults: three free failures, then 1 s, 2 s, … before the password is checked.
    assert took[3] >= 1.0 and took[4] >= 2.0, took
    await sign_in(page, email)  # slowed, never locked: the owner still gets in
    await expect(page.get_by_role("heading", name="Usage")).to_be_visible(timeout=15_000)


async def test_key_shown_once_pays_for_a_request_seen_in_usage_then_revoked(
    page: Page, base_url: str
) -> None:
    await sign_up(page, new_email())
    await page.goto("/keys")
    await screenshot(page, "keys-empty")
    await page.get_by_label("Name").fill("laptop")
    await page.get_by_role("button", name="Create key").click()
    await expect(page.get_by_role("alert")).to_contain_text("only time the key is shown")
    plaintext = await page.get_by_label("API key").input_value()
    assert plaintext.startswith("kp_live_")
    await screenshot(page, "key-created")
    await page.reload()  # gone for good: the page that showed it now lists keys, prefix only
    await expect(page).to_have_url(re.compile(r"/keys$"))
    assert plaintext not in await page.content()
    await expect(page.locator("#keys")).to_contain_text(plaintext[:12])

    text = "Hello from the dashboard."
    async with httpx.AsyncClient(timeout=120) as http:
        speech = await http.post(
            f"{base_url}/audio/speech",
            headers=_bearer(plaintext),
            json={"model": "kokoro", "input": text, "voice": "af_sky", "response_format": "mp3"},
        )
    assert speech.status_code == 200, speech.text
    assert len(speech.content) > 1000

    # The gateway captures just after the last byte: the request may still be settling.
    row = page.locator("#requests tbody tr").first
    deadline = time.monotonic() + 15
    while await page.goto("/") and "charged" not in await row.inner_text():
        assert time.monotonic() < deadline, await row.inner_text()
        await asyncio.sleep(0.2)
    await expect(page.locator("#balance")).to_have_text(f"{SIGNUP_CREDITS - len(text):,}")
    await expect(page.locator("#held")).to_have_text("0")
    for cell in ("laptop", str(len(text)), "af_sky", "mp3", "charged"):
        await expect(row).to_contain_text(cell)
    today = time.strftime("%Y-%m-%d", time.gmtime())
    bar = page.locator(f'#usage-chart g[data-day="{today}"] rect[data-key="laptop"]')
    await expect(bar).to_have_attribute("data-characters", str(len(text)))
    await screenshot(page, "usage-after-request")

    await page.goto("/keys")
    await expect(page.locator("#keys tbody tr", has_text="laptop")).not_to_contain_text("never")
    await page.get_by_role("link", name="Revoke laptop").click()
    await expect(page.get_by_role("heading", name="Revoke “laptop”?")).to_be_visible()
    await screenshot(page, "revoke-confirm")
    await page.get_by_role("button", name="Revoke").click()
    await expect(page.locator("#keys tbody tr", has_text="laptop")).to_contain_text("revoked")
    await screenshot(page, "keys-after-revoke")

    async with httpx.AsyncClient() as http:
        refused = await http.get(f"{base_url}/balance", headers=_bearer(plaintext))
    assert refused.status_code == 401, refused.text


async def test_forms_without_their_csrf_token_are_refused_and_change_nothing(page: Page) -> None:
    await page.goto("/signin")
    forged = await page.request.post(
        "/signin", form={"email": "a@example.com", "password": "x" * 8}
    )
    assert forged.status == 403

    await sign_up(page, new_email())
    forged = await page.request.post("/keys", form={"name": "forged"}, max_redirects=0)
    assert forged.status == 403
    wrong = await page.request.post("/keys", form={"name": "forged", "csrf_token": "x" * 43})
    assert wrong.status == 403
    await page.goto("/keys")
    await expect(page.locator("body")).not_to_contain_text("forged")
    signed_out = await page.request.post("/signout", form={}, max_redirects=0)
    assert signed_out.status == 403
    await page.goto("/keys")
    await expect(page.get_by_role("heading", name="API keys")).to_be_visible()


async def test_one_person_cannot_see_or_revoke_another_accounts_key(
    page: Page, other_person: Page, base_url: str
) -> None:
    await sign_up(page, new_email())
    plaintext, key_id = await create_key(page, "victim key")

    await sign_up(other_person, new_email())
    await other_person.goto("/keys")
    await expect(other_person.locator("body")).not_to_contain_text("victim key")
    await other_person.goto(f"/keys/{key_id}/revoke")
    await expect(other_person.get_by_role("heading", name="Not found")).to_be_visible()
    await screenshot(other_person, "not-found")
    token = await other_person.locator("form.signout input[name=csrf_token]").input_value()
    forged = await other_person.request.post(f"/keys/{key_id}/revoke", form={"csrf_token": token})
    assert forged.status == 404

    async with httpx.AsyncClient() as http:
        still = await http.get(f"{base_url}/balance", headers=_bearer(plaintext))
    assert still.status_code == 200, still.text
    await page.goto("/keys")
    await expect(page.locator("#keys tbody tr", has_text="victim key")).to_contain_text("active")


async def test_a_signed_out_browser_reaches_only_sign_in_and_sign_up(page: Page) -> None:
    for path in ("/", "/keys", "/keys/new", "/account", "/keys/key_0123456789/revoke"):
        await page.goto(path)
        await expect(page).to_have_url(re.compile(r"/signin$"))
    for path in ("/signup", "/signin"):
        answer = await page.goto(path)
        assert answer is not None and answer.status == 200
    response = await page.request.post("/keys", form={"name": "x"}, max_redirects=0)
    assert response.status == 303 and response.headers["location"] == "/signin"


async def test_change_password_and_the_pages_work_from_the_keyboard_on_a_phone(page: Page) -> None:
    await page.set_viewport_size({"width": 375, "height": 740})
    email = new_email()
    await page.goto("/signup")
    # From the top of the page: the skip link, the home link, then the form, in reading order.
    for _ in range(3):
        await page.keyboard.press("Tab")
    await expect(page.get_by_label("Email")).to_be_focused()
    await page.keyboard.type(email)
    await page.keyboard.press("Tab")
    await expect(page.get_by_label("Password")).to_be_focused()
    await page.keyboard.type(PASSWORD)
    await page.keyboard.press("Enter")
    await expect(page.get_by_role("heading", name="Usage")).to_be_visible()
    await screenshot(page, "usage-phone")
    for path in ("/", "/keys", "/account"):
        await page.goto(path)
        overflow = await page.evaluate("document.documentElement.scrollWidth - window.innerWidth")
        assert overflow <= 0, (path, overflow)

    await page.goto("/account")
    await screenshot(page, "account")
    await page.get_by_label("Current password").fill("wrong password")
    await page.get_by_label("New password").fill("a brand new secret")
    await page.get_by_role("button", name="Change password").click()
    await expect(page.locator("#current_password-error")).to_be_visible()
    await page.get_by_label("Current password").fill(PASSWORD)
    await page.get_by_label("New password").fill("a brand new secret")
    await page.get_by_role("button", name="Change password").click()
    await expect(page.get_by_role("status")).to_have_text("Password changed.")

    await page.get_by_role("button", name="Sign out").click()
    await sign_in(page, email, PASSWORD)
    await expect(page.locator("#password-error")).to_be_visible()
    await sign_in(page, email, "a brand new secret")
    await expect(page.get_by_role("heading", name="Usage")).to_be_visible()
