"""A flood of made-up keys from one client address, against the mesh as real processes: after
GATEWAY_INVALID_KEYS_PER_ADDRESS failures the gateway answers 429 itself, and auth, with its
database, is asked no more.

The flood comes through the tests acting as the Ingress: the session's mesh trusts 127.0.0.1 as
a proxy (GATEWAY_TRUSTED_PROXIES in conftest.py), so the X-Forwarded-For sent here names the
flooding client, a TEST-NET address of this test's own. Every other test comes from 127.0.0.1
itself and is not throttled by this one, which also shows that another address is unaffected.

How the lookups are counted, and why so. Each request carries its own `x-request-id`, which the
gateway passes to auth in gRPC metadata, and auth logs every RPC once with it (services/common/
interceptors.py). Counting auth's `VerifyKey` lines with this test's ids counts exactly the keys
that reached auth from the flood, and nothing any other test or process did. Each of those keys
is well formed, so each cost exactly one statement on auth.api_keys (auth's VerifyKey looks up
every key of the right shape, once); the 429s cost none. The database's own counters were
considered and are less honest here: pg_stat_statements needs `shared_preload_libraries`, which
the tests' embedded PostgreSQL is not started with; and pg_stat_user_tables' scans of
auth.api_keys are flushed by each backend only when it has been idle for up to 10 s
(PostgreSQL's PGSTAT_IDLE_INTERVAL), so reading them takes a 10 s wait, during which the
lookups of the tests before it land as well, and cannot be told apart.
"""

from __future__ import annotations

import json
import secrets
import string
import uuid

import httpx
import pytest

from services.cli.mesh import LocalMesh
from tests.e2e.conftest import NewCustomer

pytestmark = [pytest.mark.model, pytest.mark.slow]

LIMIT = 20  # GATEWAY_INVALID_KEYS_PER_ADDRESS's default, which the mesh keeps
WINDOW = 60  # GATEWAY_INVALID_KEY_WINDOW_SECONDS's default
FLOOD = LIMIT + 30
_BASE62 = string.digits + string.ascii_uppercase + string.ascii_lowercase


def random_key() -> str:
    """Of a key's exact shape, so auth looks it up (and finds nothing)."""
    return "kp_live_" + "".join(secrets.choice(_BASE62) for _ in range(43))


def verify_key_calls(mesh: LocalMesh, request_id_prefix: str) -> int:
    """VerifyKey calls auth has logged for requests whose id starts with the prefix."""
    calls = 0
    for line in mesh.process("auth").log_path.read_text().splitlines():
        if request_id_prefix not in line:
            continue
        entry = json.loads(line)
        if str(entry.get("request_id", "")).startswith(request_id_prefix) and str(
            entry.get("method", "")
        ).endswith("/VerifyKey"):
            calls += 1
    return calls


async def test_a_flood_of_random_keys_is_shed_before_auth(
    mesh: LocalMesh, http: httpx.AsyncClient, new_customer: NewCustomer
) -> None:
    customer = await new_customer(credits=10)
    flooder = {"x-forwarded-for": f"198.51.100.{secrets.randbelow(254) + 1}"}
    ids = f"flood-{uuid.uuid4().hex[:12]}-"

    responses = []
    for n in range(FLOOD):
        headers = {
            **flooder,
            "Authorization": f"Bearer {random_key()}",
            "x-request-id": f"{ids}{n}",
        }
        responses.append(await http.get("/balance", headers=headers))
    assert [r.status_code for r in responses] == [401] * LIMIT + [429] * (FLOOD - LIMIT)
    throttled = responses[LIMIT]
    assert 0 < int(throttled.headers["retry-after"]) <= WINDOW
    assert throttled.headers["x-should-retry"] == "true"
    assert "invalid API keys from your address" in throttled.json()["detail"]
    # Auth was asked about the first LIMIT keys only: one lookup each, none for the 429s.
    assert verify_key_calls(mesh, ids) == LIMIT

    # A valid key from the throttled address is refused as well, in the listing's envelope on
    # the prediction API; the same key from anywhere else is served.
    own_key = {**customer.headers, "x-request-id": f"{ids}valid"}
    refused = await http.get("/balance", headers={**flooder, **own_key})
    assert refused.status_code == 429
    listing = await http.get("/prediction/pred_unknown", headers={**flooder, **own_key})
    assert listing.status_code == 429
    assert listing.json()["details"] == "too_many_invalid_keys"
    assert verify_key_calls(mesh, ids) == LIMIT
    elsewhere = {"x-forwarded-for": "198.51.100.255"}
    assert (
        await http.get("/balance", headers={**elsewhere, **customer.headers})
    ).status_code == 200
    assert (await http.get("/balance", headers=customer.headers)).status_code == 200  # 127.0.0.1
