"""Where the mesh's parts listen by default and where its secrets and certificates live.

Every default port and secret file name is written here once: the services' settings, the
gateway's upstream addresses, the local runner and the operator CLI all read them from here.
"""

from __future__ import annotations

# Default ports on one machine; in a cluster each service keeps its own but the Service objects
# (deploy/k8s) publish the same numbers.
PORTS: dict[str, int] = {
    "auth": 50051,
    "ledger": 50052,
    "synth": 50053,
    "predictions": 50054,
    "gateway": 8000,
    "dashboard": 8080,
}


# Plaintext ports that answer grpc.health.v1 alone, for probes that carry no certificate.
HEALTH_PORTS: dict[str, int] = {
    "auth": 50061,
    "ledger": 50062,
    "synth": 50063,
    "predictions": 50064,
}


# The predictions worker (`python -m services.predictions.worker`) serves no RPC: this plaintext
# port answers grpc.health.v1 alone, for its probes.
PREDICTIONS_WORKER_HEALTH_PORT = 50065


# Plaintext HTTP ports that serve Prometheus' /metrics alone (services/common/metrics.py), never
# the service's own port: that one is mutual TLS or public. 0 in a `<SERVICE>_METRICS_PORT`
# turns the exporter off.
METRICS_PORTS: dict[str, int] = {
    "auth": 9101,
    "ledger": 9102,
    "synth": 9103,
    "predictions": 9104,
    "gateway": 9105,
    "dashboard": 9106,
}

# The predictions worker is a process of its own with the service's settings: its exporter
# needs a port of its own too.
PREDICTIONS_WORKER_METRICS_PORT = 9107


def local_address(service: str) -> str:
    """`host:port` of a service on this machine at its default port."""
    return f"127.0.0.1:{PORTS[service]}"


# The local run's certificates: `.data/pki/` holds the CA and one folder per identity.
PKI_DIR = "pki"

# Secret files the local run writes under `.data/` (KOKOROPAY_SECRETS_DIR elsewhere); each is
# also settable through the environment variable beside it.
KEY_HASH_SECRET_FILE = "key-hash-secret"
KEY_HASH_SECRET_ENV = "AUTH_KEY_HASH_SECRET"
# Signs the predictions' output URLs (HMAC-SHA256); whoever has it can mint working links.
URL_SIGNING_SECRET_FILE = "predictions-url-signing-secret"
URL_SIGNING_SECRET_ENV = "PREDICTIONS_URL_SIGNING_SECRET"
