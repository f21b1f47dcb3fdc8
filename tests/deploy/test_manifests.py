"""The overlays as rendered: valid Kubernetes, and the rules docs/architecture.md and #5 set.

Everything here reads `kubectl kustomize` output, so it checks what would reach the cluster,
patches included, not the files one by one.
"""

from __future__ import annotations

import ipaddress
import re
from typing import Any
from urllib.parse import urlsplit

import kubernetes_validate
import pytest
import yaml
from google.protobuf.descriptor import ServiceDescriptor
from kokoropay.auth.v1 import auth_pb2
from kokoropay.common.v1 import access_pb2
from kokoropay.ledger.v1 import ledger_pb2
from kokoropay.predictions.v1 import predictions_pb2
from kokoropay.synth.v1 import synth_pb2

from services.common.access import declared_callers
from services.common.mesh import HEALTH_PORTS, PORTS, PREDICTIONS_WORKER_HEALTH_PORT
from services.gateway.settings import GatewaySettings
from services.predictions.settings import PredictionsSettings
from tests.deploy.manifests import (
    NAMESPACE,
    OVERLAYS,
    WORKLOAD_KINDS,
    Obj,
    containers,
    env,
    named,
    of_kind,
    pod_labels,
    pod_spec,
    render,
    selects,
)
from tests.support.paths import REPO_ROOT

# The oldest minor still widely run and the newest the validator knows.
KUBERNETES_VERSIONS = ("1.33.0", kubernetes_validate.utils.latest_version())
# The Secrets the manifests reference; their values are never in the repository.
SECRETS = {
    "auth-database",
    "auth-migration-database",
    "ledger-database",
    "ledger-migration-database",
    "predictions-database",
    "predictions-migration-database",
    "auth-key-hash",
    "predictions-secrets",
    "dashboard-payments",
}
# Those a pod starts without: every reference to them is `optional: true`, every other one is not
# (a missing database URL must stop the pod, not start it unconfigured).
OPTIONAL_SECRETS = {"dashboard-payments"}
# Each member of the mesh mounts its certificate from a Secret (cert-manager's layout), never
# committed either: components/cert-manager issues them, or create-mesh-certificates.sh.
# The predictions workers mount the service's: they act as the same role, PREDICTIONS.
CERTIFICATES = {
    "auth": "auth-tls",
    "ledger": "ledger-tls",
    "synth": "synth-tls",
    "predictions": "predictions-mesh-tls",
    "predictions-worker": "predictions-mesh-tls",
    "gateway": "gateway-mesh-tls",
    "dashboard": "dashboard-mesh-tls",
}
# The predictions workers: the predictions image under another command, with the service's
# settings (PREDICTIONS_*), its certificate and its database role, but no API of their own.
WORKER = "predictions-worker"
WORKER_COMMAND = ["python", "-m", "services.predictions.worker"]


def _prefix(workload: str) -> str:
    """The prefix of a workload's settings: the predictions workers read the service's."""
    return "PREDICTIONS" if workload == WORKER else workload.upper()


# The HTTP workloads browsers and REST clients reach, each through an Ingress of its own, and the
# gRPC Services each dials directly (by the <PREFIX>_<UPSTREAM>_ADDRESS variable's upstream): both
# reach synth through Envoy.
WEB = {
    "gateway": {"AUTH": "auth", "LEDGER": "ledger", "PREDICTIONS": "predictions", "SYNTH": "envoy"},
    "dashboard": {
        "AUTH": "auth",
        "LEDGER": "ledger",
        "PREDICTIONS": "predictions",
        "SYNTH": "envoy",
    },
}
# Who may call each web workload's HTTP port from inside the namespace, besides the ingress
# controller: the dashboard's playground calls the gateway's REST API as a client would.
IN_CLUSTER_HTTP_CALLERS = {"gateway": ["dashboard"], "dashboard": []}
# The one ingress controller whose pods may reach them.
INGRESS_CONTROLLER = {
    "namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "ingress-nginx"}},
    "podSelector": {"matchLabels": {"app.kubernetes.io/name": "ingress-nginx"}},
}
TLS_DIR = "/etc/kokoropay/tls"
GRPC_SERVICES: dict[str, ServiceDescriptor] = {
    "auth": auth_pb2.DESCRIPTOR.services_by_name["AuthService"],
    "ledger": ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"],
    "synth": synth_pb2.DESCRIPTOR.services_by_name["SynthService"],
    "predictions": predictions_pb2.DESCRIPTOR.services_by_name["PredictionService"],
}
GPU = "nvidia.com/gpu"
# The internet, HTTPS only, without the private and link-local ranges (other pods, the nodes,
# the cloud's metadata service): the weights Job's hub downloads and the dashboard's Stripe calls.
PRIVATE_RANGES = {"10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16", "169.254.0.0/16"}
# Customers' webhook URLs, which anyone can point anywhere: besides those, no address a URL could
# name to reach inside the cluster or its network (loopback, "this network", carrier-grade NAT
# that some clusters give pods, benchmarking, multicast and reserved).
WEBHOOK_REFUSED_RANGES = PRIVATE_RANGES | {
    "0.0.0.0/8",
    "100.64.0.0/10",
    "127.0.0.0/8",
    "192.0.0.0/24",
    "198.18.0.0/15",
    "224.0.0.0/4",
    "240.0.0.0/4",
}


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def _workloads(objects: list[Obj]) -> list[Obj]:
    return of_kind(objects, *WORKLOAD_KINDS)


