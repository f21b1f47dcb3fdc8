"""The gRPC metrics every server and channel gets (services/common/grpc_metrics.py), over a real
mutual-TLS socket in this process: the probe service behind `build_server`, called through
`open_channel`, and the registry read back as Prometheus would read it."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import grpc
import pytest
from google.protobuf import wrappers_pb2

from services.common.server import BuiltServer, build_server, server_credentials
from tests.support.metrics import Exposition, scrape
from tests.support.pki import channel, identity
from tests.support.probe_service import SERVICE, call, probe_spec, stream

UNARY = {"grpc_service": SERVICE, "grpc_type": "unary"}
STREAM = {"grpc_service": SERVICE, "grpc_method": "Count", "grpc_type": "server_stream"}


@pytest.fixture
async def served() -> AsyncIterator[tuple[grpc.aio.Channel, BuiltServer]]:
    """A channel, as the gateway, to the probe service served as every service is."""
    built = build_server(probe_spec())
    built.readiness.ready = True
    port = built.server.add_secure_port("127.0.0.1:0", server_credentials(identity("ledger")))
    await built.server.start()
    gateway = channel(f"127.0.0.1:{port}", "gateway")
    yield gateway, built
    await gateway.close()
    await built.server.stop(None)


@pytest.fixture
def probe(served) -> grpc.aio.Channel:
    return served[0]


def _handled(after: Exposition, before: Exposition, side: str, code: str, **labels: str) -> float:
    return after.delta(before, f"grpc_{side}_handled_total", grpc_code=code, **labels)


async def test_a_call_is_counted_on_both_sides_with_its_code_and_time(probe) -> None:
    before = scrape()
    await call(probe, "Echo")(wrappers_pb2.StringValue(), timeout=5)
    after = scrape()
    for side in ("server", "client"):
        echo = {**UNARY, "grpc_method": "Echo"}
        assert after.delta(before, f"grpc_{side}_started_total", **echo) == 1
        assert _handled(after, before, side, "OK", **echo) == 1
        assert after.delta(before, f"grpc_{side}_handling_seconds_count", **echo) == 1
        assert after.delta(before, f"grpc_{side}_handling_seconds_sum", **echo) > 0


async def test_failed_calls_are_counted_with_the_code_they_ended_with(probe) -> None:
    before = scrape()
    for method in ("Refuse", "Crash", "Admin"):  # a domain refusal, a bug, a caller not allowed
        with pytest.raises(grpc.aio.AioRpcError):
            await call(probe, method)(wrappers_pb2.StringValue(), timeout=5)
    after = scrape()
    expected = {"Refuse": "FailedPrecondition", "Crash": "Internal", "Admin": "PermissionDenied"}
    for method, code in expected.items():
        for side in ("server", "client"):
            assert _handled(after, before, side, code, grpc_method=method, **UNARY) == 1
            assert _handled(after, before, side, "OK", grpc_method=method, **UNARY) == 0


async def test_refusals_before_the_handler_are_counted_too(served) -> None:
    # The readiness gate answers before any handler: the metrics interceptor comes first.
    probe, built = served
    built.readiness.ready = False
    before = scrape()
    with pytest.raises(grpc.aio.AioRpcError):
        await call(probe, "Echo")(wrappers_pb2.StringValue(), timeout=5)
    after = scrape()
    assert _handled(after, before, "server", "Unavailable", grpc_method="Echo", **UNARY) == 1


async def test_a_method_the_server_lacks_never_becomes_a_label(probe) -> None:
    # Any caller can name any method: counting those would let strangers grow our series.
    unknown = probe.unary_unary(
        f"/{SERVICE}/NoSuchMethod",
        request_serializer=wrappers_pb2.StringValue.SerializeToString,
        response_deserializer=wrappers_pb2.StringValue.FromString,
    )
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        await unknown(wrappers_pb2.StringValue(), timeout=5)
    assert raised.value.code() == grpc.StatusCode.UNIMPLEMENTED
    served_methods = {
        dict(labels).get("grpc_method")
        for name, labels in scrape().samples
        if name.startswith("grpc_server_")
    }
    assert "NoSuchMethod" not in served_methods


async def test_a_stream_is_handled_once_when_it_ends(probe) -> None:
    before = scrape()
    messages = [m.value async for m in stream(probe, "Count")(wrappers_pb2.StringValue(value="3"))]
    assert messages == ["0", "1", "2"]
    await asyncio.sleep(0.05)  # the client reads a finished stream's status in a task of its own
    after = scrape()
    for side in ("server", "client"):
        assert after.delta(before, f"grpc_{side}_started_total", **STREAM) == 1
        assert _handled(after, before, side, "OK", **STREAM) == 1
        assert after.delta(before, f"grpc_{side}_handling_seconds_count", **STREAM) == 1


async def test_a_stream_failing_midway_is_counted_with_its_code(probe) -> None:
    before = scrape()
    call_ = stream(probe, "Count")(wrappers_pb2.StringValue(value="fail"))
    assert (await call_.read()).value == "0"
    with pytest.raises(grpc.aio.AioRpcError):
        await call_.read()
    await asyncio.sleep(0.05)
    after = scrape()
    for side in ("server", "client"):
        assert _handled(after, before, side, "FailedPrecondition", **STREAM) == 1


async def test_a_stream_the_client_abandons_is_canceled_on_both_sides(probe) -> None:
    before = scrape()
    call_ = stream(probe, "Count")(wrappers_pb2.StringValue(value="forever"))
    assert (await call_.read()).value == "0"
    call_.cancel()
    for _ in range(100):  # the server learns of the cancel over the socket
        await asyncio.sleep(0.01)
        after = scrape()
        if _handled(after, before, "server", "Canceled", **STREAM):
            break
    for side in ("server", "client"):
        assert _handled(after, before, side, "Canceled", **STREAM) == 1
        assert after.delta(before, f"grpc_{side}_handled_total", **STREAM) == 1


async def test_a_stream_past_its_deadline_is_deadline_exceeded(probe) -> None:
    before = scrape()
    call_ = stream(probe, "Count")(wrappers_pb2.StringValue(value="forever"), timeout=0.2)
    with pytest.raises(grpc.aio.AioRpcError) as raised:
        async for _ in call_:
            pass
    assert raised.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    for _ in range(100):
        await asyncio.sleep(0.01)
        after = scrape()
        if after.delta(before, "grpc_server_handled_total", **STREAM):
            break
    for side in ("server", "client"):
        assert _handled(after, before, side, "DeadlineExceeded", **STREAM) == 1


async def test_declared_methods_read_zero_before_their_first_call(probe) -> None:
    exposition = scrape()
    assert exposition.has("grpc_server_handled_total", grpc_method="Admin", grpc_code="OK", **UNARY)
    assert exposition.has("grpc_server_started_total", **STREAM)


async def test_labels_stay_bounded(probe) -> None:
    await call(probe, "Echo")(wrappers_pb2.StringValue(value="acct_secret kp_live_x"), timeout=5)
    labels = {name for _, sample_labels in scrape().samples for name, _ in sample_labels}
    grpc_labels = {"grpc_service", "grpc_method", "grpc_type", "grpc_code", "le"}
    assert {name for name in labels if name.startswith("grpc_")} <= grpc_labels
    assert not any("secret" in value for value in scrape().label_values("grpc_method"))
