"""The shared gRPC plumbing over a real socket: error reasons, operator auth, request ids,
and the readiness gate every service relies on."""

from __future__ import annotations

from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import wrappers_pb2

from services.common.channels import open_channel, operator_metadata
from services.common.errors import abort, error_reason
from services.common.interceptors import (
    OperatorAuthInterceptor,
    ReadinessInterceptor,
    RequestIdInterceptor,
)
from services.common.logs import request_id_var

SERVICE = "test.Echo"
TOKEN = "operator-secret"


async def _echo_request_id(request: wrappers_pb2.StringValue, context) -> wrappers_pb2.StringValue:
    return wrappers_pb2.StringValue(value=request_id_var.get())


async def _refuse(request: wrappers_pb2.StringValue, context) -> wrappers_pb2.StringValue:
    await abort(context, grpc.StatusCode.FAILED_PRECONDITION, "no", reason="INSUFFICIENT_CREDITS")


def _handler(behaviour):
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=wrappers_pb2.StringValue.FromString,
        response_serializer=wrappers_pb2.StringValue.SerializeToString,
    )


@pytest.fixture
async def server() -> AsyncIterator[tuple[str, ReadinessInterceptor]]:
    readiness = ReadinessInterceptor()
    readiness.ready = True
    server = grpc.aio.server(
        interceptors=[
            RequestIdInterceptor(),
            readiness,
            OperatorAuthInterceptor([f"/{SERVICE}/Admin"], TOKEN),
        ]
    )
    server.add_generic_rpc_handlers(
        [
            grpc.method_handlers_generic_handler(
                SERVICE,
                {
                    "Echo": _handler(_echo_request_id),
                    "Admin": _handler(_echo_request_id),
                    "Refuse": _handler(_refuse),
                },
            )
        ]
    )
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    yield f"127.0.0.1:{port}", readiness
    await server.stop(None)


def _call(channel: grpc.aio.Channel, method: str):
    return channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )


async def test_domain_errors_carry_a_machine_readable_reason(server) -> None:
    address, _ = server
    async with open_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(channel, "Refuse")(wrappers_pb2.StringValue())
    assert raised.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(raised.value) == "INSUFFICIENT_CREDITS"


async def test_admin_methods_need_the_operator_token(server) -> None:
    address, _ = server
    async with open_channel(address) as channel:
        admin = _call(channel, "Admin")
        for metadata in [(), operator_metadata("wrong"), (("authorization", TOKEN),)]:
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await admin(wrappers_pb2.StringValue(), metadata=metadata)
            assert raised.value.code() == grpc.StatusCode.UNAUTHENTICATED
        await admin(wrappers_pb2.StringValue(), metadata=operator_metadata(TOKEN))
        # Other methods stay open without it.
        await _call(channel, "Echo")(wrappers_pb2.StringValue())


async def test_request_id_travels_from_caller_to_handler(server) -> None:
    address, _ = server
    async with open_channel(address) as channel:
        token = request_id_var.set("req-123")
        try:
            echoed = await _call(channel, "Echo")(wrappers_pb2.StringValue())
        finally:
            request_id_var.reset(token)
        assert echoed.value == "req-123"
        # Without one, the server makes one up so its logs still correlate.
        generated = await _call(channel, "Echo")(wrappers_pb2.StringValue())
        assert len(generated.value) == 32


async def test_calls_are_refused_until_ready(server) -> None:
    address, readiness = server
    readiness.ready = False
    async with open_channel(address) as channel:
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await _call(channel, "Echo")(wrappers_pb2.StringValue())
        assert raised.value.code() == grpc.StatusCode.UNAVAILABLE
        readiness.ready = True
        await _call(channel, "Echo")(wrappers_pb2.StringValue())
