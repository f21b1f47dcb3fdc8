"""The optional cert-manager component, and the script that makes the same Secrets without it.

kubernetes-validate has no schema for cert-manager's resources, so the strict validation of
test_manifests.py never sees them: they live in components/cert-manager only, and this checks
their required fields instead, on each overlay rendered with the component added (the way an
operator enables it). It also ties them to the rest: every certificate Secret a pod mounts is
issued, for the identity of the workload that mounts it, and names every host its callers dial.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from services.common.identity import ENVOY_ID, role_of
from services.common.pki import spiffe_id
from tests.deploy.manifests import (
    K8S,
    NAMESPACE,
    OVERLAYS,
    Obj,
    containers,
    named,
    of_kind,
    pod_spec,
    render,
    render_with,
)

COMPONENT = "cert-manager"
CERT_MANAGER = "cert-manager.io/v1"
# Every identity the component issues; servers are dialed, the rest only dial.
SERVERS = {"auth", "ledger", "synth", "predictions", "envoy"}
CLIENTS = {"gateway", "dashboard", "operator"}
# Workloads that act as another's identity: the predictions workers are the PREDICTIONS role too.
IDENTITY_OF = {"predictions-worker": "predictions"}
SCRIPT = K8S / "create-mesh-certificates.sh"


@pytest.fixture(params=OVERLAYS)
def objects(request: pytest.FixtureRequest) -> list[Obj]:
    return render_with(request.param, COMPONENT)


def _issuers(objects: list[Obj]) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in of_kind(objects, "Issuer")}


def _certificates(objects: list[Obj]) -> list[Obj]:
    return [o for o in of_kind(objects, "Certificate") if o["apiVersion"] == CERT_MANAGER]


def _leaves(objects: list[Obj]) -> dict[str, Obj]:
    """Certificate name → Certificate, for every identity (the CA aside)."""
    return {c["metadata"]["name"]: c for c in _certificates(objects) if not c["spec"].get("isCA")}


def _issued(objects: list[Obj]) -> dict[str, Obj]:
    """Secret name → the Certificate that writes it."""
    return {c["spec"]["secretName"]: c for c in _certificates(objects)}


def _mounted_secrets(workload: Obj) -> set[str]:
    spec = pod_spec(workload)
    names = {v["secret"]["secretName"] for v in spec.get("volumes", []) if "secret" in v}
    for volume in spec.get("volumes", []):
        for source in volume.get("projected", {}).get("sources", []):
            if "secret" in source:
                names.add(source["secret"]["name"])
    return names


def test_the_component_holds_cert_manager_resources_only() -> None:
    """Anything else in it would escape the overlays' strict validation."""
    objects = render_with("prod", COMPONENT)
    added = [o for o in objects if o not in render("prod")]
    assert added and all(o["apiVersion"] == CERT_MANAGER for o in added)
    assert {o["kind"] for o in added} == {"Issuer", "Certificate"}
    for obj in added:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]


def test_the_overlays_hold_no_cert_manager_resources() -> None:
    for overlay in OVERLAYS:
        assert not [o for o in render(overlay) if o["apiVersion"].startswith("cert-manager.io")]


def test_a_self_signed_issuer_bootstraps_the_mesh_ca(objects: list[Obj]) -> None:
    issuers = _issuers(objects)
    (ca,) = [c for c in _certificates(objects) if c["spec"].get("isCA")]
    spec = ca["spec"]
    bootstrap = issuers[spec["issuerRef"]["name"]]
    assert spec["issuerRef"]["kind"] == "Issuer"
    assert spec["issuerRef"].get("group", "cert-manager.io") == "cert-manager.io"
    assert bootstrap["spec"] == {"selfSigned": {}}
    assert spec["secretName"] and spec["commonName"]
    # The CA keeps its key across renewals, so the certificates it signed stay valid.
    assert spec["privateKey"]["rotationPolicy"] == "Never"
    signing = [i for i in issuers.values() if "ca" in i["spec"]]
    assert [i["spec"]["ca"]["secretName"] for i in signing] == [spec["secretName"]]


