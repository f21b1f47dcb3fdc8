"""The gateway is what ends a long stream: every proxy on the stream's path allows longer.

A stream that reaches GATEWAY_MAX_STREAM_SECONDS is ended by the gateway, which charges what
was delivered and refunds the rest. A proxy that cut it first would leave the gateway to see a
failed synthesis (Envoy, between the gateway and synth: refunded in full) or a vanished client
(the Ingress, in front of it). So each total-time limit of the Ingress and of Envoy, as rendered
for every overlay and as the generator writes it, must exceed the gateway's limit: its default,
or what the gateway's Deployment sets.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from services.cli.main import main as kokoro_pay
from services.gateway.settings import GatewaySettings
from tests.deploy.manifests import OVERLAYS, Obj, containers, env, named, of_kind, render
from tests.deploy.test_envoy_config import DEPLOY_TARGETS

SYNTHESIZE = "/kokoropay.synth.v1.SynthService/Synthesize"
# ingress-nginx's per-Ingress timeouts, in seconds; nginx's default (60 s) applies when unset.
NGINX_TIMEOUTS = ("proxy-read-timeout", "proxy-send-timeout")
NGINX_DEFAULT_SECONDS = 60.0
_HCM = "envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager"


@pytest.fixture(params=OVERLAYS)
def overlay(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    return name


def gateway_limit(objects: list[Obj]) -> float:
    """GATEWAY_MAX_STREAM_SECONDS as the gateway's Deployment sets it, else the default."""
    (gateway,) = containers(named(objects, "Deployment", "gateway"), init=False)
    configured = env(gateway).get("GATEWAY_MAX_STREAM_SECONDS")
    if configured is not None:
        return float(configured)
    default: float = GatewaySettings.model_fields["max_stream_seconds"].default
    return default


def _duration(value: str) -> float:
    """An Envoy duration (`3900s`, `0.5s`) in seconds; 0 means no limit."""
    assert value.endswith("s"), value
    return float(value[:-1])


def envoy_stream_limits(config: dict[str, Any]) -> dict[str, float]:
    """Every total-time limit Envoy puts on a Synthesize stream, named by where it is set:
    the connection managers' and the routes' that match Synthesize, and the synth cluster's.
    Limits set to 0 (none) are left out."""
    limits: dict[str, float] = {}

    def add(where: str, value: str | None) -> None:
        if value is not None and _duration(value) > 0:
            limits[where] = _duration(value)

    for listener in config["static_resources"]["listeners"]:
        for chain in listener["filter_chains"]:
            for network_filter in chain["filters"]:
                manager = network_filter.get("typed_config", {})
                if not manager.get("@type", "").endswith(_HCM):
                    continue
                where = f"listener {listener['name']}"
                add(f"{where} request_timeout", manager.get("request_timeout"))
                common = manager.get("common_http_protocol_options", {})
                add(f"{where} max_stream_duration", common.get("max_stream_duration"))
                add(f"{where} max_connection_duration", common.get("max_connection_duration"))
                for host in manager.get("route_config", {}).get("virtual_hosts", []):
                    for route in host["routes"]:
                        action, prefix = route.get("route"), route["match"].get("prefix")
                        if action is None or prefix is None or not SYNTHESIZE.startswith(prefix):
                            continue
                        at = f"{where} route {prefix}"
                        # Envoy's default route timeout is 15 s: a streaming route must set one.
                        add(f"{at} timeout", action.get("timeout", "15s"))
                        cap = action.get("max_stream_duration", {})
                        add(f"{at} max_stream_duration", cap.get("max_stream_duration"))
    for cluster in config["static_resources"]["clusters"]:
        if cluster["name"] != "synth":
            continue
        for options in cluster.get("typed_extension_protocol_options", {}).values():
            common = options.get("common_http_protocol_options", {})
            add("cluster synth max_stream_duration", common.get("max_stream_duration"))
            add("cluster synth max_connection_duration", common.get("max_connection_duration"))
    return limits


def _envoy_config(objects: list[Obj]) -> dict[str, Any]:
    (config_map,) = [
        o for o in of_kind(objects, "ConfigMap") if o["metadata"]["name"].startswith("envoy-config")
    ]
    config: dict[str, Any] = yaml.safe_load(config_map["data"]["envoy.yaml"])
    return config


def test_the_synthesize_route_is_found_and_capped(overlay: str) -> None:
    # Guards the check below against passing because it found nothing to check.
    limits = envoy_stream_limits(_envoy_config(render(overlay)))
    assert any("route /kokoropay.synth.v1.SynthService/" in where for where in limits), limits


def test_envoy_lets_a_stream_outlast_the_gateways_limit(overlay: str) -> None:
    objects = render(overlay)
    limit = gateway_limit(objects)
    for where, seconds in envoy_stream_limits(_envoy_config(objects)).items():
        assert seconds > limit, f"Envoy's {where} ({seconds:g} s) ends streams before the gateway"


def test_the_generator_writes_limits_above_the_default(tmp_path: Path) -> None:
    # What `make envoy-config` writes next, before it is checked in.
    out = tmp_path / "envoy.yaml"
    assert kokoro_pay(["envoy-config", "--from-descriptors", *DEPLOY_TARGETS, f"--out={out}"]) == 0
    limits = envoy_stream_limits(yaml.safe_load(out.read_text()))
    assert limits
    default = GatewaySettings.model_fields["max_stream_seconds"].default
    assert all(seconds > default for seconds in limits.values()), limits


def test_the_ingress_lets_a_stream_outlast_the_gateways_limit(overlay: str) -> None:
    objects = render(overlay)
    limit = gateway_limit(objects)
    # The gateway's own. The dashboard's also relays audio (the playground), but from its own
    # client of the gateway, whose read deadline bounds every pause: its Ingress outlasts that
    # instead (test_manifests.py, test_no_dashboard_wait_outlasts_the_ingress_or_the_drain).
    ingress = named(objects, "Ingress", "gateway")
    annotations = ingress["metadata"].get("annotations", {})
    for name in NGINX_TIMEOUTS:
        value = annotations.get(f"nginx.ingress.kubernetes.io/{name}")
        seconds = float(value) if value is not None else NGINX_DEFAULT_SECONDS
        assert seconds > limit, f"the Ingress's {name} ({seconds:g} s) ends streams first"
