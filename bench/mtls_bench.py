"""What mutual TLS adds to a call in the mesh: the same gRPC server, plaintext against mTLS.

    python -m bench.mtls_bench [--calls 2000] [--streams 200]

The services answer only mutual TLS (nothing in the mesh answers a caller that cannot prove who
it is), so there is no plaintext service to compare with. This measures what the mesh's TLS
itself costs, on one machine in one run: one grpc.aio server with the mesh's server options,
listening twice, on a plaintext port and on a port with the mesh's credentials (a service
certificate, client certificates required), called by clients with the mesh's channel options,
alternating between the two so both see the same machine:

- unary round trips (what each ledger or auth call is), per connection already established;
- the first message of a server stream of 32 KiB messages (the gateway's time to first audio
  byte over synth's stream), and the stream's throughput.

Target: mTLS adds at most 2 ms at p50 to the first byte. New connections pay the handshake once;
channels are long-lived in the mesh, so it is reported separately.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from collections.abc import AsyncIterator

import grpc
from google.protobuf import wrappers_pb2

from services.common.channels import channel_credentials
from services.common.keepalive import CHANNEL_OPTIONS, SERVER_OPTIONS
from services.common.server import server_credentials
from tests.support.pki import identity

CHUNK = b"\0" * 32 * 1024
STREAM_MESSAGES = 32
TARGET_MS = 2.0


async def _echo(request: wrappers_pb2.BytesValue, context: object) -> wrappers_pb2.BytesValue:
    return request


async def _stream(
    request: wrappers_pb2.BytesValue, context: object
) -> AsyncIterator[wrappers_pb2.BytesValue]:
    for _ in range(STREAM_MESSAGES):
        yield wrappers_pb2.BytesValue(value=CHUNK)


def _handlers() -> grpc.GenericRpcHandler:
    serialize = wrappers_pb2.BytesValue.SerializeToString
    parse = wrappers_pb2.BytesValue.FromString
    return grpc.method_handlers_generic_handler(
        "bench.Mesh",
        {
            "Echo": grpc.unary_unary_rpc_method_handler(_echo, parse, serialize),
            "Stream": grpc.unary_stream_rpc_method_handler(_stream, parse, serialize),
        },
    )


class Side:
    def __init__(self, name: str, channel: grpc.aio.Channel) -> None:
        self.name = name
        self.channel = channel
        serialize = wrappers_pb2.BytesValue.SerializeToString
        parse = wrappers_pb2.BytesValue.FromString
        self.echo = channel.unary_unary("/bench.Mesh/Echo", serialize, parse)
        self.stream = channel.unary_stream("/bench.Mesh/Stream", serialize, parse)
        self.unary_ms: list[float] = []
        self.first_ms: list[float] = []
        self.mib_per_s: list[float] = []

    async def one_unary(self) -> None:
        started = time.perf_counter()
        await self.echo(wrappers_pb2.BytesValue(value=b"hold_01J"))
        self.unary_ms.append((time.perf_counter() - started) * 1e3)

    async def one_stream(self) -> None:
        started = time.perf_counter()
        first = None
        size = 0
        async for message in self.stream(wrappers_pb2.BytesValue()):
            if first is None:
                first = time.perf_counter()
            size += len(message.value)
        total = time.perf_counter() - started
        assert first is not None
        self.first_ms.append((first - started) * 1e3)
        self.mib_per_s.append(size / total / 2**20)


async def handshake_ms(address: str, credentials: grpc.ChannelCredentials | None) -> float:
    """A new connection's first call, median of a few: what a fresh channel pays once."""
    times = []
    for _ in range(20):
        started = time.perf_counter()
        channel = (
            grpc.aio.secure_channel(address, credentials, options=CHANNEL_OPTIONS)
            if credentials
            else grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS)
        )
        async with channel:
            await Side("x", channel).echo(wrappers_pb2.BytesValue())
        times.append((time.perf_counter() - started) * 1e3)
    return statistics.median(times)


async def run(calls: int, streams: int) -> int:
    server = grpc.aio.server(options=SERVER_OPTIONS)
    server.add_generic_rpc_handlers([_handlers()])
    plain_port = server.add_insecure_port("127.0.0.1:0")
    tls_port = server.add_secure_port("127.0.0.1:0", server_credentials(identity("ledger")))
    await server.start()
    credentials = channel_credentials(identity("gateway"))
    plain_address, tls_address = f"127.0.0.1:{plain_port}", f"127.0.0.1:{tls_port}"
    plain = Side("plaintext", grpc.aio.insecure_channel(plain_address, options=CHANNEL_OPTIONS))
    mtls = Side(
        "mutual TLS",
        grpc.aio.secure_channel(tls_address, credentials, options=CHANNEL_OPTIONS),
    )
    try:
        for side in (plain, mtls):  # connect and warm up, untimed
            for _ in range(50):
                await side.echo(wrappers_pb2.BytesValue())
        for _ in range(calls):
            await plain.one_unary()
            await mtls.one_unary()
        for _ in range(streams):
            await plain.one_stream()
            await mtls.one_stream()
        handshakes = (
            await handshake_ms(plain_address, None),
            await handshake_ms(tls_address, credentials),
        )
    finally:
        await plain.channel.close()
        await mtls.channel.close()
        await server.stop(None)

    print(f"{calls} unary calls and {streams} streams of {STREAM_MESSAGES} x 32 KiB per side")
    print(f"{'':<12} {'unary p50':>10} {'p99':>8} {'1st msg p50':>12} {'p99':>8} {'MiB/s':>8}")
    for side in (plain, mtls):
        print(
            f"{side.name:<12} {statistics.median(side.unary_ms):9.3f}ms"
            f" {_p99(side.unary_ms):7.3f}ms {statistics.median(side.first_ms):11.3f}ms"
            f" {_p99(side.first_ms):7.3f}ms {statistics.median(side.mib_per_s):8.1f}"
        )
    added_first = statistics.median(mtls.first_ms) - statistics.median(plain.first_ms)
    added_unary = statistics.median(mtls.unary_ms) - statistics.median(plain.unary_ms)
    ratio = statistics.median(mtls.mib_per_s) / statistics.median(plain.mib_per_s)
    print(f"mTLS adds {added_unary:.3f} ms per unary call at p50 (a ledger Reserve or Capture)")
    print(f"mTLS adds {added_first:.3f} ms to the first stream message at p50")
    print(f"stream throughput, mTLS / plaintext: {ratio:.2f}")
    print(f"a new connection: {handshakes[0]:.2f} ms plaintext, {handshakes[1]:.2f} ms mTLS")
    verdict = "meets" if added_first <= TARGET_MS else "MISSES"
    print(f"{verdict} the target of at most {TARGET_MS:.0f} ms added to the first byte")
    return 0 if added_first <= TARGET_MS else 1


def _p99(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--streams", type=int, default=200)
    args = parser.parse_args(argv)
    return asyncio.run(run(args.calls, args.streams))


if __name__ == "__main__":
    sys.exit(main())