def test_every_identity_has_a_certificate_from_the_mesh_ca(objects: list[Obj]) -> None:
    leaves = _leaves(objects)
    assert set(leaves) == SERVERS | CLIENTS
    (ca_issuer,) = [i for i in _issuers(objects).values() if "ca" in i["spec"]]
    for name, certificate in leaves.items():
        spec = certificate["spec"]
        assert spec["secretName"], name
        assert spec["issuerRef"] == {
            "group": "cert-manager.io",
            "kind": "Issuer",
            "name": ca_issuer["metadata"]["name"],
        }, name
        assert spec["uris"] == [spiffe_id(name)], name
        assert "isCA" not in spec, name
        usages = set(spec["usages"])
        assert "client auth" in usages, name
        assert ("server auth" in usages) == (name in SERVERS), name
        assert (bool(spec.get("dnsNames")) or bool(spec.get("ipAddresses"))) == (name in SERVERS), (
            name
        )
        assert spec["privateKey"]["rotationPolicy"] == "Always", name


def test_the_identities_are_the_roles_the_services_check(objects: list[Obj]) -> None:
    """The URIs are what services/common/identity.py reads as callers."""
    leaves = _leaves(objects)
    assert leaves["envoy"]["spec"]["uris"] == [ENVOY_ID]
    for name in CLIENTS:
        (uri,) = leaves[name]["spec"]["uris"]
        assert role_of(uri) is not None, name


def test_certificates_renew_well_before_they_lapse(objects: list[Obj]) -> None:
    def hours(duration: str) -> float:
        assert duration.endswith("h"), duration
        return float(duration[:-1])

    for certificate in _certificates(objects):
        spec = certificate["spec"]
        assert hours(spec["renewBefore"]) <= hours(spec["duration"]) / 3, spec["secretName"]


def test_every_mounted_certificate_is_issued_for_the_workload_that_mounts_it(
    objects: list[Obj],
) -> None:
    issued = _issued(objects)
    mesh = SERVERS | {"gateway", "dashboard"} | set(IDENTITY_OF)
    for deployment in of_kind(objects, "Deployment"):
        name = deployment["metadata"]["name"]
        mounted = _mounted_secrets(deployment)
        assert mounted <= set(issued), f"{name} mounts {mounted - set(issued)}, issued by nothing"
        identity = IDENTITY_OF.get(name, name)
        for secret in mounted:
            assert issued[secret]["spec"]["uris"] == [spiffe_id(identity)], (name, secret)
        if name in mesh:
            assert mounted, f"{name} mounts no certificate"


def _envoy_config(objects: list[Obj]) -> Obj:
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("envoy-config")
    ]
    config: Obj = yaml.safe_load(config_map["data"]["envoy.yaml"])
    return config


def _dialed_hosts(objects: list[Obj]) -> set[str]:
    """Every in-cluster host a caller of the mesh dials: every workload's upstreams (the
    gateway's, the dashboard's, predictions' and its workers'), and Envoy's."""
    hosts = set()
    for deployment in of_kind(objects, "Deployment"):
        for container in containers(deployment, init=False):
            hosts |= {
                e["value"].rsplit(":", 1)[0]
                for e in container.get("env", [])
                if e["name"].endswith("_ADDRESS") and "value" in e
            }
    config = _envoy_config(objects)
    for cluster in config["static_resources"]["clusters"]:
        if cluster.get("type") != "STRICT_DNS":
            continue
        for group in cluster["load_assignment"]["endpoints"]:
            for endpoint in group["lb_endpoints"]:
                hosts.add(endpoint["endpoint"]["address"]["socket_address"]["address"])
    return hosts


def test_servers_certificates_name_every_host_they_are_dialed_at(objects: list[Obj]) -> None:
    by_identity = {c["spec"]["uris"][0]: c for c in _leaves(objects).values()}
    hosts = _dialed_hosts(objects)
    assert hosts, "no dialed hosts found"
    for host in hosts:
        service_name, namespace, *_ = host.split(".")
        assert namespace == NAMESPACE, host
        service = named(objects, "Service", service_name)
        workload = service["spec"]["selector"]["app.kubernetes.io/name"]
        certificate = by_identity[spiffe_id(workload)]
        assert host in certificate["spec"].get("dnsNames", []), (host, workload)


def test_envoy_expects_the_identities_the_services_are_issued(objects: list[Obj]) -> None:
    """Envoy checks each upstream's URI SAN; it must be the one that service's pods mount."""
    issued = _issued(objects)
    config = _envoy_config(objects)
    for cluster in config["static_resources"]["clusters"]:
        if cluster.get("type") != "STRICT_DNS":
            continue
        context = cluster["transport_socket"]["typed_config"]["common_tls_context"]
        expected = [
            m["matcher"]["exact"]
            for m in context["validation_context"].get("match_typed_subject_alt_names", [])
            if m["san_type"] == "URI"
        ]
        (secret,) = _mounted_secrets(named(objects, "Deployment", cluster["name"]))
        assert expected == issued[secret]["spec"]["uris"], cluster["name"]


