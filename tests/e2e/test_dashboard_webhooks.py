"""A customer reads and rotates their webhook signing secret on the dashboard; the operator
sees the same secret from the CLI."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys

import pytest
from playwright.async_api import Page, expect

from services.cli.mesh import LocalMesh
from tests.e2e.test_dashboard import new_email, sign_up
from tests.support.browser import screenshot

pytestmark = [pytest.mark.model, pytest.mark.slow]


def cli_secret(mesh: LocalMesh, account_id: str, action: str = "show") -> str:
    env = {
        **os.environ,
        "KOKOROPAY_AUTH_ADDRESS": mesh.grpc_address("auth"),
        "KOKOROPAY_LEDGER_ADDRESS": mesh.grpc_address("ledger"),
        "KOKOROPAY_PREDICTIONS_ADDRESS": mesh.grpc_address("predictions"),
        "KOKOROPAY_TLS_DIR": str(mesh.pki.folder("operator")),
    }
    result = subprocess.run(
        [sys.executable, "-m", "services.cli.main", "webhook-secret", action, account_id],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


async def test_the_webhook_secret_is_read_and_rotated(page: Page, mesh: LocalMesh) -> None:
    await sign_up(page, new_email())
    await page.goto("/account")
    account_id = await page.locator("dd code").first.inner_text()
    await page.get_by_role("navigation").get_by_role("link", name="Webhooks").click()
    first = await page.get_by_label("Signing secret").input_value()
    assert first.startswith("whsec_")
    await screenshot(page, "webhooks")
    assert await asyncio.to_thread(cli_secret, mesh, account_id) == first

    await page.get_by_role("link", name="Rotate secret").click()
    await expect(page.get_by_role("heading", name="Rotate the webhook secret?")).to_be_visible()
    await page.get_by_role("button", name="Rotate secret").click()
    await expect(page.get_by_role("status").first).to_contain_text("new secret is in use")
    second = await page.get_by_label("Signing secret").input_value()
    assert second.startswith("whsec_") and second != first
    assert await asyncio.to_thread(cli_secret, mesh, account_id) == second

    forged = await page.request.post("/webhooks/rotate", form={"csrf_token": "x" * 43})
    assert forged.status == 403
    await page.reload()
    assert await page.get_by_label("Signing secret").input_value() == second
