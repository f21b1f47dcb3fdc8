"""`kokoro-pay envoy-config` without a running mesh: the compiled descriptors stand in for
reflection (tests/integration/test_envoy.py runs it against live services, over mutual TLS), and
the real Envoy binary judges every configuration it writes, certificates included."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml
from google.protobuf import descriptor_pb2, descriptor_pool

from services.cli.envoy.discovery import ConfigError, Service, discover
from services.cli.envoy.rendering import Address, EnvoyTls, Upstream, build_config
from services.cli.main import main as kokoro_pay
from tests.deploy.envoy_tools import validate_with_envoy
from tests.deploy.manifests import K8S
from tests.support.pki import identity

DEPLOYED = K8S / "base" / "envoy" / "envoy.yaml"
# What the checked-in configuration was generated with (docs/operations.md, `make envoy-config`):
# the services' headless Services, predictions for the operator's webhook-secret commands.
TARGETS = [
    "--target=auth=auth-headless.kokoropay.svc.cluster.local:50051",
    "--target=ledger=ledger-headless.kokoropay.svc.cluster.local:50052",
    "--target=predictions=predictions-headless.kokoropay.svc.cluster.local:50054",
    "--target=synth=synth-headless.kokoropay.svc.cluster.local:50053",
]
DEPLOY_TARGETS = [*TARGETS, "--health-upstream=synth"]
SERVICES = {
    "kokoropay.auth.v1.AuthService": "auth",
    "kokoropay.ledger.v1.LedgerService": "ledger",
    "kokoropay.predictions.v1.PredictionService": "predictions",
    "kokoropay.synth.v1.SynthService": "synth",
}


def _generate(tmp_path: Path, *args: str) -> tuple[dict[str, Any], Path]:
    out = tmp_path / "envoy.yaml"
    code = kokoro_pay(["envoy-config", "--from-descriptors", *args, f"--out={out}"])
    assert code == 0
    return yaml.safe_load(out.read_text()), out


def _routes(config: dict[str, Any]) -> list[dict[str, Any]]:
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes: list[dict[str, Any]] = manager["route_config"]["virtual_hosts"][0]["routes"]
    return routes


def _clusters(config: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["name"]: c for c in config["static_resources"]["clusters"]}


def _grpc_chain(config: dict[str, Any]) -> dict[str, Any]:
    (listener,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "grpc"]
    (chain,) = listener["filter_chains"]
    return dict(chain)


def test_one_route_per_service_to_its_cluster(tmp_path: Path) -> None:
    config, path = _generate(tmp_path, *TARGETS)
    routes = _routes(config)
    assert [(r["match"]["prefix"], r["route"]["cluster"]) for r in routes] == [
        (f"/{service}/", cluster) for service, cluster in SERVICES.items()
    ]
    validate_with_envoy(path)


def test_health_and_reflection_go_to_the_named_upstream_only(tmp_path: Path) -> None:
    several, _ = _generate(tmp_path, *TARGETS)
    assert not [r for r in _routes(several) if r["match"]["prefix"].startswith("/grpc.")]

    config, path = _generate(tmp_path, *DEPLOY_TARGETS)
    mesh = {r["match"]["prefix"]: r["route"]["cluster"] for r in _routes(config)}
    assert mesh["/grpc.health.v1.Health/"] == "synth"
    assert mesh["/grpc.reflection.v1alpha.ServerReflection/"] == "synth"
    validate_with_envoy(path)

    alone, _ = _generate(tmp_path, "--target=ledger=127.0.0.1:50052")
    assert {r["route"]["cluster"] for r in _routes(alone)} == {"ledger"}
    assert any(r["match"]["prefix"] == "/grpc.health.v1.Health/" for r in _routes(alone))


def test_streams_get_no_response_timeout_and_unary_calls_a_short_one(tmp_path: Path) -> None:
    config, _ = _generate(tmp_path, *TARGETS)
    by_cluster = {r["route"]["cluster"]: r["route"] for r in _routes(config)}
    synth = by_cluster["synth"]
    assert synth["timeout"] == "0s"
    assert synth["max_stream_duration"]["max_stream_duration"] == "3900s"
    assert synth["idle_timeout"] == "300s"
    for unary in ("auth", "ledger"):
        assert by_cluster[unary]["timeout"] == "15s"
        assert "max_stream_duration" not in by_cluster[unary]
    # ReadOutput streams a stored output (the gateway's downloads): predictions' route is a
    # stream's, capped like synth's.
    assert by_cluster["predictions"]["timeout"] == "0s"
    assert by_cluster["predictions"]["max_stream_duration"] == synth["max_stream_duration"]
    for route in by_cluster.values():
        policy = route["retry_policy"]
        assert "unavailable" in policy["retry_on"].split(",")
        assert 1 <= policy["num_retries"] <= 3


def test_clusters_are_http2_strict_dns_health_checked(tmp_path: Path) -> None:
    config, _ = _generate(tmp_path, *DEPLOY_TARGETS)
    clusters = _clusters(config)
    for name in ("auth", "ledger", "predictions", "synth"):
        cluster = clusters[name]
        assert cluster["type"] == "STRICT_DNS"
        options = cluster["typed_extension_protocol_options"][
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
        ]
        assert "http2_protocol_options" in options["explicit_http_config"]
        (check,) = cluster["health_checks"]
        assert "grpc_health_check" in check
    assert clusters["synth"]["lb_policy"] == "LEAST_REQUEST"
    assert clusters["auth"]["lb_policy"] == "ROUND_ROBIN"
    endpoint = clusters["synth"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    assert endpoint["endpoint"]["address"]["socket_address"] == {
        "address": "synth-headless.kokoropay.svc.cluster.local",
        "port_value": 50053,
    }


def test_the_listener_answers_only_callers_with_a_certificate_of_the_mesh(tmp_path: Path) -> None:
    config, _ = _generate(tmp_path, *DEPLOY_TARGETS)
    chain = _grpc_chain(config)
    socket = chain["transport_socket"]["typed_config"]
    assert socket["@type"].endswith("tls.v3.DownstreamTlsContext")
    assert socket["require_client_certificate"] is True
    context = socket["common_tls_context"]
    # Where the Envoy Deployment mounts the Secret envoy-tls (cert-manager's layout).
    assert context["tls_certificates"] == [
        {
            "certificate_chain": {"filename": "/etc/kokoropay/tls/tls.crt"},
            "private_key": {"filename": "/etc/kokoropay/tls/tls.key"},
        }
    ]
    assert context["validation_context"] == {
        "trusted_ca": {"filename": "/etc/kokoropay/tls/ca.crt"}
    }
    assert context["alpn_protocols"] == ["h2"]


def test_the_callers_identity_is_what_envoy_verified_never_what_it_sent(tmp_path: Path) -> None:
    config, _ = _generate(tmp_path, *DEPLOY_TARGETS)
    manager = _grpc_chain(config)["filters"][0]["typed_config"]
    # SANITIZE_SET: a client's own x-forwarded-client-cert is replaced, never appended to.
    assert manager["forward_client_cert_details"] == "SANITIZE_SET"
    assert manager["set_current_client_cert_details"] == {"uri": True}


def test_envoy_dials_each_service_with_its_certificate_and_checks_the_pods(tmp_path: Path) -> None:
    config, _ = _generate(tmp_path, *DEPLOY_TARGETS)
    for name, cluster in _clusters(config).items():
        if name == "envoy_admin":
            assert "transport_socket" not in cluster  # loopback, plaintext
            continue
        socket = cluster["transport_socket"]["typed_config"]
        assert socket["@type"].endswith("tls.v3.UpstreamTlsContext")
        assert socket["sni"] == f"{name}-headless.kokoropay.svc.cluster.local"
        context = socket["common_tls_context"]
        assert context["alpn_protocols"] == ["h2"]
        assert context["tls_certificates"][0]["certificate_chain"] == {
            "filename": "/etc/kokoropay/tls/tls.crt"
        }
        # Only a pod whose certificate names this service; any certificate of the CA won't do.
        assert context["validation_context"] == {
            "trusted_ca": {"filename": "/etc/kokoropay/tls/ca.crt"},
            "match_typed_subject_alt_names": [
                {"san_type": "URI", "matcher": {"exact": f"spiffe://kokoropay/{name}"}}
            ],
        }
        # Health checks ride the same mutual-TLS connection as the traffic.
        (check,) = cluster["health_checks"]
        assert "transport_socket_match_criteria" not in check


def test_certificate_paths_follow_envoy_tls_dir_and_an_ip_gets_no_sni(tmp_path: Path) -> None:
    config, path = _generate(
        tmp_path, "--target=ledger=127.0.0.1:50052", f"--envoy-tls-dir={tmp_path}/certs/"
    )
    chain = _grpc_chain(config)["transport_socket"]["typed_config"]["common_tls_context"]
    assert chain["validation_context"]["trusted_ca"] == {"filename": f"{tmp_path}/certs/ca.crt"}
    upstream = _clusters(config)["ledger"]["transport_socket"]["typed_config"]
    assert upstream["common_tls_context"]["tls_certificates"][0]["private_key"] == {
        "filename": f"{tmp_path}/certs/tls.key"
    }
    assert "sni" not in upstream


def test_transcoding_lets_json_clients_speak_http1_over_the_same_tls(tmp_path: Path) -> None:
    config, _ = _generate(tmp_path, *DEPLOY_TARGETS, "--transcode-descriptor=/etc/envoy/x.pb")
    context = _grpc_chain(config)["transport_socket"]["typed_config"]["common_tls_context"]
    assert context["alpn_protocols"] == ["h2", "http/1.1"]


def test_admin_listens_on_loopback_and_ops_serves_only_reads(tmp_path: Path) -> None:
    config, _ = _generate(tmp_path, *DEPLOY_TARGETS)
    assert config["admin"]["address"]["socket_address"]["address"] == "127.0.0.1"
    (ops,) = [x for x in config["static_resources"]["listeners"] if x["name"] == "ops"]
    manager = ops["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    proxied = [r for r in routes if "route" in r]
    assert {r["match"]["path"] for r in proxied} == {"/ready", "/stats/prometheus"}
    for route in proxied:
        assert route["match"]["headers"] == [{"name": ":method", "string_match": {"exact": "GET"}}]
    assert routes[-1] == {"match": {"prefix": "/"}, "direct_response": {"status": 404}}


def test_upstream_overrides_the_discovered_address(tmp_path: Path) -> None:
    config, _ = _generate(
        tmp_path,
        "--target=synth=127.0.0.1:50053",
        "--upstream=synth=synth-headless.kokoropay.svc.cluster.local:50053",
    )
    endpoint = _clusters(config)["synth"]["load_assignment"]["endpoints"][0]["lb_endpoints"][0]
    address = endpoint["endpoint"]["address"]["socket_address"]["address"]
    assert address == "synth-headless.kokoropay.svc.cluster.local"


def test_descriptor_set_is_self_contained_and_transcodes(tmp_path: Path) -> None:
    descriptors = tmp_path / "protos.pb"
    config_path = tmp_path / "envoy.yaml"
    code = kokoro_pay(
        [
            "envoy-config",
            "--from-descriptors",
            *DEPLOY_TARGETS,
            f"--out={config_path}",
            f"--descriptor-out={descriptors}",
            f"--transcode-descriptor={descriptors}",
        ]
    )
    assert code == 0
    files = descriptor_pb2.FileDescriptorSet.FromString(descriptors.read_bytes()).file
    pool = descriptor_pool.DescriptorPool()
    for file in files:  # each after its imports, or Add raises
        pool.Add(file)
    for service in SERVICES:
        assert pool.FindServiceByName(service).methods
    # Envoy loads the set and resolves every service in it: usable for gRPC-JSON transcoding.
    validate_with_envoy(config_path)


@pytest.mark.parametrize(
    "args",
    [
        ["--target=auth"],
        ["--target=auth=nohost"],
        ["--target=auth=host:99999"],
    ],
)
def test_malformed_targets_are_usage_errors(args: list[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kokoro_pay(["envoy-config", "--from-descriptors", *args])
    assert exit_info.value.code == 2


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--target=a=h:1", "--target=a=h:2"], "once"),
        (["--target=auth=h:1", "--upstream=synth=h:2"], "names no --target"),
        (["--target=nosuch=h:1"], "no compiled descriptors"),
        (["--target=auth=h:1", "--target=ledger=h:2", "--health-upstream=synth"], "not one of"),
    ],
)
def test_inconsistent_targets_exit_with_one_line(args: list[str], message: str) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kokoro_pay(["envoy-config", "--from-descriptors", *args, "--out=-"])
    assert str(exit_info.value.code).startswith("error: ")
    assert message in str(exit_info.value.code)


def test_a_service_served_twice_is_refused() -> None:
    service = Service("kokoropay.x.v1.X", ("Get",), streaming=False)
    upstreams = [
        Upstream("one", Address("h", 1), (service,)),
        Upstream("two", Address("h", 2), (service,)),
    ]
    with pytest.raises(ConfigError, match="served by both"):
        build_config(
            upstreams,
            listen=Address("0.0.0.0", 8080),
            admin=Address("127.0.0.1", 1),
            tls=EnvoyTls.in_folder("/etc/kokoropay/tls"),
        )


def test_unreachable_target_is_one_clear_error() -> None:
    with pytest.raises(ConfigError, match="nothing answers at 127.0.0.1:9 .* mutual TLS"):
        discover("127.0.0.1:9", identity("operator"), timeout=0.5)


def test_discovery_without_a_certificate_is_one_clear_error(tmp_path: Path) -> None:
    with pytest.raises(SystemExit) as exit_info:
        kokoro_pay(["envoy-config", "--target=auth=127.0.0.1:9", f"--tls-dir={tmp_path}"])
    assert (
        exit_info.value.code == f"error: no certificate in --tls-dir: {tmp_path}/tls.crt is missing"
    )


def test_checked_in_deploy_config_is_current_and_valid(tmp_path: Path) -> None:
    fresh, _ = _generate(tmp_path, *DEPLOY_TARGETS)
    deployed = yaml.safe_load(DEPLOYED.read_text())
    assert deployed == fresh, "deploy/k8s/base/envoy/envoy.yaml is stale: run `make envoy-config`"
    assert DEPLOYED.read_text().startswith("# Generated by `kokoro-pay envoy-config`")
    validate_with_envoy(DEPLOYED)
