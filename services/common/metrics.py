"""Each process's Prometheus exporter: `/metrics` in plain HTTP on a port of its own.

Never on the service's own port: that one is mutual TLS (gRPC) or public (the HTTP services),
and Prometheus has no mesh certificate, nor should strangers read our traffic. The port is the
setting `<SERVICE>_METRICS_PORT` (services/common/settings.py; 0 turns it off); a process that
is not a service of its own name, such as the predictions worker, passes a port of its own.

Every process exports its default registry (`prometheus_client.REGISTRY`): the gRPC metrics of
its servers and clients (grpc_metrics.py), its service's own (`services/<name>/metrics.py`)
and prometheus_client's process collector (CPU, memory, open files). Scrapes are answered by
prometheus_client's threaded server, off the event loop, so a slow scrape never delays an RPC.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import REGISTRY, CollectorRegistry, disable_created_metrics
from prometheus_client.exposition import start_http_server

_log = logging.getLogger("metrics")


@dataclass(frozen=True)
class MetricsServer:
    """A running exporter; `stop` closes its port."""

    httpd: WSGIServer
    thread: threading.Thread

    @property
    def port(self) -> int:
        return int(self.httpd.server_port)

    def stop(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(timeout=5)


def start_metrics_server(
    host: str, port: int, registry: CollectorRegistry = REGISTRY
) -> MetricsServer | None:
    """Serve `registry` on host:port from a daemon thread; None when `port` is 0 (off).

    Exits with one line when the port is taken, like the service ports do.
    """
    if port == 0:
        return None
    # prometheus_client adds a `_created` series beside every counter and histogram; Prometheus
    # makes nothing of them in the text format, and they would double what it stores.
    disable_created_metrics()
    try:
        httpd, thread = start_http_server(port, addr=host, registry=registry)
    except OSError as error:
        raise SystemExit(
            f"error: cannot serve metrics on {host}:{port} ({error.strerror}): "
            "is another process using it?"
        ) from None
    _log.info("metrics on http://%s:%d/metrics", host, port, extra={"metrics_port": port})
    return MetricsServer(httpd, thread)
