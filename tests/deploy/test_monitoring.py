"""Metrics in the cluster: every process's metrics port, the policy that lets Prometheus scrape
it, and the optional monitoring component (PodMonitors, alert rules, the Grafana board).

kubernetes-validate has no schema for the Prometheus Operator's resources, so the component
stays out of the overlays `test_manifests.py` validates (like components/cert-manager), and this
checks it on each overlay rendered with the component added: its custom resources against a
schema of their CRDs (prometheus_operator_schema.yaml), its ConfigMap strictly, every PodMonitor
against the pods it selects, the rules with `promtool check rules` and `promtool test rules`
(alerts_test.yaml), the board's queries with promtool too, and every series they read against
what the services export. docs/operations.md ("Alerts") has a runbook section per alert.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from services.common.mesh import METRICS_PORTS, PREDICTIONS_WORKER_METRICS_PORT
from tests.deploy.manifests import (
    K8S,
    NAMESPACE,
    OVERLAYS,
    Obj,
    containers,
    env,
    named,
    of_kind,
    pod_labels,
    render,
    render_with,
    selects,
)
from tests.support import monitoring
from tests.support.paths import REPO_ROOT

COMPONENT = "monitoring"
OPERATOR = "monitoring.coreos.com/v1"
CUSTOM_KINDS = {"PodMonitor", "PrometheusRule"}
SCHEMAS = yaml.safe_load((Path(__file__).parent / "prometheus_operator_schema.yaml").read_text())
ALERTS_TEST = Path(__file__).parent / "alerts_test.yaml"
OPERATIONS = REPO_ROOT / "docs" / "operations.md"
# Where Prometheus runs: the one namespace whose pods may scrape.
MONITORING = {"namespaceSelector": {"matchLabels": {"kubernetes.io/metadata.name": "monitoring"}}}
# Every process with a metrics port: the port (services/common/mesh.py) and the variable that sets
# it. The predictions workers' is not the service's (decision 0016).
METRICS = {
    **{name: (port, f"{name.upper()}_METRICS_PORT") for name, port in METRICS_PORTS.items()},
    "predictions-worker": (PREDICTIONS_WORKER_METRICS_PORT, "PREDICTIONS_WORKER_METRICS_PORT"),
}
# Where each scraped workload serves its series: the named port and the path.
SCRAPED = {
    **{name: ("metrics", "/metrics") for name in METRICS},
    # Envoy's stats on its ops port: the synth autoscaler's signal (docs/operations.md, "Scaling").
    "envoy": ("ops", "/stats/prometheus"),
}
# The alerts issue 16 asks for, and the ones every service needs.
ALERTS = {
    "RefundsAboveShareOfCharges",
    "FirstAudioP99OverObjective",
    "SynthSaturated",
    "LedgerErrors",
    "HoldsEndingByExpiry",
    "WebhookFailures",
    "GatewayServerErrors",
    "TargetDown",
    "ServiceDown",
}
SEVERITIES = {"critical", "warning"}
RUNBOOK = "https://kokoropay.example/docs/operations.md"
BOARD_PANELS = {
    "Characters sold per minute",
    "Audio seconds per second",
    "First-audio latency",
    "Refunds, characters per minute",
    "Refunds, share of charges",
    "Synth saturation",
}

# What the services export (docs/operations.md, "Metrics"), by type: the names a rule or a panel
# may read. Counters are scraped with `_total`, histograms as `_bucket`, `_count` and `_sum`.
COUNTERS = {
    "grpc_server_started_total",
    "grpc_server_handled_total",
    "grpc_client_started_total",
    "grpc_client_handled_total",
    "kokoropay_ledger_reserves_total",
    "kokoropay_ledger_captures_total",
    "kokoropay_ledger_releases_total",
    "kokoropay_ledger_expiries_total",
    "kokoropay_ledger_credits_captured_total",
    "kokoropay_ledger_credits_released_total",
    "kokoropay_synth_audio_seconds_total",
    "kokoropay_gateway_http_requests_total",
    "kokoropay_gateway_audio_bytes_total",
    "kokoropay_gateway_audio_seconds_total",
    "kokoropay_gateway_characters_charged_total",
    "kokoropay_gateway_characters_refunded_total",
    "kokoropay_gateway_payment_required_total",
    "kokoropay_gateway_rate_limited_total",
    "kokoropay_auth_key_checks_total",
    "kokoropay_auth_admissions_total",
    "kokoropay_predictions_created_total",
    "kokoropay_predictions_refused_total",
    "kokoropay_predictions_finished_total",
    "kokoropay_predictions_webhook_attempts_total",
    "kokoropay_dashboard_sign_ins_total",
    "kokoropay_dashboard_sign_ups_total",
}
GAUGES = {
    "kokoropay_ledger_open_holds",
    "kokoropay_synth_active_streams",
    "kokoropay_synth_queued_streams",
    "kokoropay_synth_stream_capacity",
    "kokoropay_synth_workers",
    "kokoropay_synth_busy_workers",
    "kokoropay_synth_device_memory_bytes",
    "kokoropay_gateway_active_streams",
    "kokoropay_predictions_queue_depth",
    "kokoropay_predictions_runnable_jobs",
}
HISTOGRAMS = {
    "grpc_server_handling_seconds",
    "grpc_client_handling_seconds",
    "kokoropay_synth_real_time_factor",
    "kokoropay_synth_first_chunk_seconds",
    "kokoropay_synth_model_call_seconds",
    "kokoropay_synth_batch_size",
    "kokoropay_gateway_http_request_seconds",
    "kokoropay_gateway_first_audio_seconds",
    "kokoropay_predictions_job_seconds",
}
EXPORTED = (
    COUNTERS
    | GAUGES
    | {f"{name}{suffix}" for name in HISTOGRAMS for suffix in ("_bucket", "_count", "_sum")}
)


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


@pytest.fixture
def objects(overlay: str) -> list[Obj]:
    """The overlay with the component added, as an operator's overlay would add it."""
    return render_with(overlay, COMPONENT)


