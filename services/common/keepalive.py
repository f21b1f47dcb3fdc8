"""HTTP/2 keepalive for the mesh's long synthesis streams, written once.

Servers and clients ping every 30 s so idle proxies and load balancers never drop a stream that
is waiting on the model; the server lets clients ping that often. The Envoy config generator
reads the same numbers, so all three hops agree.
"""

from __future__ import annotations

KEEPALIVE_TIME_MS = 30_000
KEEPALIVE_TIMEOUT_MS = 10_000
# The fastest a client may ping without data before the server calls it abusive.
MIN_PING_INTERVAL_MS = 10_000

CHANNEL_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.keepalive_permit_without_calls", 1),
]

SERVER_OPTIONS: list[tuple[str, int]] = [
    ("grpc.keepalive_time_ms", KEEPALIVE_TIME_MS),
    ("grpc.keepalive_timeout_ms", KEEPALIVE_TIMEOUT_MS),
    ("grpc.http2.min_ping_interval_without_data_ms", MIN_PING_INTERVAL_MS),
    ("grpc.keepalive_permit_without_calls", 1),
]
