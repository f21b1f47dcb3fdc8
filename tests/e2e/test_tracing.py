"""One REST request is one trace across the gateway, auth, ledger and synth, exported over OTLP
to a receiver inside the test (OpenTelemetry's gRPC trace service), and the gateway's log line
for the request names the same trace beside its request id."""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.proto.trace.v1 import trace_pb2

from services.cli.admin import AdminClient
from services.cli.mesh import LocalMesh
from tests.e2e.conftest import WEIGHTS_MANIFEST
from tests.support.otlp import ReceivedSpan, Receiver, otlp_receiver
from tests.support.postgres import create_database

pytestmark = [pytest.mark.model, pytest.mark.slow]

SERVER = trace_pb2.Span.SPAN_KIND_SERVER


@pytest.fixture(scope="module")
async def receiver() -> AsyncIterator[Receiver]:
    async with otlp_receiver() as receiver:
        yield receiver


@pytest.fixture(scope="module")
async def traced_mesh(
    receiver: Receiver,
    tmp_path_factory: pytest.TempPathFactory,
    postgres_url: str,
    log_dir: Path,
) -> AsyncIterator[LocalMesh]:
    """The synchronous path's services, exporting their spans to the receiver."""
    if not WEIGHTS_MANIFEST.exists():
        pytest.skip("the Kokoro weights are not under .data/weights (run `make weights`)")
    mesh = LocalMesh(
        data_dir=tmp_path_factory.mktemp("traced-mesh"),
        database_url=create_database(postgres_url, prefix="tracing"),
        log_dir=log_dir,
        services=("auth", "ledger", "synth", "gateway"),
        env={
            "OTEL_EXPORTER_OTLP_ENDPOINT": receiver.endpoint,
            "OTEL_EXPORTER_OTLP_INSECURE": "true",
            "OTEL_BSP_SCHEDULE_DELAY": "100",
        },
    )
    # In a thread: the receiver answers on this event loop meanwhile.
    await asyncio.to_thread(mesh.start)
    yield mesh
    await asyncio.to_thread(mesh.stop)


async def _spans_of(
    receiver: Receiver, trace_id: str, wanted: set[tuple[str, str]], timeout: float = 30.0
) -> dict[tuple[str, str], ReceivedSpan]:
    """The trace's SERVER spans by (service, name), once all of `wanted` have arrived."""
    deadline = time.monotonic() + timeout
    while True:
        found = {
            (span.service, span.name): span
            for span in receiver.spans
            if span.trace_id == trace_id and span.kind == SERVER
        }
        if wanted <= set(found):
            return found
        assert time.monotonic() < deadline, f"missing {wanted - set(found)}; got {sorted(found)}"
        await asyncio.sleep(0.1)


async def _access_line(mesh: LocalMesh, request_id: str, timeout: float = 10.0) -> Any:
    """The gateway's access log line for the request (written as the response ends)."""
    deadline = time.monotonic() + timeout
    while True:
        for text in mesh.process("gateway").logs().splitlines():
            if '"gateway.access"' in text and f'"request_id": "{request_id}"' in text:
                return json.loads(text)
        assert time.monotonic() < deadline, f"no access log line for {request_id}"
        await asyncio.sleep(0.1)


def _leads_to(span: ReceivedSpan, ancestor: ReceivedSpan, spans: list[ReceivedSpan]) -> bool:
    by_id = {each.span_id: each for each in spans if each.trace_id == span.trace_id}
    parent = span.parent_id
    while parent:
        if parent == ancestor.span_id:
            return True
        parent = by_id[parent].parent_id if parent in by_id else ""
    return False


async def test_one_request_is_one_trace_from_the_gateway_to_auth_ledger_and_synth(
    traced_mesh: LocalMesh, receiver: Receiver
) -> None:
    async with AdminClient(
        traced_mesh.grpc_address("auth"),
        traced_mesh.grpc_address("ledger"),
        traced_mesh.operator_tls,
    ) as admin:
        account, _ = await admin.create_account(f"traced-{uuid.uuid4().hex[:12]}", 100, False)
        key = (await admin.create_key(account.id, name="traced")).plaintext

    async with httpx.AsyncClient(base_url=traced_mesh.addresses["gateway"], timeout=120) as http:
        answer = await http.post(
            "/v1/audio/speech",
            json={"input": "Hi.", "voice": "af_sky", "response_format": "pcm"},
            headers={"Authorization": f"Bearer {key}"},
        )
    assert answer.status_code == 200, answer.text
    request_id = answer.headers["x-request-id"]

    # The gateway's line for the request names its trace beside its request id.
    line = await _access_line(traced_mesh, request_id)
    trace_id = line["trace_id"]
    assert len(trace_id) == 32 and int(trace_id, 16)

    request = ("gateway", "POST /v1/audio/speech")
    hops = {
        ("auth", "/kokoropay.auth.v1.AuthService/VerifyKey"),
        ("ledger", "/kokoropay.ledger.v1.LedgerService/Reserve"),
        ("synth", "/kokoropay.synth.v1.SynthService/Synthesize"),
    }
    spans = await _spans_of(receiver, trace_id, {request} | hops)
    root = spans[request]
    assert root.parent_id == "", "the gateway starts the trace"
    assert line["span_id"] == root.span_id
    for hop in sorted(hops):
        assert _leads_to(spans[hop], root, receiver.spans), f"{hop} is not under the request"