@pytest.fixture
def added(overlay: str, objects: list[Obj]) -> list[Obj]:
    """What the component adds to the overlay."""
    without = render(overlay)
    return [o for o in objects if o not in without]


def _workload(objects: list[Obj], name: str) -> Obj:
    return named(objects, "Deployment", name)


def _container_ports(workload: Obj) -> dict[str, int]:
    return {
        port["name"]: port["containerPort"]
        for container in containers(workload, init=False)
        for port in container.get("ports", [])
    }


# --- the metrics ports and who may reach them ---------------------------------------------------


@pytest.mark.parametrize("name", sorted(METRICS))
def test_every_process_serves_metrics_on_a_port_of_its_own(overlay: str, name: str) -> None:
    """A container port named `metrics` at the mesh's default, set by its variable, on every
    interface (`<PREFIX>_HOST` 0.0.0.0, which the exporter binds), published by no Service:
    Prometheus scrapes pods."""
    objects = render(overlay)
    workload = _workload(objects, name)
    port, variable = METRICS[name]
    (container,) = containers(workload, init=False)
    assert _container_ports(workload)["metrics"] == port
    variables = env(container)
    assert variables[variable] == str(port)
    prefix = variable.split("_", 1)[0]
    assert variables[f"{prefix}_HOST"] == "0.0.0.0"
    # The other processes' variables would be read as the service's own (the worker reads
    # PREDICTIONS_*): only its own is set.
    others = {v for n, (_, v) in METRICS.items() if n != name}
    assert not others & set(variables), name
    for service in of_kind(objects, "Service"):
        for service_port in service["spec"]["ports"]:
            assert service_port.get("targetPort") != "metrics", service["metadata"]["name"]
            assert service_port["port"] not in {p for p, _ in METRICS.values()}


def _resolve(port: int | str, workload: Obj) -> int | None:
    """A NetworkPolicy port (a number or a container port's name) as this workload's number."""
    if isinstance(port, int):
        return port
    return _container_ports(workload).get(port)


def test_prometheus_reaches_the_scraped_ports_and_nothing_else(overlay: str) -> None:
    """Namespace `monitoring` is admitted, by name, to each scraped workload's metrics port (Envoy's
    stats port), and to no other port of any pod: not a service port, not a health port."""
    objects = render(overlay)
    admitted: dict[str, set[int | None]] = {}
    for policy in of_kind(objects, "NetworkPolicy"):
        for rule in policy["spec"].get("ingress", []):
            if MONITORING not in rule["from"]:
                continue
            where = policy["metadata"]["name"]
            assert rule["from"] == [MONITORING], where
            for workload in of_kind(objects, "Deployment", "StatefulSet", "Job"):
                if not selects(policy["spec"]["podSelector"], pod_labels(workload)):
                    continue
                name = workload["metadata"]["name"]
                ports = {_resolve(p["port"], workload) for p in rule["ports"]}
                assert {p["protocol"] for p in rule["ports"]} == {"TCP"}, where
                scraped = _container_ports(workload)[SCRAPED[name][0]] if name in SCRAPED else None
                assert ports == {scraped}, (where, name, ports)
                admitted.setdefault(name, set()).update(ports)
    assert admitted == {
        name: {_container_ports(_workload(objects, name))[port]}
        for name, (port, _) in SCRAPED.items()
    }


