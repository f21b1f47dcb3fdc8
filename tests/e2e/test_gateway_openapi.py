"""The OpenAPI document is served by the running gateway (test_gateway_fuzz.py fuzzes it)."""

from __future__ import annotations

import httpx
import pytest

pytestmark = [pytest.mark.model, pytest.mark.slow]


async def test_openapi_document_is_served(http: httpx.AsyncClient, base_url: str) -> None:
    response = await http.get(base_url.removesuffix("/v1") + "/openapi.json")
    assert response.status_code == 200
    document = response.json()
    assert document["openapi"].startswith("3.")
    assert {"/v1/audio/speech", "/v1/audio/voices", "/v1/models", "/v1/balance"} <= set(
        document["paths"]
    )
    assert document["components"]["securitySchemes"]["apiKey"]["scheme"] == "bearer"
