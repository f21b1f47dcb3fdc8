"""The shared gRPC plumbing over a real socket, as every service gets it from `build_server`:
who may call each RPC, error reasons, request ids and the readiness gate."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import wrappers_pb2

from services.common.channels import open_channel, operator_metadata
from services.common.errors import error_info, error_reason
from services.common.logs import request_id_var
from services.common.server import BuiltServer, build_server
from tests.support.probe_service import call, probe_spec

TOKEN = "operator-secret"


@pytest.fixture
async def probe() -> AsyncIterator[tuple[str, BuiltServer]]:
    built = build_server(probe_spec(TOKEN))
    built.readiness.ready = True
    port = built.server.add_insecure_port("127.0.0.1:0")
    await built.server.start()
    yield f"127.0.0.1:{port}", built
    await built.server.stop(None)


@pytest.fixture
async def channel(probe) -> AsyncIterator[grpc.aio.Channel]:
    async with open_channel(probe[0]) as channel:
        yield channel


async def _refused(channel: grpc.aio.Channel, method: str, metadata=()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, method)(wrappers_pb2.StringValue(), metadata=metadata)
    return raised.value


async def test_an_rpc_without_an_access_declaration_is_refused_to_everyone(channel) -> None:
    for metadata in [(), operator_metadata(TOKEN)]:
        refused = await _refused(channel, "Undeclared", metadata)
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "declares no callers" in (refused.details() or "")


async def test_an_rpc_the_gateway_may_not_call_needs_the_operator_token(channel) -> None:
    for method in ["Admin", "DashboardOnly"]:
        for metadata in [(), operator_metadata("wrong"), (("authorization", TOKEN),)]:
            refused = await _refused(channel, method, metadata)
            assert refused.code() == grpc.StatusCode.UNAUTHENTICATED
        await call(channel, method)(wrappers_pb2.StringValue(), metadata=operator_metadata(TOKEN))
    # Methods the gateway may call stay open without it.
    await call(channel, "Echo")(wrappers_pb2.StringValue())


def test_a_service_with_operator_rpcs_and_no_token_does_not_start() -> None:
    with pytest.raises(SystemExit, match="probe needs KOKOROPAY_OPERATOR_TOKEN"):
        build_server(probe_spec(None))


async def test_domain_errors_carry_a_machine_readable_reason(channel) -> None:
    refused = await _refused(channel, "Refuse")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refused) == "INSUFFICIENT_CREDITS"
    info = error_info(refused)
    assert info is not None
    assert (info.domain, dict(info.metadata)) == ("probe.kokoropay", {"balance": "3"})


async def test_an_unexpected_failure_is_internal_and_keeps_its_words_in_the_log(channel) -> None:
    refused = await _refused(channel, "Crash")
    assert refused.code() == grpc.StatusCode.INTERNAL
    assert refused.details() == "the probe service failed; see its logs"
    assert error_reason(refused) is None


async def test_request_id_travels_from_caller_to_handler(channel) -> None:
    token = request_id_var.set("req-123")
    try:
        echoed = await call(channel, "Echo")(wrappers_pb2.StringValue())
    finally:
        request_id_var.reset(token)
    assert echoed.value == "req-123"
    # Without one, the server makes one up so its logs still correlate.
    generated = await call(channel, "Echo")(wrappers_pb2.StringValue())
    assert len(generated.value) == 32


async def test_calls_are_refused_until_ready(probe, channel) -> None:
    _, built = probe
    built.readiness.ready = False
    refused = await _refused(channel, "Echo")
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    # A reason, so callers can tell "not serving yet" from a service that failed or vanished.
    info = error_info(refused)
    assert info is not None
    assert (info.reason, info.domain) == ("NOT_SERVING", "probe.kokoropay")
    built.readiness.ready = True
    await call(channel, "Echo")(wrappers_pb2.StringValue())
    # Once a stop has begun, new calls are refused the same way while old ones drain.
    built.readiness.draining()
    refused = await _refused(channel, "Echo")
    assert error_reason(refused) == "NOT_SERVING"
    assert "stopping" in (refused.details() or "")