def test_the_scrape_policy_names_the_metrics_port(overlay: str) -> None:
    """By name, so each pod admits its own number and a new process needs only its port."""
    policy = named(render(overlay), "NetworkPolicy", "metrics-scrape")
    (rule,) = policy["spec"]["ingress"]
    assert rule["ports"] == [{"protocol": "TCP", "port": "metrics"}]
    assert policy["spec"]["policyTypes"] == ["Ingress"]


# --- the component as rendered --------------------------------------------------------------------


def test_the_component_adds_operator_resources_and_the_boards_config_map(
    overlay: str, objects: list[Obj], added: list[Obj]
) -> None:
    assert {o["kind"] for o in added} == CUSTOM_KINDS | {"ConfigMap"}
    for obj in added:
        assert obj["metadata"]["namespace"] == NAMESPACE, obj["metadata"]["name"]
        assert obj["metadata"]["labels"]["app.kubernetes.io/part-of"] == "kokoropay"
        if obj["kind"] in CUSTOM_KINDS:
            assert obj["apiVersion"] == OPERATOR
    # Nothing else changes: the scrape's NetworkPolicy and the metrics ports are base's.
    assert [o for o in objects if o not in added] == render(overlay)


def test_the_overlays_leave_the_component_to_the_operator() -> None:
    """Out of the overlays, whose objects `make test` validates strictly and which must apply where
    the Operator's CRDs are missing; prod has the line to uncomment."""
    for overlay in OVERLAYS:
        assert not [o for o in render(overlay) if o["apiVersion"] == OPERATOR]
    prod = (K8S / "overlays" / "prod" / "kustomization.yaml").read_text()
    assert "  # - ../../components/monitoring\n" in prod


def test_the_components_config_map_passes_strict_validation(added: list[Obj]) -> None:
    for obj in added:
        if obj["kind"] not in CUSTOM_KINDS:
            kubernetes_validate.validate(
                obj, kubernetes_validate.utils.latest_version(), strict=True
            )


@pytest.mark.parametrize("kind", sorted(CUSTOM_KINDS))
def test_each_custom_resource_matches_its_crd(added: list[Obj], kind: str) -> None:
    schema = {"$defs": SCHEMAS["$defs"], **SCHEMAS[kind]}
    validator = jsonschema.Draft202012Validator(schema)
    resources = [o for o in added if o["kind"] == kind]
    assert resources
    failures = [
        f"{obj['metadata']['name']}: {'.'.join(map(str, error.path))}: {error.message}"
        for obj in resources
        for error in validator.iter_errors(obj)
    ]
    assert not failures, "\n".join(failures)


def test_the_schema_refuses_what_the_api_server_would_drop() -> None:
    """The schema is closed: a misspelt field fails it (the API server would prune it silently)."""
    schema = {"$defs": SCHEMAS["$defs"], **SCHEMAS["PodMonitor"]}
    monitor = next(yaml.safe_load_all((monitoring.COMPONENT / "podmonitors.yaml").read_text()))
    assert not list(jsonschema.Draft202012Validator(schema).iter_errors(monitor))
    monitor["spec"]["podMetricEndpoints"] = monitor["spec"].pop("podMetricsEndpoints")
    assert list(jsonschema.Draft202012Validator(schema).iter_errors(monitor))


def _podmonitors(objects: list[Obj]) -> list[Obj]:
    return [o for o in of_kind(objects, "PodMonitor") if o["apiVersion"] == OPERATOR]


def _label_meta(label: str) -> str:
    """Prometheus' name for a pod label in service discovery."""
    return "__meta_kubernetes_pod_label_" + re.sub(r"[^a-zA-Z0-9_]", "_", label)


