"""The Envoy bootstrap (v3) for what discovery found: one route per service, one cluster per target.

Every service becomes ONE route (`/<package.Service>/` → the cluster of its target) and every
target one cluster of HTTP/2 upstreams. What the service declares decides the route's timeouts:
a service with a server-streaming method (synth's Synthesize) gets no response timeout, only a
long stream cap and an idle timeout, because a 4096-character synthesis streams for minutes.
Unary-only services get a short timeout, so a hung pod fails the call instead of holding it.

Every hop is mutual TLS, and the caller's identity survives the proxy. Downstream, the listener
requires a client certificate from the mesh's CA (no certificate, or another CA's: no answer).
Upstream, Envoy presents its own certificate (`spiffe://kokoropay/envoy`) and accepts only the
pod whose certificate names the cluster's service (`spiffe://kokoropay/<cluster>`). In between,
Envoy replaces `x-forwarded-client-cert` with the URI of the certificate it verified
(SANITIZE_SET): whatever a client sent in that header is dropped, and the services believe it
only on a connection made with Envoy's certificate (services/common/identity.py).
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from services.cli.envoy.discovery import MESH_SERVICES, ConfigError, Service
from services.common.keepalive import KEEPALIVE_TIME_MS, KEEPALIVE_TIMEOUT_MS
from services.common.pki import spiffe_id


def _seconds(milliseconds: int) -> str:
    return f"{milliseconds / 1000:g}s"


# Unary RPCs are one indexed query each; a pod that takes longer is stuck, not busy.
UNARY_TIMEOUT = "15s"
# A long input streams for minutes on a CPU, up to an hour at speed 0.25 on a slow one: the
# gateway ends its own streams at GATEWAY_MAX_STREAM_SECONDS (3600) and charges what was
# delivered, so this cap sits above it and only stops a stream whose caller never does
# (tests/deploy/test_stream_limits.py).
STREAM_MAX_DURATION = "3900s"
# Time with no bytes either way. Generous: the first chunk waits for a free model slot.
STREAM_IDLE_TIMEOUT = "300s"
# The services' own keepalive (services/common/keepalive.py), so idle streams through the proxy
# are neither cut by middleboxes nor refused as ping floods.
UPSTREAM_KEEPALIVE = {
    "interval": _seconds(KEEPALIVE_TIME_MS),
    "timeout": _seconds(KEEPALIVE_TIMEOUT_MS),
}

_HCM = "type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3."
_ROUTER = "type.googleapis.com/envoy.extensions.filters.http.router.v3.Router"
_GRPC_STATS = "type.googleapis.com/envoy.extensions.filters.http.grpc_stats.v3.FilterConfig"
_TRANSCODER = (
    "type.googleapis.com/envoy.extensions.filters.http.grpc_json_transcoder.v3.GrpcJsonTranscoder"
)
_HTTP_OPTIONS = "type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions"
_TLS = "type.googleapis.com/envoy.extensions.transport_sockets.tls.v3."
_STDOUT_LOG = "type.googleapis.com/envoy.extensions.access_loggers.stream.v3.StdoutAccessLog"
_PREVIOUS_HOSTS = (
    "type.googleapis.com/envoy.extensions.retry.host.previous_hosts.v3.PreviousHostsPredicate"
)
_DOWNSTREAM_CONNECTIONS = (
    "type.googleapis.com/envoy.extensions.resource_monitors.downstream_connections.v3."
    "DownstreamConnectionsConfig"
)


@dataclass(frozen=True)
class Address:
    host: str
    port: int

    @classmethod
    def parse(cls, text: str) -> Address:
        host, sep, port = text.rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError(f"expected HOST:PORT, got {text!r}")
        return cls(host.strip("[]"), int(port))

    def __str__(self) -> str:
        return f"{self.host}:{self.port}"


@dataclass(frozen=True)
class EnvoyTls:
    """Where Envoy reads its certificate, key and the mesh's CA, as paths on Envoy's machine."""

    certificate: str
    private_key: str
    ca: str

    @classmethod
    def in_folder(cls, folder: str) -> EnvoyTls:
        """The cert-manager Secret layout (tls.crt, tls.key, ca.crt), as every identity uses."""
        folder = folder.rstrip("/")
        return cls(f"{folder}/tls.crt", f"{folder}/tls.key", f"{folder}/ca.crt")

    def context(self, *, alpn: Sequence[str], peer_uri: str | None = None) -> dict[str, Any]:
        """A CommonTlsContext: present Envoy's certificate, trust only the mesh's CA, and (for
        upstreams) accept only a peer whose certificate carries `peer_uri`."""
        validation: dict[str, Any] = {"trusted_ca": {"filename": self.ca}}
        if peer_uri is not None:
            validation["match_typed_subject_alt_names"] = [
                {"san_type": "URI", "matcher": {"exact": peer_uri}}
            ]
        return {
            "alpn_protocols": list(alpn),
            "tls_certificates": [
                {
                    "certificate_chain": {"filename": self.certificate},
                    "private_key": {"filename": self.private_key},
                }
            ],
            "validation_context": validation,
        }


@dataclass(frozen=True)
class Upstream:
    """One Envoy cluster: the pods of one kokoro-pay service and the gRPC services they serve."""

    name: str
    address: Address
    services: tuple[Service, ...]

    @property
    def streaming(self) -> bool:
        return any(service.streaming for service in self.services)


def _socket(address: Address) -> dict[str, Any]:
    return {"socket_address": {"address": address.host, "port_value": address.port}}


def _route(service: Service, cluster: str, *, streaming: bool) -> dict[str, Any]:
    action: dict[str, Any] = {
        "cluster": cluster,
        # UNAVAILABLE means the pod did no work (draining, starting, or gone), so another pod
        # may take the call; connect failures and refused streams never reached one at all.
        # Envoy never retries once response headers went out, so a stream is never replayed.
        "retry_policy": {
            "retry_on": "unavailable,connect-failure,refused-stream",
            "num_retries": 2,
            "retry_host_predicate": [
                {
                    "name": "envoy.retry_host_predicates.previous_hosts",
                    "typed_config": {"@type": _PREVIOUS_HOSTS},
                }
            ],
            "host_selection_retry_max_attempts": 3,
            "retry_back_off": {"base_interval": "0.05s", "max_interval": "0.5s"},
        },
    }
    if streaming:
        action["timeout"] = "0s"
        action["idle_timeout"] = STREAM_IDLE_TIMEOUT
        # A client's own grpc-timeout wins (0s: uncapped); without one the cap applies.
        action["max_stream_duration"] = {
            "max_stream_duration": STREAM_MAX_DURATION,
            "grpc_timeout_header_max": "0s",
        }
    else:
        action["timeout"] = UNARY_TIMEOUT
    return {"match": {"prefix": f"/{service.name}/"}, "route": action}


def _upstream_tls(upstream: Upstream, tls: EnvoyTls) -> dict[str, Any]:
    """Envoy's certificate to the pods, and only a pod of this service is believed.

    The check is the SPIFFE id, not the host name: a headless Service's pods are dialled by IP,
    and a certificate that names the right host but another service must not pass.
    """
    context: dict[str, Any] = {
        "common_tls_context": tls.context(alpn=["h2"], peer_uri=spiffe_id(upstream.name))
    }
    if not _is_ip(upstream.address.host):
        context["sni"] = upstream.address.host  # an IP literal is no server name (RFC 6066)
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {"@type": _TLS + "UpstreamTlsContext", **context},
    }


def _is_ip(host: str) -> bool:
    try:
        ipaddress.ip_address(host)
    except ValueError:
        return False
    return True


def _cluster(upstream: Upstream, tls: EnvoyTls) -> dict[str, Any]:
    return {
        "name": upstream.name,
        # STRICT_DNS on a headless Service: one host per ready pod, so balancing is per request
        # across pods, not per connection as through a ClusterIP. Envoy re-resolves every 5 s
        # (its default), so new pods join and removed ones leave within seconds.
        "type": "STRICT_DNS",
        "dns_lookup_family": "V4_PREFERRED",
        # Streams hold a pod for minutes: send each new one to the pod with fewest in flight.
        "lb_policy": "LEAST_REQUEST" if upstream.streaming else "ROUND_ROBIN",
        "connect_timeout": "2s",
        "typed_extension_protocol_options": {
            "envoy.extensions.upstreams.http.v3.HttpProtocolOptions": {
                "@type": _HTTP_OPTIONS,
                "explicit_http_config": {
                    "http2_protocol_options": {"connection_keepalive": UPSTREAM_KEEPALIVE}
                },
            }
        },
        "transport_socket": _upstream_tls(upstream, tls),
        # A pod that says NOT_SERVING (starting, or draining after SIGTERM) leaves the rotation
        # before DNS catches up. Checked on the service's own mTLS port, like the traffic: a pod
        # whose certificate Envoy cannot use leaves the rotation too. The plaintext health port
        # is for the kubelet, which has no certificate; Envoy has one and needs no second port.
        "health_checks": [
            {
                "timeout": "1s",
                "interval": "5s",
                "no_traffic_interval": "5s",
                "unhealthy_threshold": 2,
                "healthy_threshold": 1,
                "grpc_health_check": {"service_name": ""},
            }
        ],
        "load_assignment": {
            "cluster_name": upstream.name,
            "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(upstream.address)}}]}],
        },
    }


def _access_log() -> list[dict[str, Any]]:
    return [
        {
            "name": "envoy.access_loggers.stdout",
            "typed_config": {
                "@type": _STDOUT_LOG,
                "log_format": {
                    "json_format": {
                        "ts": "%START_TIME%",
                        "service": "envoy",
                        "request_id": "%REQ(X-REQUEST-ID)%",
                        "method": "%REQ(:PATH)%",
                        "grpc_status": "%GRPC_STATUS%",
                        "http_status": "%RESPONSE_CODE%",
                        "flags": "%RESPONSE_FLAGS%",
                        "duration_ms": "%DURATION%",
                        "upstream": "%UPSTREAM_HOST%",
                        "bytes_sent": "%BYTES_SENT%",
                    }
                },
            },
        }
    ]


def _downstream_tls(tls: EnvoyTls, *, http1: bool) -> dict[str, Any]:
    """Only callers with a certificate from the mesh's CA get an answer (a handshake failure
    otherwise); which caller it is, the services decide from what Envoy forwards."""
    return {
        "name": "envoy.transport_sockets.tls",
        "typed_config": {
            "@type": _TLS + "DownstreamTlsContext",
            "require_client_certificate": True,
            # gRPC is HTTP/2; JSON clients of the transcoder may speak HTTP/1.1.
            "common_tls_context": tls.context(alpn=["h2", "http/1.1"] if http1 else ["h2"]),
        },
    }


def _grpc_listener(
    upstreams: Sequence[Upstream],
    listen: Address,
    health_upstream: Upstream | None,
    transcode_descriptor: str | None,
    tls: EnvoyTls,
) -> dict[str, Any]:
    routes = [
        _route(service, upstream.name, streaming=service.streaming)
        for upstream in upstreams
        for service in upstream.services
    ]
    if health_upstream is not None:
        # Health and reflection go to the one upstream a client reaches through the proxy, so a
        # gateway's readiness check of "synth" asks a real, healthy synth pod.
        routes += [
            _route(
                Service(name=name, methods=(), streaming=True),
                health_upstream.name,
                streaming=True,
            )
            for name in MESH_SERVICES
        ]
    http_filters: list[dict[str, Any]] = [
        {
            "name": "envoy.filters.http.grpc_stats",
            # Per-method success/failure counters (cluster.<name>.grpc.<service>.<method>.*).
            "typed_config": {"@type": _GRPC_STATS, "stats_for_all_methods": True},
        }
    ]
    if transcode_descriptor is not None:
        http_filters.append(
            {
                "name": "envoy.filters.http.grpc_json_transcoder",
                "typed_config": {
                    "@type": _TRANSCODER,
                    "proto_descriptor": transcode_descriptor,
                    "services": [s.name for u in upstreams for s in u.services],
                    # The protos carry no google.api.http options: POST /<Service>/<Method>.
                    "auto_mapping": True,
                    "convert_grpc_status": True,
                    "print_options": {"preserve_proto_field_names": True},
                },
            }
        )
    http_filters.append({"name": "envoy.filters.http.router", "typed_config": {"@type": _ROUTER}})
    return {
        "name": "grpc",
        "address": _socket(listen),
        # What the pod's preStop drains (drain_listeners?inboundonly); the ops listener stays up
        # so probes and the scraper still get answers meanwhile.
        "traffic_direction": "INBOUND",
        "filter_chains": [
            {
                "transport_socket": _downstream_tls(tls, http1=transcode_descriptor is not None),
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM + "HttpConnectionManager",
                            "stat_prefix": "grpc",
                            "codec_type": "AUTO",
                            # Streams may legitimately stay quiet while queued for the model.
                            "stream_idle_timeout": STREAM_IDLE_TIMEOUT,
                            "common_http_protocol_options": {
                                "headers_with_underscores_action": "REJECT_REQUEST"
                            },
                            # The caller's identity for the services: the header becomes exactly
                            # what Envoy verified (By=, Hash=, URI= of the client certificate);
                            # a value the client sent is never passed on.
                            "forward_client_cert_details": "SANITIZE_SET",
                            "set_current_client_cert_details": {"uri": True},
                            "access_log": _access_log(),
                            "route_config": {
                                "name": "grpc",
                                "virtual_hosts": [
                                    {"name": "kokoropay", "domains": ["*"], "routes": routes}
                                ],
                            },
                            "http_filters": http_filters,
                        },
                    }
                ],
            }
        ],
    }


def _ops_listener(listen: Address) -> dict[str, Any]:
    """Readiness and Prometheus stats for the kubelet and the scraper, read-only.

    The admin interface itself listens on loopback only: it can drain, quit and reconfigure.
    """

    def get(path: str) -> dict[str, Any]:
        return {
            "match": {
                "path": path,
                "headers": [{"name": ":method", "string_match": {"exact": "GET"}}],
            },
            "route": {"cluster": "envoy_admin", "timeout": "5s"},
        }

    return {
        "name": "ops",
        "address": _socket(listen),
        "filter_chains": [
            {
                "filters": [
                    {
                        "name": "envoy.filters.network.http_connection_manager",
                        "typed_config": {
                            "@type": _HCM + "HttpConnectionManager",
                            "stat_prefix": "ops",
                            "route_config": {
                                "name": "ops",
                                "virtual_hosts": [
                                    {
                                        "name": "ops",
                                        "domains": ["*"],
                                        "routes": [
                                            get("/ready"),
                                            get("/stats/prometheus"),
                                            {
                                                "match": {"prefix": "/"},
                                                "direct_response": {"status": 404},
                                            },
                                        ],
                                    }
                                ],
                            },
                            "http_filters": [
                                {
                                    "name": "envoy.filters.http.router",
                                    "typed_config": {"@type": _ROUTER},
                                }
                            ],
                        },
                    }
                ]
            }
        ],
    }


def build_config(
    upstreams: Sequence[Upstream],
    *,
    listen: Address,
    admin: Address,
    tls: EnvoyTls,
    ops_listen: Address | None = None,
    health_upstream: str | None = None,
    transcode_descriptor: str | None = None,
) -> dict[str, Any]:
    """The Envoy bootstrap (v3) proxying gRPC to `upstreams`, mutual TLS on both sides with
    the certificate `tls` names."""
    if not upstreams:
        raise ConfigError("no targets: name at least one with --target NAME=HOST:PORT")
    owners: dict[str, str] = {}
    for upstream in upstreams:
        if not upstream.services:
            raise ConfigError(f"{upstream.name} serves no gRPC service besides health/reflection")
        for service in upstream.services:
            if service.name in owners:
                raise ConfigError(
                    f"{service.name} is served by both {owners[service.name]} and {upstream.name}"
                )
            owners[service.name] = upstream.name
    by_name = {upstream.name: upstream for upstream in upstreams}
    if health_upstream is None and len(upstreams) == 1:
        health_upstream = upstreams[0].name
    if health_upstream is not None and health_upstream not in by_name:
        raise ConfigError(f"--health-upstream {health_upstream} is not one of the targets")
    health = by_name[health_upstream] if health_upstream is not None else None

    listeners = [_grpc_listener(upstreams, listen, health, transcode_descriptor, tls)]
    clusters = [_cluster(upstream, tls) for upstream in upstreams]
    if ops_listen is not None:
        listeners.append(_ops_listener(ops_listen))
        clusters.append(
            {
                "name": "envoy_admin",
                "type": "STATIC",
                "connect_timeout": "1s",
                "load_assignment": {
                    "cluster_name": "envoy_admin",
                    "endpoints": [{"lb_endpoints": [{"endpoint": {"address": _socket(admin)}}]}],
                },
            }
        )
    return {
        "admin": {"address": _socket(admin)},
        "static_resources": {"listeners": listeners, "clusters": clusters},
        # Without a limit a connection flood exhausts file descriptors before anything sheds.
        "overload_manager": {
            "resource_monitors": [
                {
                    "name": "envoy.resource_monitors.global_downstream_max_connections",
                    "typed_config": {
                        "@type": _DOWNSTREAM_CONNECTIONS,
                        "max_active_downstream_connections": 50_000,
                    },
                }
            ]
        },
    }


def render_yaml(config: dict[str, Any], provenance: str) -> str:
    import yaml  # a dev/ops dependency, only needed to write the file

    header = (
        "# Generated by `kokoro-pay envoy-config` — do not edit; regenerate instead.\n"
        f"# {provenance}\n"
    )
    return header + yaml.safe_dump(config, sort_keys=False, default_flow_style=False, width=100)
