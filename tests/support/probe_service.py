"""A tiny gRPC service declared the way ours are, for testing the shared plumbing over a socket.

Its descriptor is built here rather than compiled from a .proto, so the tests need no generated
code; it carries the same `access` method option as auth.proto, ledger.proto and synth.proto.
`Undeclared` deliberately has none.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, wrappers_pb2
from kokoropay.common.v1 import access_pb2

from services.common.errors import ErrorTable, ServiceError
from services.common.logs import request_id_var
from services.common.server import ServiceSpec

SERVICE = "kokoropay.testing.v1.ProbeService"

# Method → callers declared in its options; None: no `access` option at all.
DECLARATIONS: dict[str, list[int] | None] = {
    "Echo": [access_pb2.GATEWAY, access_pb2.INTERNAL],
    "Admin": [access_pb2.OPERATOR],
    "DashboardOnly": [access_pb2.DASHBOARD],
    "Refuse": [access_pb2.GATEWAY],
    "Crash": [access_pb2.GATEWAY],
    "Undeclared": None,
}
# Server-streaming methods, declared the same way: `Count` streams `value` messages ("forever":
# one, then waits to be cancelled; "fail": one, then a refusal).
STREAM_DECLARATIONS: dict[str, list[int]] = {"Count": [access_pb2.GATEWAY]}


def _register_descriptor() -> None:
    file = descriptor_pb2.FileDescriptorProto(
        name="kokoropay/testing/v1/probe.proto",
        package="kokoropay.testing.v1",
        syntax="proto3",
        dependency=["google/protobuf/wrappers.proto", "kokoropay/common/v1/access.proto"],
    )
    service = file.service.add(name="ProbeService")
    for name, callers in DECLARATIONS.items():
        method = service.method.add(
            name=name,
            input_type=".google.protobuf.StringValue",
            output_type=".google.protobuf.StringValue",
        )
        if callers is not None:
            method.options.Extensions[access_pb2.access].callers.extend(callers)
    for name, callers in STREAM_DECLARATIONS.items():
        method = service.method.add(
            name=name,
            input_type=".google.protobuf.StringValue",
            output_type=".google.protobuf.StringValue",
            server_streaming=True,
        )
        method.options.Extensions[access_pb2.access].callers.extend(callers)
    descriptor_pool.Default().AddSerializedFile(file.SerializeToString())


_register_descriptor()


class Refused(ServiceError):
    pass


ERRORS = ErrorTable("probe", {Refused: grpc.StatusCode.FAILED_PRECONDITION})


async def _echo_request_id(request: wrappers_pb2.StringValue, context: Any) -> Any:
    return wrappers_pb2.StringValue(value=request_id_var.get())


async def _refuse(request: wrappers_pb2.StringValue, context: Any) -> Any:
    raise Refused("no", reason="INSUFFICIENT_CREDITS", metadata={"balance": "3"})


async def _crash(request: wrappers_pb2.StringValue, context: Any) -> Any:
    raise RuntimeError("a bug with secrets in its message")


async def _count(request: wrappers_pb2.StringValue, context: Any) -> AsyncIterator[Any]:
    if request.value in ("forever", "fail"):
        yield wrappers_pb2.StringValue(value="0")
        if request.value == "fail":
            raise Refused("stopped halfway")
        await asyncio.Event().wait()
    for number in range(int(request.value or 0)):
        yield wrappers_pb2.StringValue(value=str(number))


def _handler(behaviour: Callable[..., Awaitable[Any]]) -> grpc.RpcMethodHandler:
    return grpc.unary_unary_rpc_method_handler(
        behaviour,
        request_deserializer=wrappers_pb2.StringValue.FromString,
        response_serializer=wrappers_pb2.StringValue.SerializeToString,
    )


def probe_spec() -> ServiceSpec:
    behaviours = {"Refuse": _refuse, "Crash": _crash}
    handlers = {name: _handler(behaviours.get(name, _echo_request_id)) for name in DECLARATIONS}
    handlers["Count"] = grpc.unary_stream_rpc_method_handler(
        _count,
        request_deserializer=wrappers_pb2.StringValue.FromString,
        response_serializer=wrappers_pb2.StringValue.SerializeToString,
    )

    def register(server: grpc.aio.Server) -> None:
        server.add_generic_rpc_handlers([grpc.method_handlers_generic_handler(SERVICE, handlers)])

    return ServiceSpec(names=[SERVICE], register=register, errors=ERRORS)


def stream(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryStreamMultiCallable:
    return channel.unary_stream(
        f"/{SERVICE}/{method}",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )


def call(channel: grpc.aio.Channel, method: str) -> grpc.aio.UnaryUnaryMultiCallable:
    return channel.unary_unary(
        f"/{SERVICE}/{method}",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