def test_every_podmonitor_scrapes_a_port_its_pods_have(objects: list[Obj]) -> None:
    """Each selects one workload's pods in its own namespace, by the port name and path that
    workload serves its metrics on; its job label and relabelings read labels the pods carry."""
    scraped = set()
    for monitor in _podmonitors(objects):
        spec = monitor["spec"]
        name = monitor["metadata"]["name"]
        assert "namespaceSelector" not in spec, name
        workloads = [
            w for w in of_kind(objects, "Deployment") if selects(spec["selector"], pod_labels(w))
        ]
        assert [w["metadata"]["name"] for w in workloads] == [name]
        (workload,) = workloads
        labels = pod_labels(workload)
        assert spec["jobLabel"] in labels, name
        (endpoint,) = spec["podMetricsEndpoints"]
        assert (endpoint["port"], endpoint["path"]) == SCRAPED[name], name
        assert endpoint["port"] in _container_ports(workload), name
        for relabeling in endpoint["relabelings"]:
            for source in relabeling.get("sourceLabels", []):
                if source.startswith("__meta_kubernetes_pod_label_"):
                    assert source in {_label_meta(label) for label in labels}, (name, source)
        scraped.add(name)
    assert scraped == set(SCRAPED)


def test_envoys_podmonitor_reads_what_its_annotations_advertise(objects: list[Obj]) -> None:
    """A Prometheus without the Operator finds Envoy by its annotations: the same port and path."""
    envoy = named(objects, "Deployment", "envoy")
    annotations = envoy["spec"]["template"]["metadata"]["annotations"]
    (endpoint,) = named(_podmonitors(objects), "PodMonitor", "envoy")["spec"]["podMetricsEndpoints"]
    assert annotations["prometheus.io/path"] == endpoint["path"]
    assert int(annotations["prometheus.io/port"]) == _container_ports(envoy)[endpoint["port"]]


# --- the rules ------------------------------------------------------------------------------------


def _alerts() -> list[monitoring.Rule]:
    return [rule for rule in monitoring.rules() if "alert" in rule]


def _anchors(markdown: str) -> set[str]:
    """GitHub's anchors for a Markdown file's headings."""
    anchors = set()
    for heading in re.findall(r"^#+ (.+)$", markdown, flags=re.MULTILINE):
        slug = re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")
        anchors.add(slug)
    return anchors


def test_every_alert_says_how_bad_how_long_and_what_to_do() -> None:
    alerts = _alerts()
    assert {rule["alert"] for rule in alerts} == ALERTS
    assert len(alerts) == len(ALERTS)
    anchors = _anchors(OPERATIONS.read_text())
    for rule in alerts:
        name = rule["alert"]
        assert re.fullmatch(r"\d+m", rule["for"]), name
        assert rule["labels"]["severity"] in SEVERITIES, name
        annotations = rule["annotations"]
        assert annotations["summary"] and annotations["description"], name
        # Its own section of docs/operations.md, "Alerts".
        assert annotations["runbook_url"] == f"{RUNBOOK}#{name.lower()}", name
        assert name.lower() in anchors, f"docs/operations.md has no section {name}"


def test_every_alert_explains_its_threshold_in_a_comment() -> None:
    lines = monitoring.PROMETHEUS_RULE.read_text().splitlines()
    alerts = [i for i, line in enumerate(lines) if line.strip().startswith("- alert:")]
    assert len(alerts) == len(ALERTS)
    for index in alerts:
        comment = []
        for line in reversed(lines[:index]):
            if not line.strip().startswith("#"):
                break
            comment.append(line)
        assert len(comment) >= 2, f"{lines[index].strip()} has no comment on its threshold"


def _promtool(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [monitoring.promtool(), *args], capture_output=True, text=True, timeout=120, cwd=cwd
    )


def test_promtool_checks_the_rules(tmp_path: Path) -> None:
    rules = monitoring.write_rules_file(tmp_path)
    result = _promtool("check", "rules", str(rules), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(monitoring.rules())} rules found" in result.stdout