def _long_running(objects: list[Obj]) -> list[Obj]:
    return of_kind(objects, "Deployment", "StatefulSet")


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
def test_every_object_passes_strict_validation(overlay: str, version: str) -> None:
    failures = []
    for obj in render(overlay):
        name = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = ".".join(str(p) for p in error.path)
            failures.append(f"{name}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError:
            failures.append(f"{name}: no schema for {obj['apiVersion']} in {version}")
    assert not failures, "\n".join(failures)


def test_everything_lands_in_the_namespace(overlay: str) -> None:
    for obj in render(overlay):
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == NAMESPACE, obj["metadata"]["name"]
    namespace = named(render(overlay), "Namespace", NAMESPACE)
    assert namespace["metadata"]["labels"]["pod-security.kubernetes.io/enforce"] == "restricted"


def test_long_running_containers_have_probes(overlay: str) -> None:
    for workload in _long_running(render(overlay)):
        for container in containers(workload, init=False):
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert "livenessProbe" in container, where
            assert "readinessProbe" in container, where


def _container_port(container: Obj, name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return int(port)


def test_grpc_services_probe_the_plaintext_health_port(overlay: str) -> None:
    """Kubelet's gRPC probes carry no certificate: they go to the port that serves health alone
    in plaintext, never to the mTLS port, which would refuse them."""
    objects = render(overlay)
    for name in GRPC_SERVICES:
        container = next(containers(named(objects, "Deployment", name), init=False))
        health = _container_port(container, "health")
        assert health == HEALTH_PORTS[name] == int(env(container)[f"{name.upper()}_HEALTH_PORT"])
        assert _container_port(container, "grpc") == PORTS[name] != health
        assert env(container)[f"{name.upper()}_PORT"] == str(PORTS[name])
        for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
            # A gRPC probe takes a port number only, not a name: it must be the health port's.
            assert container[probe]["grpc"]["port"] == health, (name, probe)


def _worker(objects: list[Obj]) -> Obj:
    (container,) = containers(named(objects, "Deployment", WORKER))
    return container


def test_predictions_workers_probe_their_health_port_and_listen_on_nothing_else(
    overlay: str,
) -> None:
    """The workers serve no API: grpc.health.v1 in plaintext on a health port of their own
    (PREDICTIONS_WORKER_HEALTH_PORT, on every interface), which all three probes ask, and their
    metrics port (test_monitoring.py)."""
    objects = render(overlay)
    container = _worker(objects)
    variables = env(container)
    assert [p["name"] for p in container["ports"]] == ["health", "metrics"]
    health = _container_port(container, "health")
    assert (
        health == PREDICTIONS_WORKER_HEALTH_PORT == int(variables["PREDICTIONS_WORKER_HEALTH_PORT"])
    )
    assert variables["PREDICTIONS_HOST"] == "0.0.0.0"
    # Neither the service's port nor its health port: the worker binds neither.
    assert not {"PREDICTIONS_PORT", "PREDICTIONS_HEALTH_PORT"} & set(variables)
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["grpc"]["port"] == health, probe
    # Nothing routes to the workers: no Service selects them.
    labels = pod_labels(named(objects, "Deployment", WORKER))
    for service in of_kind(objects, "Service"):
        assert not selects({"matchLabels": service["spec"].get("selector", {})}, labels), service[
            "metadata"
        ]["name"]


@pytest.mark.parametrize("name", sorted(WEB))
def test_web_services_probe_healthz_and_readyz_on_their_port(overlay: str, name: str) -> None:
    """Liveness asks only whether the process runs; readiness whether its upstreams answer."""
    container = next(containers(named(render(overlay), "Deployment", name), init=False))
    port = _container_port(container, "http")
    assert port == PORTS[name] == int(env(container)[f"{name.upper()}_PORT"])
    # In a container it listens on every interface, or the kubelet and the Service see nothing.
    assert env(container)[f"{name.upper()}_HOST"] == "0.0.0.0"
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}


def test_synth_has_a_startup_probe_long_enough_for_the_model(overlay: str) -> None:
    synth = next(containers(named(render(overlay), "Deployment", "synth"), init=False))
    probe = synth["startupProbe"]
    assert probe["periodSeconds"] * probe["failureThreshold"] >= 300


def test_every_container_has_requests_and_limits(overlay: str) -> None:
    for workload in _workloads(render(overlay)):
        for container in containers(workload):
            where = f"{workload['metadata']['name']}/{container['name']}"
            resources = container.get("resources", {})
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(resources.get(kind, {})), (where, kind)


def test_every_pod_runs_non_root_read_only_without_capabilities(overlay: str) -> None:
    for workload in _workloads(render(overlay)):
        spec = pod_spec(workload)
        name = workload["metadata"]["name"]
        pod_security = spec.get("securityContext", {})
        assert pod_security.get("runAsNonRoot") is True, name
        assert pod_security.get("runAsUser", 1) != 0, name
        assert pod_security.get("seccompProfile", {}).get("type") == "RuntimeDefault", name
        assert spec.get("automountServiceAccountToken") is False, name
        assert "hostNetwork" not in spec and "hostPID" not in spec, name
        for container in containers(workload):
            security = container.get("securityContext", {})
            where = f"{name}/{container['name']}"
            assert security.get("runAsNonRoot", True) is True, where
            assert security.get("readOnlyRootFilesystem") is True, where
            assert security.get("allowPrivilegeEscalation") is False, where
            assert security.get("capabilities", {}).get("drop") == ["ALL"], where
            assert "add" not in security.get("capabilities", {}), where
            assert not security.get("privileged", False), where


def test_service_accounts_never_mount_api_tokens(overlay: str) -> None:
    for account in of_kind(render(overlay), "ServiceAccount"):
        assert account.get("automountServiceAccountToken") is False, account["metadata"]["name"]


def test_a_read_only_root_still_has_a_writable_tmp_and_home(overlay: str) -> None:
    for workload in _workloads(render(overlay)):
        spec = pod_spec(workload)
        empty_dirs = {v["name"] for v in spec.get("volumes", []) if "emptyDir" in v}
        for container in containers(workload, init=False):
            mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
            where = f"{workload['metadata']['name']}/{container['name']}"
            assert mounts.get("/tmp") in empty_dirs, where
            home = env(container).get("HOME")
            if workload["metadata"]["name"] != "postgres":
                assert home == "/tmp", where


def test_prod_synth_runs_on_the_gpu_pool() -> None:
    synth = named(render("prod"), "Deployment", "synth")
    spec = pod_spec(synth)
    container = next(containers(synth, init=False))
    assert container["resources"]["limits"][GPU] == 1
    assert container["resources"]["requests"][GPU] == 1
    assert env(container)["SYNTH_DEVICE"] == "cuda"
    assert spec["nodeSelector"] == {"nvidia.com/gpu.present": "true"}
    assert {"key": GPU, "operator": "Exists", "effect": "NoSchedule"} in spec["tolerations"]


def test_nothing_but_synth_asks_for_or_tolerates_a_gpu() -> None:
    for workload in _workloads(render("prod")):
        if workload["metadata"]["name"] == "synth":
            continue
        spec = pod_spec(workload)
        assert "tolerations" not in spec, workload["metadata"]["name"]
        for container in containers(workload):
            assert GPU not in str(container.get("resources")), workload["metadata"]["name"]


def test_dev_synth_runs_on_cpu() -> None:
    synth = named(render("dev"), "Deployment", "synth")
    spec = pod_spec(synth)
    assert "nodeSelector" not in spec
    assert "tolerations" not in spec
    for container in containers(synth):
        assert GPU not in str(container.get("resources"))
    assert env(next(containers(synth, init=False)))["SYNTH_DEVICE"] == "cpu"


def test_synth_reads_weights_from_the_volume_the_job_fills(overlay: str) -> None:
    objects = render(overlay)
    synth = named(objects, "Deployment", "synth")
    job = named(objects, "Job", "synth-weights")
    claim = named(objects, "PersistentVolumeClaim", "synth-weights")

    def claim_of(workload: Obj) -> str:
        (volume,) = [v for v in pod_spec(workload)["volumes"] if v["name"] == "weights"]
        name: str = volume["persistentVolumeClaim"]["claimName"]
        return name

    assert claim_of(synth) == claim_of(job) == claim["metadata"]["name"]
    container = next(containers(synth, init=False))
    assert env(container)["SYNTH_WEIGHTS_DIR"] == "/weights"
    assert {"mountPath": "/weights", "name": "weights", "readOnly": True} in container[
        "volumeMounts"
    ]
    command = next(containers(job))["command"]
    assert command[:3] == ["python", "-m", "services.synth.weights"]
    assert command[command.index("--cache-dir") + 1] == "/weights"
    modes = claim["spec"]["accessModes"]
    assert modes == (["ReadWriteOnce"] if overlay == "dev" else ["ReadWriteMany"])


def test_termination_grace_outlasts_every_drain(overlay: str) -> None:
    for workload in _long_running(render(overlay)):
        spec = pod_spec(workload)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        for container in containers(workload, init=False):
            drains = [float(v) for k, v in env(container).items() if k.endswith("_GRACE_SECONDS")]
            pre_stop = container.get("lifecycle", {}).get("preStop", {})
            pre_stop_seconds = pre_stop.get("sleep", {}).get("seconds", 0)
            for drain in drains:
                assert grace > drain + pre_stop_seconds, workload["metadata"]["name"]


def test_synth_grace_is_longer_than_its_drain(overlay: str) -> None:
    synth = named(render(overlay), "Deployment", "synth")
    drain = float(env(next(containers(synth, init=False)))["SYNTH_GRACE_SECONDS"])
    assert pod_spec(synth)["terminationGracePeriodSeconds"] > drain


def test_every_deployment_has_a_disruption_budget_that_allows_a_drain(overlay: str) -> None:
    objects = render(overlay)
    budgets = of_kind(objects, "PodDisruptionBudget")
    for deployment in of_kind(objects, "Deployment"):
        covering = [b for b in budgets if selects(b["spec"]["selector"], pod_labels(deployment))]
        assert len(covering) == 1, deployment["metadata"]["name"]
        # minAvailable equal to the replica count would block every node drain.
        assert covering[0]["spec"].get("maxUnavailable", 0) >= 1, deployment["metadata"]["name"]


def _mounted_secrets(workload: Obj) -> set[str]:
    return {
        v["secret"]["secretName"] for v in pod_spec(workload).get("volumes", []) if "secret" in v
    }


def test_secrets_are_referenced_never_committed(overlay: str) -> None:
    objects = render(overlay)
    assert not of_kind(objects, "Secret")
    referenced = {
        source["valueFrom"]["secretKeyRef"]["name"]
        for workload in _workloads(objects)
        for container in containers(workload)
        for source in container.get("env", [])
        if "secretKeyRef" in source.get("valueFrom", {})
    }
    expected = SECRETS | ({"postgres"} if overlay == "dev" else set())
    assert referenced == expected
    mounted = set().union(*(_mounted_secrets(w) for w in _workloads(objects)))
    assert set(CERTIFICATES.values()) <= mounted
    # The Ingresses' public certificates (prod; dev serves plain HTTP).
    public = {
        tls["secretName"]
        for ingress in of_kind(objects, "Ingress")
        for tls in ingress["spec"].get("tls", [])
    }
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    for name in expected | mounted | public:
        assert f"`{name}`" in operations, f"docs/operations.md does not explain Secret {name}"


def _secret_key_refs(objects: list[Obj]) -> list[tuple[str, str, Obj]]:
    """(workload, variable, secretKeyRef) for every variable read from a Secret."""
    return [
        (workload["metadata"]["name"], source["name"], ref)
        for workload in _workloads(objects)
        for container in containers(workload)
        for source in container.get("env", [])
        if (ref := source.get("valueFrom", {}).get("secretKeyRef"))
    ]


def test_only_the_payments_secret_is_optional(overlay: str) -> None:
    """Without `dashboard-payments` the dashboard starts and its billing page sends customers to
    the operator; without any other Secret the pod must not start (CreateContainerConfigError)."""
    refs = _secret_key_refs(render(overlay))
    for workload, variable, ref in refs:
        optional = ref.get("optional", False)
        assert optional is (ref["name"] in OPTIONAL_SECRETS), (workload, variable)
    payments = {
        (workload, variable): ref["key"]
        for workload, variable, ref in refs
        if ref["name"] == "dashboard-payments"
    }
    assert payments == {
        ("dashboard", "DASHBOARD_STRIPE_SECRET_KEY"): "stripe-secret-key",
        ("dashboard", "DASHBOARD_STRIPE_WEBHOOK_SECRET"): "stripe-webhook-secret",
    }
    # No value in the repository turns payments on: not a placeholder either.
    variables = _dashboard_env(render(overlay))
    assert not {name for name in variables if name.startswith("DASHBOARD_STRIPE_")}


@pytest.mark.parametrize("service", sorted(CERTIFICATES))
def test_each_member_of_the_mesh_mounts_its_certificate_read_only(
    overlay: str, service: str
) -> None:
    deployment = named(render(overlay), "Deployment", service)
    (volume,) = [v for v in pod_spec(deployment)["volumes"] if "secret" in v]
    assert volume["secret"]["secretName"] == CERTIFICATES[service]
    # Group-readable only: the pod's fsGroup is the one group that may read the key.
    assert volume["secret"]["defaultMode"] == 0o440
    assert pod_spec(deployment)["securityContext"]["fsGroup"] == 10001
    container = next(containers(deployment, init=False))
    assert {"name": volume["name"], "mountPath": TLS_DIR, "readOnly": True} in container[
        "volumeMounts"
    ]
    assert env(container)[f"{_prefix(service)}_TLS_DIR"] == TLS_DIR


def test_no_operator_token_is_left(overlay: str) -> None:
    """The operator proves itself with its certificate; the token and its Secret are gone."""
    rendered = yaml.safe_dump_all(render(overlay))
    assert "OPERATOR_TOKEN" not in rendered and "operator-token" not in rendered


def _secret_refs(container: Obj) -> dict[str, tuple[str, str]]:
    """Variable -> (Secret, key), for the variables a container reads from Secrets."""
    return {
        source["name"]: (ref["name"], ref["key"])
        for source in container.get("env", [])
        if (ref := source.get("valueFrom", {}).get("secretKeyRef"))
    }


@pytest.mark.parametrize("service", ["auth", "ledger", "predictions"])
def test_auth_ledger_and_predictions_migrate_as_the_owner_and_serve_as_their_own_role(
    overlay: str, service: str
) -> None:
    """Two URLs from two Secrets: the owner's for migrations (and grants), the serving role's."""
    deployment = named(render(overlay), "Deployment", service)
    refs = _secret_refs(next(containers(deployment, init=False)))
    assert refs["DATABASE_URL"] == (f"{service}-database", "DATABASE_URL")
    assert refs[f"{service.upper()}_MIGRATION_DATABASE_URL"] == (
        f"{service}-migration-database",
        "MIGRATION_DATABASE_URL",
    )


def test_predictions_workers_use_the_services_database_urls(overlay: str) -> None:
    """The workers open the schema as the service does (services/predictions/store.py: migrate
    as the owner, serve as predictions' own role), from the same two Secrets."""
    objects = render(overlay)
    worker = _secret_refs(_worker(objects))
    service = _secret_refs(_predictions(objects))
    for variable in ("DATABASE_URL", "PREDICTIONS_MIGRATION_DATABASE_URL"):
        assert worker[variable] == service[variable], variable


# --- the network: deny-all, then one allow per arrow of docs/architecture.md ----------------


def _policies(objects: list[Obj]) -> list[Obj]:
    return of_kind(objects, "NetworkPolicy")


def test_a_default_deny_covers_every_pod_both_ways(overlay: str) -> None:
    deny = [
        p
        for p in _policies(render(overlay))
        if p["spec"]["podSelector"] == {}
        and set(p["spec"]["policyTypes"]) == {"Ingress", "Egress"}
        and not p["spec"].get("ingress")
        and not p["spec"].get("egress")
    ]
    assert len(deny) == 1


def test_every_pod_has_its_own_policy(overlay: str) -> None:
    objects = render(overlay)
    specific = [p for p in _policies(objects) if p["spec"]["podSelector"] != {}]
    for workload in _workloads(objects):
        labels = pod_labels(workload)
        assert any(selects(p["spec"]["podSelector"], labels) for p in specific), workload[
            "metadata"
        ]["name"]


def _ingress_sources(objects: list[Obj], name: str) -> list[tuple[Obj, list[int]]]:
    """(peer, ports) pairs that may open connections to the workload `name`."""
    labels = pod_labels(named(objects, _kind_of(objects, name), name))
    sources = []
    for policy in _policies(objects):
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("ingress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            for peer in rule["from"]:
                sources.append((peer, ports))
    return sources


# Prometheus's namespace, admitted to every metrics port by policies/metrics-scrape.yaml (and to
# Envoy's stats port by its own policy): test_monitoring.py checks it reaches nothing else.
SCRAPER = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}


def _callers(objects: list[Obj], name: str) -> list[tuple[Obj, list[int]]]:
    """The workload's ingress sources but Prometheus' scrape: who may call it."""
    return [(peer, ports) for peer, ports in _ingress_sources(objects, name) if peer != SCRAPER]


def _kind_of(objects: list[Obj], name: str) -> str:
    for workload in _workloads(objects):
        if workload["metadata"]["name"] == name:
            kind: str = workload["kind"]
            return kind
    raise AssertionError(f"no workload {name}")


def _pod(name: str) -> Obj:
    """The peer that names this namespace's pods of one workload."""
    return {"podSelector": {"matchLabels": {"app.kubernetes.io/name": name}}}


def _peer_is_pod(peer: Obj, name: str) -> bool:
    return "namespaceSelector" not in peer and peer.get("podSelector", {}).get("matchLabels") == {
        "app.kubernetes.io/name": name
    }


def test_no_ingress_rule_admits_everyone(overlay: str) -> None:
    for policy in _policies(render(overlay)):
        for rule in policy["spec"].get("ingress", []):
            assert rule.get("from"), f"{policy['metadata']['name']} admits any source"
            assert rule.get("ports"), f"{policy['metadata']['name']} admits any port"
            assert not any("ipBlock" in peer for peer in rule["from"])


def _hosts(ingress: Obj) -> list[str]:
    return [rule["host"] for rule in ingress["spec"]["rules"]]


def test_only_the_web_services_are_exposed_each_through_its_own_ingress(overlay: str) -> None:
    """The gateway and the dashboard, each at a host of its own, admitting the ingress
    controller's pods alone, on their HTTP port."""
    objects = render(overlay)
    for service in of_kind(objects, "Service"):
        assert service["spec"].get("type", "ClusterIP") == "ClusterIP", service["metadata"]
    ingresses = {i["metadata"]["name"]: i for i in of_kind(objects, "Ingress")}
    assert set(ingresses) == set(WEB)
    for name, ingress in ingresses.items():
        backends = [
            path["backend"]["service"]
            for rule in ingress["spec"]["rules"]
            for path in rule["http"]["paths"]
        ]
        assert backends and all(b == {"name": name, "port": {"name": "http"}} for b in backends)
        assert "defaultBackend" not in ingress["spec"]
        service = named(objects, "Service", name)
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": name}
        (port,) = service["spec"]["ports"]
        assert port["name"] == port["targetPort"] == "http"
        in_cluster = [_pod(caller) for caller in IN_CLUSTER_HTTP_CALLERS[name]]
        assert _callers(objects, name) == [
            (peer, [PORTS[name]]) for peer in [INGRESS_CONTROLLER, *in_cluster]
        ]
    hosts = [host for ingress in ingresses.values() for host in _hosts(ingress)]
    assert len(hosts) == len(set(hosts)), "one host each: the dashboard's cookie stays its own"


def _selects_namespaces_by_name_only(selector: Obj) -> bool:
    """Whether a namespaceSelector names its namespaces: kubernetes.io/metadata.name is set by
    the API server from the name, so no one can put a namespace in by labelling it."""
    name = "kubernetes.io/metadata.name"
    labels = selector.get("matchLabels", {})
    expressions = selector.get("matchExpressions", [])
    return (
        bool(labels or expressions)
        and set(labels) <= {name}
        and all(e["key"] == name and e["operator"] == "In" for e in expressions)
    )


def test_no_policy_admits_pods_of_any_namespace_by_their_own_labels(overlay: str) -> None:
    """A pod's labels are its creator's choice: `namespaceSelector: {}` with a podSelector would
    let any workload of the cluster in by choosing that label. Namespaces are named instead."""
    for policy in _policies(render(overlay)):
        rules = policy["spec"].get("ingress", []) + policy["spec"].get("egress", [])
        for rule in rules:
            for peer in rule.get("from", []) + rule.get("to", []):
                if "namespaceSelector" in peer:
                    assert _selects_namespaces_by_name_only(peer["namespaceSelector"]), (
                        policy["metadata"]["name"],
                        peer,
                    )


def _dials(objects: list[Obj], workload: str) -> set[str]:
    """The Services a workload dials directly (the gateway reaches synth through Envoy)."""
    variables = env(next(containers(named(objects, "Deployment", workload), init=False)))
    return {value.split(".", 1)[0] for key, value in variables.items() if key.endswith("_ADDRESS")}


# The role each direct caller's certificate carries (its SPIFFE id names it).
DIRECT_CALLERS = {
    "gateway": access_pb2.GATEWAY,
    "dashboard": access_pb2.DASHBOARD,
    "predictions": access_pb2.PREDICTIONS,
    WORKER: access_pb2.PREDICTIONS,
}


def test_each_grpc_service_admits_only_the_workloads_that_call_it(overlay: str) -> None:
    """Pods of this namespace, by name, on the mTLS port: the gateway, the dashboard,
    predictions and its workers where they dial the service directly (and it declares their role
    a caller), and Envoy where it routes to it."""
    objects = render(overlay)
    dials = {caller: _dials(objects, caller) for caller in DIRECT_CALLERS}
    dials["envoy"] = {c["name"] for c in _envoy_config(objects)["static_resources"]["clusters"]}
    for name, service in GRPC_SERVICES.items():
        declared = set().union(*(declared_callers(m) for m in service.methods))
        expected = {caller for caller, dialed in dials.items() if name in dialed}
        for caller, role in DIRECT_CALLERS.items():
            if caller in expected:
                assert role in declared, f"the {caller} dials {name}, which refuses it"
        admitted = set()
        for peer, ports in _callers(objects, name):
            assert ports == [PORTS[name]], (name, ports)
            callers = [c for c in dials if _peer_is_pod(peer, c)]
            assert callers, (name, peer)
            admitted.update(callers)
        assert admitted == expected, name


def test_the_dashboard_reaches_its_upstreams_and_nothing_else(overlay: str) -> None:
    """Its egress, exactly, and the other side of each arrow: auth, ledger and predictions admit
    it on their mTLS ports; Envoy on its gRPC port (the playground's synth calls), synth itself
    not at all; the gateway on its pods' HTTP port (the playground's REST calls); and Stripe's
    API, HTTPS to public addresses only."""
    objects = render(overlay)
    allowed = _without_dns(_egress(objects, "dashboard"))
    assert allowed == [
        (_pod("auth"), [PORTS["auth"]]),
        (_pod("ledger"), [PORTS["ledger"]]),
        (_pod("predictions"), [PORTS["predictions"]]),
        (_pod("envoy"), [8080]),
        (_pod("gateway"), [PORTS["gateway"]]),
        (_public_internet(allowed), [443]),
    ]
    assert any(ports == [53, 53] for _, ports in _egress(objects, "dashboard"))
    for name in ("auth", "ledger", "predictions"):
        assert (_pod("dashboard"), [PORTS[name]]) in _ingress_sources(objects, name), name
    assert (_pod("dashboard"), [8080]) in _ingress_sources(objects, "envoy")
    assert (_pod("dashboard"), [PORTS["gateway"]]) in _ingress_sources(objects, "gateway")
    admitted = _ingress_sources(objects, "synth")
    assert not any(_peer_is_pod(peer, "dashboard") for peer, _ in admitted)


def _public_internet(
    allowed: list[tuple[Obj, list[int]]], refused: set[str] = PRIVATE_RANGES
) -> Obj:
    """The one ipBlock peer among these, checked to be the internet without private ranges
    (each of `refused` inside one of its exceptions)."""
    (peer,) = [peer for peer, _ in allowed if "ipBlock" in peer]
    assert set(peer) == {"ipBlock"}
    assert peer["ipBlock"]["cidr"] == "0.0.0.0/0"
    excepted = [ipaddress.ip_network(cidr) for cidr in peer["ipBlock"]["except"]]
    for cidr in refused:
        network = ipaddress.ip_network(cidr)
        assert any(network.subnet_of(block) for block in excepted), f"{cidr} is reachable"
    return peer


def test_the_dashboard_reaches_synth_where_the_gateway_does(overlay: str) -> None:
    """Through Envoy, which forwards the dashboard's identity: synth must declare DASHBOARD on
    what the playground calls (ListVoices, and Synthesize for previews)."""
    objects = render(overlay)
    dashboard = _dashboard_env(objects)
    gateway = _gateway_env(objects)
    assert dashboard["DASHBOARD_SYNTH_ADDRESS"] == gateway["GATEWAY_SYNTH_ADDRESS"]
    assert dashboard["DASHBOARD_SYNTH_ADDRESS"] == f"envoy.{NAMESPACE}.svc.cluster.local:8080"
    synth = GRPC_SERVICES["synth"]
    for method in ("ListVoices", "Synthesize"):
        assert access_pb2.DASHBOARD in declared_callers(synth.methods_by_name[method]), method


def test_the_dashboard_calls_the_gateways_service_in_plain_http(overlay: str) -> None:
    """DASHBOARD_GATEWAY_URL is the gateway's Service inside the cluster, on a port the Service
    publishes, whose pods' port the gateway's policy admits the dashboard to."""
    objects = render(overlay)
    url = urlsplit(_dashboard_env(objects)["DASHBOARD_GATEWAY_URL"])
    assert url.scheme == "http"
    assert url.hostname == f"gateway.{NAMESPACE}.svc.cluster.local"
    assert url.path in ("", "/") and not url.query and not url.fragment
    assert url.username is None and url.password is None
    service = named(objects, "Service", "gateway")
    (port,) = [p for p in service["spec"]["ports"] if p["port"] == (url.port or 80)]
    container = next(containers(named(objects, "Deployment", "gateway"), init=False))
    pod_port = _container_port(container, port["targetPort"])
    assert pod_port == PORTS["gateway"]
    assert (_pod("dashboard"), [pod_port]) in _ingress_sources(objects, "gateway")
    assert (_pod("gateway"), [pod_port]) in _egress(objects, "dashboard")


def test_no_policy_admits_a_pod_to_a_health_port(overlay: str) -> None:
    """The plaintext health ports are for kubelet's probes, from the node, not for pods."""
    health_ports = set(HEALTH_PORTS.values()) | {PREDICTIONS_WORKER_HEALTH_PORT}
    for policy in _policies(render(overlay)):
        for rule in policy["spec"].get("ingress", []):
            ports = {p["port"] for p in rule.get("ports", [])}
            assert not ports & health_ports, policy["metadata"]["name"]


def test_envoy_admits_its_callers_internal_clients_and_the_scraper(overlay: str) -> None:
    sources = _ingress_sources(render(overlay), "envoy")
    assert {tuple(ports) for _, ports in sources} == {(8080,), (9902,)}
    grpc_peers = [peer for peer, ports in sources if ports == [8080]]
    # This namespace's callers: the web services, predictions and its workers (synth, as the
    # gateway reaches it).
    local = [peer for peer in grpc_peers if "namespaceSelector" not in peer]
    assert local == [_pod("gateway"), _pod("dashboard"), _pod("predictions"), _pod(WORKER)]
    # Internal callers: opted-in pods of the namespaces listed by name, none of them this one.
    (internal,) = [peer for peer in grpc_peers if peer not in local]
    assert internal["podSelector"] == {"matchLabels": {"kokoropay.io/grpc-client": "true"}}
    (names,) = internal["namespaceSelector"]["matchExpressions"]
    assert names["key"] == "kubernetes.io/metadata.name" and names["operator"] == "In"
    assert names["values"] and NAMESPACE not in names["values"]
    ops_peers = [peer for peer, ports in sources if ports == [9902]]
    assert ops_peers == [
        {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
    ]


def _egress(objects: list[Obj], name: str) -> list[tuple[Obj, list[int]]]:
    labels = pod_labels(named(objects, _kind_of(objects, name), name))
    allowed = []
    for policy in _policies(objects):
        if not selects(policy["spec"]["podSelector"], labels):
            continue
        for rule in policy["spec"].get("egress", []):
            ports = [p["port"] for p in rule.get("ports", [])]
            for peer in rule.get("to", [{}]):
                allowed.append((peer, ports))
    return allowed


def _without_dns(allowed: list[tuple[Obj, list[int]]]) -> list[tuple[Obj, list[int]]]:
    return [(peer, ports) for peer, ports in allowed if ports != [53, 53]]


def test_every_pod_may_resolve_names(overlay: str) -> None:
    objects = render(overlay)
    for workload in _workloads(objects):
        allowed = _egress(objects, workload["metadata"]["name"])
        assert any(ports == [53, 53] for _, ports in allowed), workload["metadata"]["name"]


def test_egress_follows_the_design_arrows(overlay: str) -> None:
    objects = render(overlay)

    def pods(allowed: list[tuple[Obj, list[int]]]) -> set[tuple[str, int]]:
        result: set[tuple[str, int]] = set()
        for peer, ports in allowed:
            if "ipBlock" in peer:  # the dashboard's Stripe calls, the webhooks: checked below
                continue
            assert set(peer) == {"podSelector"}, peer
            (name,) = peer["podSelector"]["matchLabels"].values()
            result.update((name, port) for port in ports)
        return result

    gateway = _without_dns(_egress(objects, "gateway"))
    assert not any("ipBlock" in peer for peer, _ in gateway)
    assert pods(gateway) == {
        ("auth", 50051),
        ("ledger", 50052),
        ("predictions", 50054),
        ("envoy", 8080),
    }
    dashboard = _without_dns(_egress(objects, "dashboard"))
    assert pods(dashboard) == {
        ("auth", 50051),
        ("ledger", 50052),
        ("predictions", 50054),
        ("envoy", 8080),
        ("gateway", 8000),
    }
    _public_internet(dashboard)
    envoy = _without_dns(_egress(objects, "envoy"))
    assert not any("ipBlock" in peer for peer, _ in envoy)
    assert pods(envoy) == {
        ("auth", 50051),
        ("ledger", 50052),
        ("predictions", 50054),
        ("synth", 50053),
    }
    assert _without_dns(_egress(objects, "synth")) == []
    # predictions: the ledger and synth's voices (and PostgreSQL, below); synthesis and webhooks
    # are the workers'.
    predictions = [p for p in _without_dns(_egress(objects, "predictions")) if p[1] != [5432]]
    assert not any("ipBlock" in peer for peer, _ in predictions)
    assert pods(predictions) == {("ledger", 50052), ("envoy", 8080)}
    worker = [p for p in _without_dns(_egress(objects, WORKER)) if p[1] != [5432]]
    assert pods(worker) == {("ledger", 50052), ("envoy", 8080)}
    _public_internet(worker, WEBHOOK_REFUSED_RANGES)


def test_auth_and_ledger_reach_postgres_and_nothing_else(overlay: str) -> None:
    objects = render(overlay)
    for name in ("auth", "ledger"):
        allowed = _without_dns(_egress(objects, name))
        assert [ports for _, ports in allowed] == [[5432]], name
    for name in ("auth", "ledger", "predictions", WORKER):
        database = [peer for peer, ports in _egress(objects, name) if ports == [5432]]
        (peer,) = database
        if overlay == "dev":
            assert peer == {"podSelector": {"matchLabels": {"app.kubernetes.io/name": "postgres"}}}
        else:
            cidr = peer["ipBlock"]["cidr"]
            assert re.fullmatch(r"\d+\.\d+\.\d+\.\d+/\d+", cidr) and cidr != "0.0.0.0/0"


def test_predictions_reaches_its_upstreams_and_nothing_else(overlay: str) -> None:
    """Its egress, exactly, and the other side of each arrow: Reserve and Release with the
    ledger, synth's voice list through Envoy (synth itself does not admit it), its schema."""
    objects = render(overlay)
    allowed = _without_dns(_egress(objects, "predictions"))
    assert [(peer, ports) for peer, ports in allowed if ports != [5432]] == [
        (_pod("ledger"), [PORTS["ledger"]]),
        (_pod("envoy"), [8080]),
    ]
    assert [ports for _, ports in allowed].count([5432]) == 1
    assert (_pod("predictions"), [PORTS["ledger"]]) in _ingress_sources(objects, "ledger")
    assert (_pod("predictions"), [8080]) in _ingress_sources(objects, "envoy")
    assert not any(
        _peer_is_pod(peer, "predictions") for peer, _ in _ingress_sources(objects, "synth")
    )
    for method in ("Reserve", "Release"):
        declared = declared_callers(GRPC_SERVICES["ledger"].methods_by_name[method])
        assert access_pb2.PREDICTIONS in declared, method
    synth = GRPC_SERVICES["synth"]
    assert access_pb2.PREDICTIONS in declared_callers(synth.methods_by_name["ListVoices"])


def test_predictions_workers_reach_their_upstreams_and_public_webhooks_only(
    overlay: str,
) -> None:
    """Their egress, exactly, and the other side of each arrow: the ledger (Capture, Release),
    synth through Envoy (which admits them on its gRPC port; synth itself does not), PostgreSQL,
    and customers' webhooks over HTTP and HTTPS to public addresses only. Nothing calls them."""
    objects = render(overlay)
    allowed = _without_dns(_egress(objects, WORKER))
    upstreams = [(peer, ports) for peer, ports in allowed if ports != [5432]]
    assert upstreams == [
        (_pod("ledger"), [PORTS["ledger"]]),
        (_pod("envoy"), [8080]),
        (_public_internet(upstreams, WEBHOOK_REFUSED_RANGES), [80, 443]),
    ]
    assert [ports for _, ports in allowed].count([5432]) == 1
    assert any(ports == [53, 53] for _, ports in _egress(objects, WORKER))
    assert (_pod(WORKER), [PORTS["ledger"]]) in _ingress_sources(objects, "ledger")
    assert (_pod(WORKER), [8080]) in _ingress_sources(objects, "envoy")
    assert not any(_peer_is_pod(peer, WORKER) for peer, _ in _ingress_sources(objects, "synth"))
    assert _callers(objects, WORKER) == []
    # The role they call as, through Envoy's forwarded identity and directly.
    synth = GRPC_SERVICES["synth"]
    assert access_pb2.PREDICTIONS in declared_callers(synth.methods_by_name["Synthesize"])
    for method in ("Capture", "Release"):
        declared = declared_callers(GRPC_SERVICES["ledger"].methods_by_name[method])
        assert access_pb2.PREDICTIONS in declared, method


def test_dev_postgres_admits_only_the_database_clients() -> None:
    objects = render("dev")
    sources = _ingress_sources(objects, "postgres")
    assert sources == [
        ({"podSelector": {"matchLabels": {"kokoropay.io/database-client": "true"}}}, [5432])
    ]
    clients = [
        w["metadata"]["name"]
        for w in _workloads(objects)
        if pod_labels(w).get("kokoropay.io/database-client") == "true"
    ]
    assert sorted(clients) == ["auth", "ledger", "predictions", WORKER]
    assert _without_dns(_egress(objects, "postgres")) == []
    assert not of_kind(render("prod"), "StatefulSet")


def test_only_the_weights_job_the_dashboard_and_the_webhooks_leave_the_cluster(
    overlay: str,
) -> None:
    """The weights Job for the model hub, the dashboard for Stripe's API: HTTPS to public
    addresses; the predictions workers for customers' webhooks: HTTP and HTTPS to public
    addresses; nothing else (the database clients reach the database's private range)."""
    objects = render(overlay)
    for workload in _workloads(objects):
        name = workload["metadata"]["name"]
        allowed = _egress(objects, name)
        external = [(peer, ports) for peer, ports in allowed if "ipBlock" in peer]
        if name in ("synth-weights", "dashboard"):
            assert external == [(_public_internet(allowed), [443])], name
        elif name == WORKER:
            webhooks = [(peer, ports) for peer, ports in external if ports != [5432]]
            assert webhooks == [(_public_internet(webhooks, WEBHOOK_REFUSED_RANGES), [80, 443])]
        elif name not in ("auth", "ledger", "predictions"):
            assert external == [], name


# --- Envoy and the Services it balances over ------------------------------------------------


def _envoy_config(objects: list[Obj]) -> Obj:
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("envoy-config")
    ]
    config: Obj = yaml.safe_load(config_map["data"]["envoy.yaml"])
    return config


def test_envoy_mounts_the_generated_config(overlay: str) -> None:
    objects = render(overlay)
    envoy = named(objects, "Deployment", "envoy")
    (volume,) = [v for v in pod_spec(envoy)["volumes"] if v["name"] == "config"]
    config_map = volume["configMap"]["name"]
    # The generator's hash suffix: a changed config rolls the pods.
    assert re.fullmatch(r"envoy-config-[a-z0-9]{10}", config_map)
    assert named(objects, "ConfigMap", config_map)
    args = next(containers(envoy, init=False))["args"]
    assert args[args.index("--config-path") + 1] == "/etc/envoy/envoy.yaml"


def test_envoy_clusters_resolve_headless_services_of_the_right_pods(overlay: str) -> None:
    objects = render(overlay)
    config = _envoy_config(objects)
    upstreams = [c for c in config["static_resources"]["clusters"] if c["type"] == "STRICT_DNS"]
    assert {c["name"] for c in upstreams} == {"auth", "ledger", "predictions", "synth"}
    for cluster in upstreams:
        (endpoint,) = cluster["load_assignment"]["endpoints"][0]["lb_endpoints"]
        address = endpoint["endpoint"]["address"]["socket_address"]
        service_name, namespace, *_ = address["address"].split(".")
        assert namespace == NAMESPACE
        service = named(objects, "Service", service_name)
        assert service["spec"]["clusterIP"] == "None", service_name
        assert service["spec"]["selector"] == {"app.kubernetes.io/name": cluster["name"]}
        (port,) = [p for p in service["spec"]["ports"] if p["port"] == address["port_value"]]
        container = next(containers(named(objects, "Deployment", cluster["name"]), init=False))
        assert port["targetPort"] in {p["name"] for p in container["ports"]}
        assert {"containerPort": address["port_value"]}.items() <= next(
            p for p in container["ports"] if p["name"] == port["targetPort"]
        ).items()


@pytest.mark.parametrize("name", sorted(WEB))
def test_web_services_dial_services_that_exist(overlay: str, name: str) -> None:
    objects = render(overlay)
    variables = env(next(containers(named(objects, "Deployment", name), init=False)))
    addresses = {
        k for k in variables if k.startswith(f"{name.upper()}_") and k.endswith("_ADDRESS")
    }
    assert addresses == {f"{name.upper()}_{upstream}_ADDRESS" for upstream in WEB[name]}
    for upstream, service_name in WEB[name].items():
        host, port = variables[f"{name.upper()}_{upstream}_ADDRESS"].rsplit(":", 1)
        assert host == f"{service_name}.{NAMESPACE}.svc.cluster.local"
        service = named(objects, "Service", service_name)
        assert service["spec"].get("clusterIP") != "None"
        assert int(port) in {p["port"] for p in service["spec"]["ports"]}


def test_envoy_answers_health_checks_with_synth(overlay: str) -> None:
    # The gateway's /readyz checks "synth" through Envoy, so health must route to synth.
    config = _envoy_config(render(overlay))
    listener = config["static_resources"]["listeners"][0]
    manager = listener["filter_chains"][0]["filters"][0]["typed_config"]
    routes = manager["route_config"]["virtual_hosts"][0]["routes"]
    health = [r for r in routes if r["match"].get("prefix") == "/grpc.health.v1.Health/"]
    assert [r["route"]["cluster"] for r in health] == ["synth"]


# --- scaling -----------------------------------------------------------------------------


def test_prod_autoscales_web_services_on_cpu_synth_on_streams_and_workers_on_the_queue() -> None:
    objects = render("prod")
    autoscalers = {h["metadata"]["name"]: h for h in of_kind(objects, "HorizontalPodAutoscaler")}
    assert set(autoscalers) == {"gateway", "dashboard", "envoy", "synth", WORKER}
    for name, hpa in autoscalers.items():
        assert hpa["spec"]["scaleTargetRef"] == {
            "apiVersion": "apps/v1",
            "kind": "Deployment",
            "name": name,
        }
        assert hpa["spec"]["minReplicas"] >= 2
        # The HPA owns the count; a count in the Deployment would fight it at every apply.
        assert "replicas" not in named(objects, "Deployment", name)["spec"]
    for name in WEB:
        (metric,) = autoscalers[name]["spec"]["metrics"]
        assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu", name
    queue, cpu = autoscalers[WORKER]["spec"]["metrics"]
    assert queue["external"]["metric"]["name"] == "kokoropay_predictions_runnable_jobs"
    assert queue["external"]["target"]["type"] == "AverageValue"
    assert cpu["type"] == "Resource" and cpu["resource"]["name"] == "cpu"
    # The predictions service itself has a fixed count, like auth and ledger.
    assert "predictions" not in autoscalers
    (synth_metric,) = autoscalers["synth"]["spec"]["metrics"]
    assert synth_metric["type"] == "External"
    assert synth_metric["external"]["metric"]["name"] == "envoy_cluster_upstream_rq_active"
    assert synth_metric["external"]["target"]["type"] == "AverageValue"
    # Envoy's stats must be scrapeable for that metric to exist.
    annotations = named(objects, "Deployment", "envoy")["spec"]["template"]["metadata"][
        "annotations"
    ]
    assert annotations["prometheus.io/port"] == "9902"


def test_synths_autoscaler_targets_its_slots_per_pod() -> None:
    """The target is in-flight streams per synth pod, the streams it speaks at once: its model
    workers times the streams each batched call takes (batching is on, on CUDA): a pod is added
    as they fill (docs/operations.md, "Scaling"). Changing one without the other would add GPUs
    early or let callers queue."""
    objects = render("prod")
    (metric,) = named(objects, "HorizontalPodAutoscaler", "synth")["spec"]["metrics"]
    synth = env(next(containers(named(objects, "Deployment", "synth"), init=False)))
    assert synth["SYNTH_DEVICE"] == "cuda" and synth.get("SYNTH_BATCHING", "auto") != "off"
    target = float(metric["external"]["target"]["averageValue"])
    assert target == float(synth["SYNTH_MAX_CONCURRENT"]) * float(synth["SYNTH_BATCH_MAX_STREAMS"])


def test_the_workers_autoscaler_wants_a_worker_slot_for_every_runnable_job() -> None:
    """Runnable jobs per worker pod at the jobs one worker runs at once: as many workers as
    would run every job due now (docs/operations.md, "Scaling the workers"). The count must be
    scraped for the adapter to read it, on the port the workers serve it on."""
    objects = render("prod")
    queue, _ = named(objects, "HorizontalPodAutoscaler", WORKER)["spec"]["metrics"]
    deployment = named(objects, "Deployment", WORKER)
    worker = env(next(containers(deployment, init=False)))
    default = PredictionsSettings.model_fields["worker_concurrency"].default
    concurrency = worker.get("PREDICTIONS_WORKER_CONCURRENCY", str(default))
    assert float(queue["external"]["target"]["averageValue"]) == float(concurrency)
    annotations = deployment["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == worker["PREDICTIONS_WORKER_METRICS_PORT"]


def test_dev_runs_one_of_each_without_autoscaling() -> None:
    objects = render("dev")
    assert not of_kind(objects, "HorizontalPodAutoscaler")
    for workload in _long_running(objects):
        assert workload["spec"]["replicas"] == 1, workload["metadata"]["name"]


def test_prod_runs_several_of_each() -> None:
    objects = render("prod")
    for name in ("auth", "ledger", "predictions"):
        assert named(objects, "Deployment", name)["spec"]["replicas"] >= 2


def test_prod_images_come_from_a_registry_at_a_fixed_version() -> None:
    for workload in _workloads(render("prod")):
        for container in containers(workload):
            image = container["image"]
            name, _, tag = image.rpartition(":")
            assert "/" in name.split("/", 1)[-1] or "." in name.split("/")[0], image
            assert tag and tag != "latest", image


def test_inline_python_in_pods_compiles(overlay: str) -> None:
    # The weights wait and Envoy's drain hook are `python -c` scripts inside YAML.
    scripts = []
    for workload in _workloads(render(overlay)):
        for container in containers(workload):
            hook = container.get("lifecycle", {}).get("preStop", {}).get("exec", {})
            for command in (container.get("command", []), hook.get("command", [])):
                if command[:2] == ["python", "-c"]:
                    scripts.append((workload["metadata"]["name"], command[2]))
    assert len(scripts) == 2
    for name, script in scripts:
        compile(script, name, "exec")


def _bytes(size: str) -> int:
    """An nginx size (`1m`, `512k`, `4096`) in bytes."""
    units = {"k": 1024, "m": 1024**2, "g": 1024**3}
    suffix = size[-1].lower()
    return int(size[:-1]) * units[suffix] if suffix in units else int(size)


def test_the_ingress_admits_every_body_the_gateway_answers_itself(overlay: str) -> None:
    # Over the gateway's cap the client gets the gateway's 413 JSON; the proxy's own 413 (an
    # HTML page) must never come first.
    objects = render(overlay)
    ingress = named(objects, "Ingress", "gateway")
    proxy_limit = _bytes(
        ingress["metadata"]["annotations"]["nginx.ingress.kubernetes.io/proxy-body-size"]
    )
    (gateway,) = containers(named(objects, "Deployment", "gateway"), init=False)
    configured = env(gateway).get("GATEWAY_MAX_BODY_BYTES")
    gateway_limit = (
        int(configured) if configured else GatewaySettings.model_fields["max_body_bytes"].default
    )
    assert proxy_limit > gateway_limit


# --- the dashboard ---------------------------------------------------------------------------

# The dashboard's forms (sign up, sign in, a key's name) are a few hundred bytes, a playground
# request a few KB, Stripe's webhook events a few tens of KB.
DASHBOARD_MAX_PROXY_BODY = 64 * 1024


def _same_name_objects(objects: list[Obj], name: str) -> set[str]:
    return {o["kind"] for o in objects if o["metadata"]["name"] == name}


def test_the_dashboard_has_every_object_the_gateway_has(overlay: str) -> None:
    objects = render(overlay)
    kinds = _same_name_objects(objects, "gateway")
    assert {"Deployment", "Service", "ServiceAccount", "Ingress", "NetworkPolicy"} <= kinds
    assert _same_name_objects(objects, "dashboard") == kinds
    dashboard = named(objects, "Deployment", "dashboard")
    assert pod_spec(dashboard)["serviceAccountName"] == "dashboard"
    (spread,) = pod_spec(dashboard)["topologySpreadConstraints"]
    (gateway_spread,) = pod_spec(named(objects, "Deployment", "gateway"))[
        "topologySpreadConstraints"
    ]
    assert spread["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": "dashboard"}}
    assert {k: v for k, v in spread.items() if k != "labelSelector"} == {
        k: v for k, v in gateway_spread.items() if k != "labelSelector"
    }
    (container,) = containers(dashboard)
    image = container["image"]
    assert image.rpartition(":")[0].endswith("kokoropay/dashboard"), image


def _dashboard_env(objects: list[Obj]) -> dict[str, str]:
    return env(next(containers(named(objects, "Deployment", "dashboard"), init=False)))


def test_the_dashboard_cookie_is_secure_wherever_its_ingress_serves_https(overlay: str) -> None:
    objects = render(overlay)
    ingress = named(objects, "Ingress", "dashboard")
    secure = _dashboard_env(objects)["DASHBOARD_COOKIE_SECURE"]
    assert secure in ("true", "false")
    assert (secure == "true") == bool(ingress["spec"].get("tls"))
    assert (secure == "true") == (overlay == "prod")


def test_the_dashboard_shows_the_gateways_public_url(overlay: str) -> None:
    objects = render(overlay)
    url = urlsplit(_dashboard_env(objects)["DASHBOARD_PUBLIC_API_URL"])
    gateway = named(objects, "Ingress", "gateway")
    (host,) = _hosts(gateway)
    assert url.hostname == host
    assert url.scheme == ("https" if gateway["spec"].get("tls") else "http")
    assert url.path == "/v1" and not url.query and not url.fragment


def test_the_dashboard_opens_sign_up_and_the_prod_ledger_grants_nothing_for_it() -> None:
    for overlay in ("dev", "prod"):
        assert _dashboard_env(render(overlay))["DASHBOARD_SIGNUP_ENABLED"] == "true"
    ledger = env(next(containers(named(render("prod"), "Deployment", "ledger"), init=False)))
    assert ledger["LEDGER_SIGNUP_GRANT_CREDITS"] == "0"


def test_the_dashboard_trusts_forwarded_addresses_from_private_ranges_only(overlay: str) -> None:
    """X-Forwarded-For is believed only from the ingress controller's pod range: from anywhere
    else, a client could name any address and dodge auth's per-address throttling."""
    setting = _dashboard_env(render(overlay))["DASHBOARD_TRUSTED_PROXIES"]
    networks = [ipaddress.ip_network(cidr.strip()) for cidr in setting.split(",")]
    assert networks
    for network in networks:
        assert network.is_private and network.prefixlen >= 8, network


def test_the_dashboard_ingress_serves_its_host_with_small_buffered_bodies(overlay: str) -> None:
    objects = render(overlay)
    ingress = named(objects, "Ingress", "dashboard")
    annotations = ingress["metadata"].get("annotations", {})
    nginx = "nginx.ingress.kubernetes.io/"
    assert _bytes(annotations[f"{nginx}proxy-body-size"]) <= DASHBOARD_MAX_PROXY_BODY
    # Requests are small and buffered by the controller (the default); answers are not, for the
    # playground's audio relayed as it comes.
    assert f"{nginx}proxy-request-buffering" not in annotations
    assert annotations[f"{nginx}proxy-buffering"] == "off"
    assert (
        ingress["spec"]["ingressClassName"]
        == named(objects, "Ingress", "gateway")["spec"]["ingressClassName"]
    )
    (host,) = _hosts(ingress)
    assert host.startswith("dashboard.")
    if overlay == "prod":
        assert ingress["spec"]["tls"] == [{"hosts": [host], "secretName": "dashboard-tls"}]
        (gateway_tls,) = named(objects, "Ingress", "gateway")["spec"]["tls"]
        assert gateway_tls["hosts"] == _hosts(named(objects, "Ingress", "gateway"))
    else:
        assert "tls" not in ingress["spec"]


def _setting(variables: dict[str, str], settings: Any, field: str) -> Any:
    """A setting as the Deployment sets it (<PREFIX>_<FIELD>), else the settings' default."""
    configured = variables.get(settings.env_name(field))
    default = settings.model_fields[field].default
    return type(default)(configured) if configured is not None else default


def test_no_dashboard_wait_outlasts_the_ingress_or_the_drain(overlay: str) -> None:
    """A sign-in may wait out auth's delay after failed attempts, up to the dashboard's sign-in
    timeout; the playground waits for the gateway's first audio, which may queue for a model
    slot up to the gateway's first-chunk timeout. No such wait (nor any other
    DASHBOARD_*_TIMEOUT_SECONDS) may outlast the Ingress's read timeout (a 504 page), and the
    dashboard drains as long as the gateway, whose streams the playground relays."""
    settings = pytest.importorskip("services.dashboard.settings").DashboardSettings
    objects = render(overlay)
    variables = _dashboard_env(objects)
    timeouts = {
        field: float(_setting(variables, settings, field))
        for field in settings.model_fields
        if field.endswith("_timeout_seconds")
    }
    assert "sign_in_timeout_seconds" in timeouts
    gateway = _gateway_env(objects)
    first_audio = float(_setting(gateway, GatewaySettings, "first_chunk_timeout_seconds"))
    assert float(variables["DASHBOARD_GRACE_SECONDS"]) >= float(gateway["GATEWAY_GRACE_SECONDS"])
    annotations = named(objects, "Ingress", "dashboard")["metadata"].get("annotations", {})
    grace = float(variables["DASHBOARD_GRACE_SECONDS"])
    for field, wait in timeouts.items():
        assert grace >= wait, field
    for field, wait in {**timeouts, "the gateway's first audio": first_audio}.items():
        for name in ("proxy-read-timeout", "proxy-send-timeout"):
            # ingress-nginx's default, 60 s, applies when unset.
            seconds = float(annotations.get(f"nginx.ingress.kubernetes.io/{name}", 60))
            assert seconds > wait, (field, name)


def _gateway_env(objects: list[Obj]) -> dict[str, str]:
    return env(next(containers(named(objects, "Deployment", "gateway"), init=False)))


def test_the_dashboards_own_url_is_its_ingress_host(overlay: str) -> None:
    """DASHBOARD_PUBLIC_URL (Stripe's return URLs, the webhook's address) and the gateway's
    GATEWAY_BILLING_URL (named in its 402 answer) are where browsers reach the dashboard: its
    Ingress's host, over HTTPS wherever the Ingress serves it."""
    objects = render(overlay)
    ingress = named(objects, "Ingress", "dashboard")
    (host,) = _hosts(ingress)
    scheme = "https" if ingress["spec"].get("tls") else "http"
    public = _dashboard_env(objects)["DASHBOARD_PUBLIC_URL"]
    assert public == f"{scheme}://{host}"
    assert _gateway_env(objects)["GATEWAY_BILLING_URL"] == f"{public}/billing"
    if overlay == "prod":
        assert public == "https://dashboard.kokoropay.example"
        # Stripe delivers live-mode events to HTTPS endpoints only, with a verifiable certificate.
        assert host in ingress["spec"]["tls"][0]["hosts"]


def test_stripes_webhook_reaches_the_dashboard(overlay: str) -> None:
    """POST <DASHBOARD_PUBLIC_URL>/billing/webhook goes through the dashboard's Ingress like any
    page, with room for every event the dashboard itself accepts, and nothing in front that asks
    for a session, a client address or a password."""
    billing = pytest.importorskip("services.dashboard.routes.billing")
    objects = render(overlay)
    ingress = named(objects, "Ingress", "dashboard")
    webhook = urlsplit(_dashboard_env(objects)["DASHBOARD_PUBLIC_URL"] + "/billing/webhook")
    (rule,) = [r for r in ingress["spec"]["rules"] if r["host"] == webhook.hostname]
    # A Prefix path matches whole segments: "/" and "/billing" both cover "/billing/webhook".
    routed = [
        path["backend"]["service"]["name"]
        for path in rule["http"]["paths"]
        if path["pathType"] == "Prefix"
        and f"{webhook.path}/".startswith(path["path"].rstrip("/") + "/")
    ]
    assert routed == ["dashboard"]
    annotations = ingress["metadata"].get("annotations", {})
    nginx = "nginx.ingress.kubernetes.io/"
    limit = _bytes(annotations.get(f"{nginx}proxy-body-size", "1m"))
    assert limit >= billing.MAX_EVENT_BYTES
    for blocking in ("whitelist-source-range", "denylist-source-range", "auth-url", "auth-type"):
        assert f"{nginx}{blocking}" not in annotations, blocking


def test_a_dashboard_purchase_fits_one_ledger_top_up(overlay: str) -> None:
    """The most a customer can buy at once (DASHBOARD_TOPUP_MAX_PACKS packs of
    DASHBOARD_TOPUP_CREDITS_PER_PACK) is a grant the ledger accepts (LEDGER_MAX_TOP_UP_CREDITS):
    otherwise a paid checkout is never credited. The prices keep their defaults in every
    overlay."""
    dashboard_settings = pytest.importorskip("services.dashboard.settings").DashboardSettings
    ledger_settings = pytest.importorskip("services.ledger.settings").LedgerSettings
    objects = render(overlay)
    variables = _dashboard_env(objects)
    assert not {name for name in variables if name.startswith("DASHBOARD_TOPUP_")}
    packs = _setting(variables, dashboard_settings, "topup_max_packs")
    credits = _setting(variables, dashboard_settings, "topup_credits_per_pack")
    ledger = env(next(containers(named(objects, "Deployment", "ledger"), init=False)))
    assert packs * credits <= _setting(ledger, ledger_settings, "max_top_up_credits")


# Settings the base leaves at their defaults, documented all the same.
DOCUMENTED_DEFAULTS = {
    "DASHBOARD_TOPUP_CREDITS_PER_PACK",
    "DASHBOARD_TOPUP_CENTS_PER_PACK",
    "DASHBOARD_TOPUP_CURRENCY",
    "DASHBOARD_TOPUP_MAX_PACKS",
}


def test_every_dashboard_setting_is_documented(overlay: str) -> None:
    """docs/operations.md names every variable the dashboard's Deployment sets (values and
    Secrets alike), the price settings, and the gateway's billing URL."""
    (container,) = containers(named(render(overlay), "Deployment", "dashboard"))
    names = {e["name"] for e in container["env"] if e["name"].startswith("DASHBOARD_")}
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    for name in names | DOCUMENTED_DEFAULTS | {"GATEWAY_BILLING_URL"}:
        assert f"`{name}`" in operations, f"docs/operations.md does not explain {name}"


# --- predictions and its workers -------------------------------------------------------------

# The settings the service and its workers share, which must agree: a worker signs the output
# URL its webhook carries as the service signs the URL GetPrediction answers.
PREDICTIONS_SHARED = (
    "PREDICTIONS_LEDGER_ADDRESS",
    "PREDICTIONS_SYNTH_ADDRESS",
    "PREDICTIONS_PUBLIC_BASE_URL",
    "PREDICTIONS_OUTPUT_RETENTION_SECONDS",
    "PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS",
    "PREDICTIONS_TLS_DIR",
    "PREDICTIONS_HOST",
    "PREDICTIONS_LOG_LEVEL",
)
PREDICTIONS_ADDRESS = f"predictions.{NAMESPACE}.svc.cluster.local:{PORTS['predictions']}"


def _predictions(objects: list[Obj]) -> Obj:
    return next(containers(named(objects, "Deployment", "predictions"), init=False))


def test_predictions_has_every_object_auth_has_and_its_workers_their_own(overlay: str) -> None:
    """The service: auth's shape (Deployment, ServiceAccount, Service and headless Service,
    PodDisruptionBudget, NetworkPolicy). The workers: a Deployment, ServiceAccount, budget and
    policy of their own, no Service, and in prod an autoscaler."""
    objects = render(overlay)
    assert _same_name_objects(objects, "predictions") == _same_name_objects(objects, "auth")
    assert _same_name_objects(objects, "predictions-headless") == {"Service"}
    headless = named(objects, "Service", "predictions-headless")
    assert headless["spec"]["clusterIP"] == "None"
    assert headless["spec"]["selector"] == {"app.kubernetes.io/name": "predictions"}
    (port,) = named(objects, "Service", "predictions")["spec"]["ports"]
    assert (port["port"], port["targetPort"]) == (PORTS["predictions"], "grpc")
    worker_kinds = {"Deployment", "ServiceAccount", "PodDisruptionBudget", "NetworkPolicy"}
    if overlay == "prod":
        worker_kinds.add("HorizontalPodAutoscaler")
    assert _same_name_objects(objects, WORKER) == worker_kinds
    for name in ("predictions", WORKER):
        spec = pod_spec(named(objects, "Deployment", name))
        assert spec["serviceAccountName"] == name
        (spread,) = spec["topologySpreadConstraints"]
        assert spread["labelSelector"] == {"matchLabels": {"app.kubernetes.io/name": name}}


def test_predictions_workers_run_the_worker_from_the_services_image(overlay: str) -> None:
    """One image (the `predictions` extra): the service by its entrypoint, the workers by
    command, with python as PID 1 so that SIGTERM reaches their shutdown."""
    objects = render(overlay)
    service = _predictions(objects)
    worker = _worker(objects)
    assert service["image"] == worker["image"]
    assert service["image"].rpartition(":")[0].endswith("kokoropay/predictions"), service["image"]
    assert "command" not in service and "args" not in service
    assert worker["command"] == WORKER_COMMAND and "args" not in worker


def test_predictions_and_its_workers_share_their_settings(overlay: str) -> None:
    objects = render(overlay)
    service, worker = env(_predictions(objects)), env(_worker(objects))
    for name in PREDICTIONS_SHARED:
        assert service[name] == worker[name], name
    secret = ("predictions-secrets", "url-signing-secret")
    assert _secret_refs(_predictions(objects))["PREDICTIONS_URL_SIGNING_SECRET"] == secret
    assert _secret_refs(_worker(objects))["PREDICTIONS_URL_SIGNING_SECRET"] == secret
    assert service["PREDICTIONS_LEDGER_ADDRESS"] == f"ledger.{NAMESPACE}.svc.cluster.local:50052"
    assert service["PREDICTIONS_OUTPUT_RETENTION_SECONDS"] == "86400"
    # synth through Envoy, where the gateway reaches it.
    assert service["PREDICTIONS_SYNTH_ADDRESS"] == _gateway_env(objects)["GATEWAY_SYNTH_ADDRESS"]
    # Each drain fits in its pod's grace (the general check above), the workers' long enough
    # for a running synthesis to finish rather than start over elsewhere.
    assert float(worker["PREDICTIONS_WORKER_GRACE_SECONDS"]) >= 60


def test_predictions_refuses_private_webhooks_wherever_it_runs(overlay: str) -> None:
    """Off in base and in every overlay: the workers' NetworkPolicy refuses private ranges
    anyway, so a webhook allowed by the setting could never be delivered."""
    objects = render(overlay)
    for container in (_predictions(objects), _worker(objects)):
        assert env(container)["PREDICTIONS_ALLOW_PRIVATE_WEBHOOKS"] == "false"


def test_predictions_output_urls_are_on_the_gateways_public_host(overlay: str) -> None:
    """PREDICTIONS_PUBLIC_BASE_URL is where customers download outputs without a key: the
    gateway Ingress's scheme and host, which routes every path to the gateway."""
    objects = render(overlay)
    url = urlsplit(env(_predictions(objects))["PREDICTIONS_PUBLIC_BASE_URL"])
    gateway = named(objects, "Ingress", "gateway")
    (host,) = _hosts(gateway)
    assert url.hostname == host
    assert url.scheme == ("https" if gateway["spec"].get("tls") else "http")
    assert url.path in ("", "/") and not url.query and not url.fragment
    if overlay == "prod":
        assert f"{url.scheme}://{url.hostname}" == "https://api.kokoropay.example"
    (rule,) = gateway["spec"]["rules"]
    assert [(p["path"], p["pathType"]) for p in rule["http"]["paths"]] == [("/", "Prefix")]


def test_the_gateway_and_the_dashboard_dial_the_predictions_service(overlay: str) -> None:
    objects = render(overlay)
    assert _gateway_env(objects)["GATEWAY_PREDICTIONS_ADDRESS"] == PREDICTIONS_ADDRESS
    assert _dashboard_env(objects)["DASHBOARD_PREDICTIONS_ADDRESS"] == PREDICTIONS_ADDRESS
    # And the service declares each one's calls (the operator's come through Envoy).
    service = GRPC_SERVICES["predictions"]
    callers = {
        role
        for method in service.methods
        for role in declared_callers(method)
        if role != access_pb2.OPERATOR
    }
    assert callers == {access_pb2.GATEWAY, access_pb2.DASHBOARD}
    admitted = {
        name
        for peer, _ in _ingress_sources(objects, "predictions")
        for name in ("gateway", "dashboard", "envoy")
        if _peer_is_pod(peer, name)
    }
    assert admitted == {"gateway", "dashboard", "envoy"}


def _predictions_variables(objects: list[Obj]) -> set[str]:
    return {
        e["name"]
        for container in (_predictions(objects), _worker(objects))
        for e in container["env"]
        if e["name"].startswith("PREDICTIONS_")
    }


def test_predictions_variables_are_settings_the_service_reads(overlay: str) -> None:
    """Every PREDICTIONS_* variable either Deployment sets names a field of the settings in
    services/predictions/settings.py: a misspelt one would be ignored, leaving the default."""
    module = pytest.importorskip("services.predictions.settings")
    from services.common.settings import ServiceSettings

    classes = [
        value
        for value in vars(module).values()
        if isinstance(value, type)
        and issubclass(value, ServiceSettings)
        and value.__module__ == module.__name__
    ]
    assert classes, "no settings class in services.predictions.settings"
    known = {cls.env_name(field) for cls in classes for field in cls.model_fields}
    unknown = _predictions_variables(render(overlay)) - known
    assert not unknown, f"not read by services.predictions: {sorted(unknown)}"


def test_every_predictions_setting_is_documented(overlay: str) -> None:
    names = _predictions_variables(render(overlay)) | {
        "GATEWAY_PREDICTIONS_ADDRESS",
        "DASHBOARD_PREDICTIONS_ADDRESS",
        "PREDICTIONS_MIGRATION_DATABASE_URL",
    }
    operations = (REPO_ROOT / "docs" / "operations.md").read_text()
    for name in names:
        assert f"`{name}`" in operations, f"docs/operations.md does not explain {name}"


def test_the_dev_secrets_script_makes_every_secret_dev_reads() -> None:
    """create-secrets.sh creates each (Secret, key) the dev overlay's pods read, but the
    optional ones, which it cannot fill."""
    script = (REPO_ROOT / "deploy" / "k8s" / "overlays" / "dev" / "create-secrets.sh").read_text()
    created = set(re.findall(r"^create ([\w-]+) ([\w-]+) ", script, flags=re.MULTILINE))
    read = {
        (ref["name"], ref["key"])
        for _, _, ref in _secret_key_refs(render("dev"))
        if ref["name"] not in OPTIONAL_SECRETS
    }
    assert read == created
