"""What `make run` hands a new user: the local account's key and dashboard sign-in, created on
the first start and reused by later ones (services/cli/up.py), against the real mesh."""

from __future__ import annotations

import re
from pathlib import Path

import httpx
import pytest
from playwright.async_api import Page, expect

from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from services.cli.up import LOCAL_CREDITS, LOCAL_EMAIL, ensure_local_account

pytestmark = [pytest.mark.model, pytest.mark.slow]


async def signs_in(page: Page, email: str, password: str) -> bool:
    await page.context.clear_cookies()
    await page.goto("/signin")
    await page.get_by_label("Email").fill(email)
    await page.get_by_label("Password").fill(password)
    await page.get_by_role("button", name="Sign in").click()
    await page.wait_for_load_state()
    return await page.get_by_role("heading", name="Usage").count() == 1


async def test_later_starts_reuse_the_key_and_password_and_mend_what_was_lost(
    mesh: LocalMesh, admin: AdminClient, base_url: str, page: Page, tmp_path: Path
) -> None:
    first = await ensure_local_account(mesh, tmp_path)
    async with httpx.AsyncClient(base_url=base_url) as http:
        balance = await http.get("/balance", headers={"Authorization": f"Bearer {first['key']}"})
    assert balance.status_code == 200 and balance.json()["balance"] == LOCAL_CREDITS
    assert first["email"] == LOCAL_EMAIL
    assert await signs_in(page, first["email"], first["password"])

    assert await ensure_local_account(mesh, tmp_path) == first  # the second `make run`

    await admin.revoke_key(first["key_id"])
    reissued = await ensure_local_account(mesh, tmp_path)
    assert reissued["key"] != first["key"] and reissued["account_id"] == first["account_id"]
    assert reissued["password"] == first["password"]

    (tmp_path / "local-account.json").unlink()  # the saved file lost: a new password is set
    mended = await ensure_local_account(mesh, tmp_path)
    assert mended["password"] != first["password"]
    await page.reload()  # the reset ended the session this browser had
    await expect(page).to_have_url(re.compile(r"/signin$"))
    assert not await signs_in(page, LOCAL_EMAIL, first["password"])
    assert await signs_in(page, LOCAL_EMAIL, mended["password"])