def test_each_alert_fires_past_its_threshold_and_not_under_it(tmp_path: Path) -> None:
    """alerts_test.yaml: every alert firing on made-up series, and quiet under its threshold."""
    monitoring.write_rules_file(tmp_path, annotations=False)
    shutil.copy(ALERTS_TEST, tmp_path / ALERTS_TEST.name)
    cases = yaml.safe_load(ALERTS_TEST.read_text())
    assert cases["rule_files"] == [monitoring.RULES_FILE_NAME]
    tested = {
        check["alertname"]
        for case in cases["tests"]
        for check in case.get("alert_rule_test", [])
        if check["exp_alerts"]
    }
    assert tested == ALERTS
    result = _promtool("test", "rules", ALERTS_TEST.name, cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rules_record_names_prometheus_accepts() -> None:
    """level:metric:operations, the level naming the labels kept (namespace[_<label>])."""
    for name in monitoring.recorded_names():
        level, metric, operation = name.split(":")
        assert level.split("_")[0] == "namespace" and metric.startswith("kokoropay_"), name
        assert operation, name


# --- the Grafana board ----------------------------------------------------------------------------


def test_the_board_is_grafana_json_on_a_datasource_of_the_viewers_choice() -> None:
    board = monitoring.dashboard()
    assert board["uid"] and board["title"]
    variables = {v["name"]: v for v in board["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    choice = {"type": "prometheus", "uid": "${datasource}"}
    assert variables["namespace"]["datasource"] == choice
    panels = board["panels"]
    assert {panel["title"] for panel in panels} >= BOARD_PANELS
    assert len({panel["id"] for panel in panels}) == len(panels)
    for panel in panels:
        assert panel["datasource"] == choice, panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            assert target["datasource"] == choice, panel["title"]
    latency = next(p for p in panels if p["title"] == "First-audio latency")
    quantiles = {re.match(r"histogram_quantile\(([0-9.]+),", t["expr"]) for t in latency["targets"]}
    assert {m.group(1) for m in quantiles if m} == {"0.5", "0.95", "0.99"}


def test_every_board_query_parses(tmp_path: Path) -> None:
    """promtool checks expressions only inside rules: each query becomes a recording rule, with
    Grafana's variables as Grafana would send them."""
    queries = monitoring.panel_expressions()
    rules = [
        {"record": f"board:query_{index}:check", "expr": monitoring.prometheus_expression(expr)}
        for index, expr in enumerate(queries.values())
    ]
    path = tmp_path / "board.yaml"
    path.write_text(yaml.safe_dump({"groups": [{"name": "board", "rules": rules}]}))
    result = _promtool("check", "rules", str(path), cwd=tmp_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_grafanas_sidecar_loads_the_same_board(added: list[Obj]) -> None:
    (config_map,) = [o for o in added if o["kind"] == "ConfigMap"]
    assert config_map["metadata"]["labels"]["grafana_dashboard"] == "1"
    # A fixed name: a hashed one would leave the last version's board behind at every change.
    assert config_map["metadata"]["name"] == "kokoropay-grafana-dashboard"
    (content,) = config_map["data"].values()
    assert json.loads(content) == monitoring.dashboard()


# --- the series they read -------------------------------------------------------------------------


def test_the_rules_and_the_board_read_only_series_the_mesh_exports() -> None:
    """Every series name an expression reads is exported by a service (docs/operations.md,
    "Metrics"), recorded by the rules, or Prometheus' own (`up`); metric_names_used() is the
    first kind, which the end-to-end check finds in a scrape of the running mesh."""
    used = monitoring.metric_names_used()
    assert used and used <= EXPORTED, sorted(used - EXPORTED)
    expressions = [
        *monitoring.rule_expressions().values(),
        *monitoring.panel_expressions().values(),
    ]
    read = set().union(*(monitoring.metric_names(e) for e in expressions))
    assert read == used | (read & monitoring.recorded_names()) | (read & {"up"})
    # Every recorded series is drawn or alerted on.
    assert monitoring.recorded_names() <= read


@pytest.mark.parametrize(
    ("expression", "names"),
    [
        ('sum by (le) (rate(a_bucket{x="y",z=~"w|v"}[5m]))', {"a_bucket"}),
        ("sum(rate(a_total[5m])) by (namespace) / on() group_left b", {"a_total", "b"}),
        ('x / ignoring(outcome) group_left y{k="}"} > bool 0.5', {"x", "y"}),
        (
            "histogram_quantile(0.99, sum without (pod) (rate(h_bucket[$__rate_interval])))",
            {"h_bucket"},
        ),
        (
            'absent(up{job="ledger"}) or c offset 5m and count by (job) (d) unless e',
            {"up", "c", "d", "e"},
        ),
        ("ns:rule_name:rate5m * 60 + 1e3", {"ns:rule_name:rate5m"}),
    ],
)
def test_metric_names_reads_promql(expression: str, names: set[str]) -> None:
    assert monitoring.metric_names(expression) == names


def test_the_rules_file_is_what_a_prometheus_loads(tmp_path: Path) -> None:
    """`groups:` at the top, the PrometheusRule's groups as they are: what `rule_files:` takes."""
    path = monitoring.write_rules_file(tmp_path)
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    assert loaded == {"groups": monitoring.rule_groups()}
