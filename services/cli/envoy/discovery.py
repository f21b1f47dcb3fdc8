"""What each kokoro-pay service serves, asked over gRPC reflection or read from the stubs.

`discover` asks a running server, over mutual TLS like any caller of the mesh (reflection is
open to every certificate of the mesh's CA); `from_descriptors` reads the compiled `kokoropay`
stubs instead, for regenerating the checked-in deploy configuration where the mesh cannot run.
Both give the same services. `descriptor_set` bundles what was found (with its imports) for Envoy's
gRPC-JSON transcoder and `grpcurl -protoset`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from dataclasses import dataclass

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool
from google.protobuf.descriptor import FileDescriptor, ServiceDescriptor

from services.common.channels import channel_credentials
from services.common.pki import TlsIdentity

# Served by every kokoro-pay process, so no single cluster owns them; see `--health-upstream`.
MESH_SERVICES = (
    "grpc.health.v1.Health",
    "grpc.reflection.v1alpha.ServerReflection",
    "grpc.reflection.v1.ServerReflection",
)


class ConfigError(Exception):
    """A target cannot be discovered, or the targets do not make one consistent proxy."""


@dataclass(frozen=True)
class Service:
    """One gRPC service as reflection describes it."""

    name: str
    methods: tuple[str, ...]
    streaming: bool

    @classmethod
    def from_descriptor(cls, descriptor: ServiceDescriptor) -> Service:
        methods = descriptor.methods
        return cls(
            name=descriptor.full_name,
            methods=tuple(m.name for m in methods),
            streaming=any(m.server_streaming or m.client_streaming for m in methods),
        )


@dataclass(frozen=True)
class Discovery:
    services: tuple[Service, ...]
    files: tuple[FileDescriptor, ...]


def _collect_files(roots: Iterable[FileDescriptor]) -> list[FileDescriptor]:
    """The files and everything they import, each after its imports (as protoc orders a set)."""
    ordered: list[FileDescriptor] = []
    seen: set[str] = set()

    def visit(file: FileDescriptor) -> None:
        if file.name in seen:
            return
        seen.add(file.name)
        for dependency in file.dependencies:
            visit(dependency)
        ordered.append(file)

    for root in roots:
        visit(root)
    return ordered


def _discovery(pool: descriptor_pool.DescriptorPool, names: Iterable[str]) -> Discovery:
    descriptors = [pool.FindServiceByName(name) for name in sorted(names)]
    return Discovery(
        services=tuple(Service.from_descriptor(d) for d in descriptors),
        files=tuple(_collect_files(d.file for d in descriptors)),
    )


def discover(address: str, tls: TlsIdentity, timeout: float = 10.0) -> Discovery:
    """Ask a running server, over gRPC reflection, what it serves; `tls` is who asks."""
    # Imported here: only this path needs the reflection client.
    from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
        ProtoReflectionDescriptorDatabase,
    )

    with grpc.secure_channel(address, channel_credentials(tls)) as channel:
        try:
            grpc.channel_ready_future(channel).result(timeout=timeout)
        except grpc.FutureTimeoutError:
            # A refused handshake looks the same from here as a closed port.
            raise ConfigError(
                f"nothing answers at {address} after {timeout:g}s over mutual TLS "
                "(is it running, and does it trust the CA of the --tls-dir certificate?)"
            ) from None
        database = ProtoReflectionDescriptorDatabase(channel)
        pool = descriptor_pool.DescriptorPool(database)
        try:
            names = [n for n in database.get_services() if n not in MESH_SERVICES]
            return _discovery(pool, names)
        except grpc.RpcError as error:
            raise ConfigError(
                f"reflection failed at {address}: {error.code().name} {error.details()}"
            ) from None


def from_descriptors(name: str) -> Discovery:
    """What `kokoropay.<name>.v1` declares, from the compiled stubs (no server needed)."""
    try:
        module = importlib.import_module(f"kokoropay.{name}.v1.{name}_pb2")
    except ImportError:
        raise ConfigError(f"no compiled descriptors for {name!r} (kokoropay.{name}.v1)") from None
    file: FileDescriptor = module.DESCRIPTOR
    names = [service.full_name for service in file.services_by_name.values()]
    return _discovery(descriptor_pool.Default(), names)


def descriptor_set(files: Iterable[FileDescriptor]) -> descriptor_pb2.FileDescriptorSet:
    """One self-contained set: every file once, imports before the files that use them."""
    result = descriptor_pb2.FileDescriptorSet()
    for file in _collect_files(files):
        file.CopyToProto(result.file.add())
    return result