# --- the same Secrets without cert-manager ------------------------------------------------

_FAKE_KUBECTL = """
import base64, os, pathlib, shutil, sys
store = pathlib.Path(os.environ["FAKE_SECRETS"])
args = sys.argv[1:]
if args[:1] == ["-n"]:
    args = args[2:]
if args[:2] == ["get", "secret"]:
    folder = store / args[2]
    if not folder.is_dir():
        sys.exit(1)
    if "-o" in args:
        path = args[args.index("-o") + 1].removeprefix("jsonpath={.data.").removesuffix("}")
        data = (folder / path.replace("\\\\.", ".")).read_bytes()
        sys.stdout.write(base64.b64encode(data).decode())
    sys.exit(0)
if args[:2] == ["create", "secret"]:
    kind, name = args[2], args[3]
    folder = store / name
    folder.mkdir()
    (folder / ".type").write_text("kubernetes.io/tls" if kind == "tls" else "Opaque")
    for arg in args[4:]:
        option, _, value = arg.partition("=")
        if option == "--type":
            (folder / ".type").write_text(value)
        elif option == "--from-file":
            key, _, path = value.partition("=")
            shutil.copy(path, folder / key)
        elif option in ("--cert", "--key"):
            shutil.copy(value, folder / ("tls.crt" if option == "--cert" else "tls.key"))
    sys.exit(0)
sys.exit(f"fake kubectl: unexpected {args}")
"""


def _run_script(tmp_path: Path) -> Path:
    """Runs the script against a kubectl that keeps Secrets as folders; returns their root."""
    secrets = tmp_path / "secrets"
    secrets.mkdir(exist_ok=True)
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir(exist_ok=True)
    fake = bin_dir / "kubectl"
    fake.write_text(f"#!{sys.executable}\n{_FAKE_KUBECTL}")
    fake.chmod(fake.stat().st_mode | stat.S_IXUSR)
    environment = {
        **os.environ,
        "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
        "FAKE_SECRETS": str(secrets),
    }
    result = subprocess.run(
        ["bash", str(SCRIPT), NAMESPACE],
        env=environment,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    return secrets


def _certificate(folder: Path, name: str = "tls.crt") -> x509.Certificate:
    return x509.load_pem_x509_certificate((folder / name).read_bytes())


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_script_issues_what_the_component_would(tmp_path: Path) -> None:
    secrets = _run_script(tmp_path)
    ca = _certificate(secrets / "mesh-ca")
    issued = _issued(render_with("prod", COMPONENT))
    made = {p.name for p in secrets.iterdir()} - {"mesh-ca"}
    assert made == {s for s, c in issued.items() if not c["spec"].get("isCA")}
    for secret in made:
        spec = issued[secret]["spec"]
        folder = secrets / secret
        assert (folder / ".type").read_text() == "kubernetes.io/tls"
        assert (folder / "ca.crt").read_bytes() == (secrets / "mesh-ca" / "tls.crt").read_bytes()
        certificate = _certificate(folder)
        certificate.verify_directly_issued_by(ca)
        names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
        assert names.get_values_for_type(x509.UniformResourceIdentifier) == spec["uris"], secret
        assert names.get_values_for_type(x509.DNSName) == spec.get("dnsNames", []), secret
        addresses = [str(a) for a in names.get_values_for_type(x509.IPAddress)]
        assert addresses == spec.get("ipAddresses", []), secret
        usages = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        expected = {ExtendedKeyUsageOID.CLIENT_AUTH}
        if "server auth" in spec["usages"]:
            expected.add(ExtendedKeyUsageOID.SERVER_AUTH)
        assert set(usages) == expected, secret
        assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


@pytest.mark.skipif(shutil.which("openssl") is None, reason="needs openssl")
def test_the_script_keeps_what_exists_and_issues_the_rest_from_the_same_ca(
    tmp_path: Path,
) -> None:
    secrets = _run_script(tmp_path)
    kept = (secrets / "auth-tls" / "tls.crt").read_bytes()
    shutil.rmtree(secrets / "synth-tls")
    _run_script(tmp_path)
    assert (secrets / "auth-tls" / "tls.crt").read_bytes() == kept
    _certificate(secrets / "synth-tls").verify_directly_issued_by(_certificate(secrets / "mesh-ca"))
