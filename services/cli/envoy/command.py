"""`kokoro-pay envoy-config`: an Envoy gRPC front proxy configuration, read off the services.

Each `--target NAME=HOST:PORT` is asked over gRPC reflection which services it serves
(`discovery.py`), over mutual TLS with the certificate in `--tls-dir` (the operator's by
default), and the proxy is built from the answers (`rendering.py`). The proxy itself speaks
mutual TLS on both sides with Envoy's certificate, read from `--envoy-tls-dir` on Envoy's
machine (the Secret `envoy-tls` mounted in its pod by default). `--descriptor-out`
writes the discovered FileDescriptorSet (with imports), the input of Envoy's gRPC-JSON
transcoder and of `grpcurl -protoset`. `--from-descriptors` reads the services from the compiled
`kokoropay` stubs instead of live servers: for regenerating the checked-in deploy configuration
where the mesh cannot run; both ways produce the same routes.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from google.protobuf import descriptor_pb2
from google.protobuf.descriptor import FileDescriptor

from services.cli.envoy.discovery import ConfigError, descriptor_set, discover, from_descriptors
from services.cli.envoy.rendering import Address, EnvoyTls, Upstream, build_config, render_yaml
from services.cli.settings import CliSettings
from services.common.pki import TlsIdentity
from services.common.settings import load_settings

# Where the Envoy Deployment mounts the Secret `envoy-tls` (deploy/k8s/base/envoy).
ENVOY_TLS_DIR = "/etc/kokoropay/tls"


def _pair(text: str) -> tuple[str, Address]:
    name, sep, address = text.partition("=")
    if not sep or not name:
        raise argparse.ArgumentTypeError(f"expected NAME=HOST:PORT, got {text!r}")
    try:
        return name, Address.parse(address)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _address(text: str) -> Address:
    try:
        return Address.parse(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _discovery_identity(folder: Path | None) -> TlsIdentity:
    """Who asks the services: `folder`, else the operator, as every operator command finds it."""
    if folder is None:
        return load_settings(CliSettings).tls_identity()
    try:
        return TlsIdentity.load(folder)
    except FileNotFoundError as missing:
        raise ConfigError(f"no certificate in --tls-dir: {missing.filename} is missing") from None


def generate(args: argparse.Namespace) -> tuple[str, descriptor_pb2.FileDescriptorSet]:
    """The YAML text and the descriptor set the arguments ask for."""
    targets: list[tuple[str, Address]] = args.target
    names = [name for name, _ in targets]
    if len(set(names)) != len(names):
        raise ConfigError("each --target NAME may be given once")
    overrides: dict[str, Address] = dict(args.upstream or [])
    unknown = set(overrides) - set(names)
    if unknown:
        raise ConfigError(f"--upstream names no --target: {', '.join(sorted(unknown))}")

    # No mesh, no certificate needed: the compiled descriptors answer instead.
    tls = None if args.from_descriptors else _discovery_identity(args.tls_dir)
    upstreams: list[Upstream] = []
    files: list[FileDescriptor] = []
    for name, address in sorted(targets):
        found = from_descriptors(name) if tls is None else discover(str(address), tls)
        upstreams.append(Upstream(name, overrides.get(name, address), found.services))
        files.extend(found.files)
    config = build_config(
        upstreams,
        listen=args.listen,
        admin=args.admin,
        tls=EnvoyTls.in_folder(args.envoy_tls_dir),
        ops_listen=args.ops_listen,
        health_upstream=args.health_upstream,
        transcode_descriptor=args.transcode_descriptor,
    )
    source = "compiled kokoropay descriptors" if args.from_descriptors else "gRPC reflection"
    provenance = f"Services read from {source}: " + ", ".join(
        f"{u.name} ({', '.join(s.name for s in u.services)})" for u in upstreams
    )
    return render_yaml(config, provenance), descriptor_set(files)


async def run(args: argparse.Namespace) -> None:
    try:
        text, descriptors = generate(args)
    except ConfigError as exc:
        raise SystemExit(f"error: {exc}") from None
    if args.out == "-":
        sys.stdout.write(text)
    else:
        Path(args.out).write_text(text)
        print(f"wrote {args.out}", file=sys.stderr)
    if args.descriptor_out:
        Path(args.descriptor_out).write_bytes(descriptors.SerializeToString(deterministic=True))
        print(f"wrote {args.descriptor_out} ({len(descriptors.file)} files)", file=sys.stderr)


def add_parser(subparsers: argparse._SubParsersAction) -> None:
    """Register `envoy-config` on the kokoro-pay command line."""
    parser = subparsers.add_parser(
        "envoy-config",
        help="generate the Envoy gRPC proxy config from the running services' reflection",
        description=__doc__.splitlines()[0] if __doc__ else None,
    )
    parser.add_argument(
        "--target",
        type=_pair,
        action="append",
        required=True,
        metavar="NAME=HOST:PORT",
        help="a running service to discover (repeat: --target auth=127.0.0.1:50051 …)",
    )
    parser.add_argument(
        "--upstream",
        type=_pair,
        action="append",
        metavar="NAME=HOST:PORT",
        help="the address Envoy should use for NAME when it differs from where it was "
        "discovered, e.g. synth=synth-headless.kokoropay.svc.cluster.local:50053",
    )
    parser.add_argument(
        "--from-descriptors",
        action="store_true",
        help="read each NAME's services from the compiled kokoropay.NAME.v1 stubs instead of "
        "asking a running server (the --target addresses are then the cluster addresses)",
    )
    parser.add_argument(
        "--tls-dir",
        type=Path,
        metavar="DIR",
        help="the certificate (tls.crt, tls.key, ca.crt) to discover with over mutual TLS "
        "(default: the operator's, KOKOROPAY_TLS_DIR or .data/pki/operator)",
    )
    parser.add_argument(
        "--envoy-tls-dir",
        default=ENVOY_TLS_DIR,
        metavar="DIR",
        help="where Envoy reads its own tls.crt, tls.key and the mesh's ca.crt, as a path on "
        "Envoy's machine (default %(default)s, the Secret envoy-tls in its pod)",
    )
    parser.add_argument("--listen", type=_address, default=Address("0.0.0.0", 8080))
    parser.add_argument(
        "--admin",
        type=_address,
        default=Address("127.0.0.1", 9901),
        help="the admin interface; keep it on loopback (default %(default)s)",
    )
    parser.add_argument(
        "--ops-listen",
        type=_address,
        default=Address("0.0.0.0", 9902),
        help="read-only GET /ready and /stats/prometheus for probes and scraping",
    )
    parser.add_argument(
        "--health-upstream",
        metavar="NAME",
        help="the target that answers grpc.health.v1 and reflection through the proxy "
        "(default: the only target; none when there are several)",
    )
    parser.add_argument(
        "--transcode-descriptor",
        metavar="PATH",
        help="enable gRPC-JSON transcoding with the descriptor set at PATH (as Envoy sees it)",
    )
    parser.add_argument("--out", default="envoy.yaml", help="'-' for stdout")
    parser.add_argument("--descriptor-out", metavar="PATH", help="write a FileDescriptorSet")
    parser.set_defaults(handler=run)
