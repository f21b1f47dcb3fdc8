"""The shared gRPC plumbing over a real mutual-TLS socket, as every service gets it from
`build_server`: who may call each RPC (by certificate, and through Envoy by its word), error
reasons, request ids and the readiness gate."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable

import grpc
import pytest
from google.protobuf import wrappers_pb2

from services.common.channels import channel_credentials
from services.common.errors import error_info, error_reason
from services.common.identity import XFCC_HEADER
from services.common.logs import request_id_var
from services.common.pki import spiffe_id
from services.common.server import BuiltServer, build_server, server_credentials
from tests.support.pki import channel, foreign_identity, identity
from tests.support.probe_service import call, probe_spec


@pytest.fixture
async def probe() -> AsyncIterator[tuple[str, BuiltServer]]:
    built = build_server(probe_spec())
    built.readiness.ready = True
    # Served with a service's certificate (it names 127.0.0.1), requiring a client's.
    port = built.server.add_secure_port("127.0.0.1:0", server_credentials(identity("ledger")))
    await built.server.start()
    yield f"127.0.0.1:{port}", built
    await built.server.stop(None)


@pytest.fixture
async def as_caller(probe) -> AsyncIterator[Callable[[str], grpc.aio.Channel]]:
    """Channels to the probe, each calling with the certificate named."""
    opened: list[grpc.aio.Channel] = []

    def open_as(name: str) -> grpc.aio.Channel:
        opened.append(channel(probe[0], name))
        return opened[-1]

    yield open_as
    for each in opened:
        await each.close()


@pytest.fixture
async def gateway(as_caller) -> grpc.aio.Channel:
    # Async, so the channel is made inside the running loop, as grpc.aio requires.
    return as_caller("gateway")


async def _refused(channel: grpc.aio.Channel, method: str, metadata=()) -> grpc.aio.AioRpcError:
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await call(channel, method)(wrappers_pb2.StringValue(), metadata=metadata, timeout=5)
    return raised.value


async def test_an_rpc_without_an_access_declaration_is_refused_to_everyone(as_caller) -> None:
    for name in ["operator", "gateway", "reports"]:
        refused = await _refused(as_caller(name), "Undeclared")
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "declares no callers" in (refused.details() or "")


# Method → who may call it (DECLARATIONS in the probe) and a caller who may not.
MATRIX = [
    ("Admin", "operator", "gateway"),
    ("DashboardOnly", "dashboard", "operator"),
    ("Echo", "gateway", "predictions"),
    ("Echo", "reports", "operator"),  # reports is an internal caller
]


@pytest.mark.parametrize(("method", "allowed", "denied"), MATRIX)
async def test_each_rpc_answers_exactly_the_callers_it_declares(
    as_caller, method: str, allowed: str, denied: str
) -> None:
    await call(as_caller(allowed), method)(wrappers_pb2.StringValue(), timeout=5)
    refused = await _refused(as_caller(denied), method)
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_a_certificate_of_our_ca_naming_no_caller_is_unauthenticated(as_caller) -> None:
    refused = await _refused(as_caller("stranger"), "Echo")
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED


async def test_a_caller_without_a_certificate_of_our_ca_gets_no_answer(probe) -> None:
    address = probe[0]
    for unproven in (
        grpc.aio.insecure_channel(address),
        grpc.aio.secure_channel(address, channel_credentials(foreign_identity())),
    ):
        async with unproven:
            refused = await _refused(unproven, "Echo")
        assert refused.code() == grpc.StatusCode.UNAVAILABLE  # the handshake fails


def _xfcc(caller: str) -> tuple[tuple[str, str], ...]:
    uri = spiffe_id(caller)
    return ((XFCC_HEADER, f"By=spiffe://kokoropay/ledger;Hash=abc;URI={uri}"),)


async def test_envoy_speaks_for_the_caller_it_forwards_and_nobody_else_can(as_caller) -> None:
    envoy = as_caller("envoy")
    # Through Envoy the forwarded caller counts, not Envoy's own certificate.
    await call(envoy, "Admin")(wrappers_pb2.StringValue(), metadata=_xfcc("operator"), timeout=5)
    denied = await _refused(envoy, "Admin", _xfcc("gateway"))
    assert denied.code() == grpc.StatusCode.PERMISSION_DENIED
    # Envoy forwarding nobody is nobody.
    assert (await _refused(envoy, "Echo")).code() == grpc.StatusCode.UNAUTHENTICATED
    # The header from anyone but Envoy is ignored: the gateway stays the gateway.
    spoofed = await _refused(as_caller("gateway"), "Admin", _xfcc("operator"))
    assert spoofed.code() == grpc.StatusCode.PERMISSION_DENIED


async def test_domain_errors_carry_a_machine_readable_reason(gateway) -> None:
    refused = await _refused(gateway, "Refuse")
    assert refused.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert error_reason(refused) == "INSUFFICIENT_CREDITS"
    info = error_info(refused)
    assert info is not None
    assert (info.domain, dict(info.metadata)) == ("probe.kokoropay", {"balance": "3"})


async def test_an_unexpected_failure_is_internal_and_keeps_its_words_in_the_log(gateway) -> None:
    refused = await _refused(gateway, "Crash")
    assert refused.code() == grpc.StatusCode.INTERNAL
    assert refused.details() == "the probe service failed; see its logs"
    assert error_reason(refused) is None


async def test_request_id_travels_from_caller_to_handler(gateway) -> None:
    token = request_id_var.set("req-123")
    try:
        echoed = await call(gateway, "Echo")(wrappers_pb2.StringValue())
    finally:
        request_id_var.reset(token)
    assert echoed.value == "req-123"
    # Without one, the server makes one up so its logs still correlate.
    generated = await call(gateway, "Echo")(wrappers_pb2.StringValue())
    assert len(generated.value) == 32


async def test_calls_are_refused_until_ready(probe, gateway) -> None:
    _, built = probe
    built.readiness.ready = False
    refused = await _refused(gateway, "Echo")
    assert refused.code() == grpc.StatusCode.UNAVAILABLE
    # A reason, so callers can tell "not serving yet" from a service that failed or vanished.
    info = error_info(refused)
    assert info is not None
    assert (info.reason, info.domain) == ("NOT_SERVING", "probe.kokoropay")
    built.readiness.ready = True
    await call(gateway, "Echo")(wrappers_pb2.StringValue())
    # Once a stop has begun, new calls are refused the same way while old ones drain.
    built.readiness.draining()
    refused = await _refused(gateway, "Echo")
    assert error_reason(refused) == "NOT_SERVING"
    assert "stopping" in (refused.details() or "")
