"""A bounded fuzz run against the live gateway, driven by the OpenAPI document it serves.

The fuzzing customer has no credits, so every well-formed speech request ends in a documented
402 within milliseconds instead of minutes of CPU synthesis; malformed ones must be refused
with a documented 4xx. Nothing may answer with a 5xx, documented or not: the mesh is healthy.
"""

from __future__ import annotations

from typing import Any

import pytest

# A dev dependency (schemathesis==4.32.5); without it this module is skipped, not an error.
schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, Phase, given, settings  # noqa: E402
from schemathesis.generation import GenerationMode  # noqa: E402
from schemathesis.specs.openapi.checks import (  # noqa: E402
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from tests.e2e.conftest import Customer, NewCustomer  # noqa: E402

pytestmark = [pytest.mark.model, pytest.mark.slow]


@pytest.fixture(scope="module")
async def fuzz_customer(new_customer: NewCustomer) -> Customer:
    return await new_customer(credits=0)


@pytest.fixture(scope="module")
def gateway_schema(base_url: str) -> Any:
    return schemathesis.openapi.from_url(base_url.removesuffix("/v1") + "/openapi.json")


# Operation, generation mode, examples. Only the speech bodies can be made invalid; the other
# operations take nothing but the key.
FUZZ_PLAN = [
    ("POST", "/v1/audio/speech", GenerationMode.POSITIVE, 30),
    ("POST", "/v1/audio/speech", GenerationMode.NEGATIVE, 30),
    ("POST", "/v1/captioned_speech", GenerationMode.POSITIVE, 10),
    ("POST", "/dev/captioned_speech", GenerationMode.NEGATIVE, 10),
    ("GET", "/v1/audio/voices", GenerationMode.POSITIVE, 5),
    ("GET", "/v1/models", GenerationMode.POSITIVE, 5),
    ("GET", "/v1/balance", GenerationMode.POSITIVE, 5),
    ("GET", "/healthz", GenerationMode.POSITIVE, 3),
    ("GET", "/readyz", GenerationMode.POSITIVE, 3),
]


# Schemathesis' own pytest integration (`from_fixture`) does not run under pytest 9, so each
# operation's strategy is driven by Hypothesis here.
@pytest.mark.parametrize(("method", "path", "mode", "examples"), FUZZ_PLAN)
def test_fuzzing_finds_no_server_errors(
    gateway_schema: Any,
    fuzz_customer: Customer,
    method: str,
    path: str,
    mode: GenerationMode,
    examples: int,
) -> None:
    operation = gateway_schema[path][method]

    @given(case=operation.as_strategy(generation_mode=mode))
    @settings(
        max_examples=examples,
        deadline=None,
        database=None,
        phases=[Phase.explicit, Phase.generate],
        suppress_health_check=list(HealthCheck),
    )
    def check(case: Any) -> None:
        response = case.call(headers=fuzz_customer.headers, timeout=60)
        assert response.status_code < 500, (response.status_code, response.text, case.body)
        case.validate_response(
            response,
            checks=[
                status_code_conformance,
                content_type_conformance,
                response_schema_conformance,
                response_headers_conformance,
                negative_data_rejection,
            ],
        )

    check()
