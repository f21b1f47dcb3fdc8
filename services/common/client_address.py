"""The address a request came from: what the dashboard's sign-in throttle and the gateway's
invalid-key throttle count by. Pure functions over the peer, the header and the settings.

Behind the Ingress every connection comes from the controller, so the client's address is in
`X-Forwarded-For`. That header is whatever the client wrote plus what each proxy appended, so
it is read from the right: addresses of trusted proxies (DASHBOARD_TRUSTED_PROXIES,
GATEWAY_TRUSTED_PROXIES) are skipped, and the first other one is the client. A connection from
anyone else is its own address, header ignored: otherwise each attempt could claim a fresh
address and never be throttled. Uvicorn's own proxy-header handling stays off in both servers,
so the peer seen here is the socket's.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

Network = ipaddress.IPv4Network | ipaddress.IPv6Network

# A real chain is a few hops; anything longer is ignored past this, so parsing stays bounded.
MAX_FORWARDED_HOPS = 16
MAX_FORWARDED_LENGTH = 1024
UNKNOWN = "unknown"


def client_address(peer: str | None, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's IP address as text, or "unknown" when it cannot be told."""
    address = _ip(peer)
    if address is None:
        return UNKNOWN
    if not forwarded_for or not _trusted(address, trusted):
        return str(address)
    # The right end is what our proxies appended; a client may pad the left end at will.
    hops = forwarded_for[-MAX_FORWARDED_LENGTH:].split(",")[-MAX_FORWARDED_HOPS:]
    for hop in reversed(hops):
        forwarded = _ip(hop.strip())
        if forwarded is None:
            # Garbage in the chain: the last hop we could vouch for is as far as we can see.
            return str(address)
        address = forwarded
        if not _trusted(address, trusted):
            return str(address)
    return str(address)


def throttle_key(address: str) -> str:
    """What throttles count attempts by: the address, or an IPv6 address's /64, since one
    customer's connection typically holds a whole /64 and could rotate through it."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


def parse_networks(value: str) -> tuple[Network, ...]:
    """`10.0.0.0/8, 192.168.1.7` → networks; ValueError naming the entry that is not one."""
    networks = []
    for entry in (part.strip() for part in value.split(",")):
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
        except ValueError:
            raise ValueError(f"{entry!r} is not an IP address or CIDR") from None
    return tuple(networks)


def _ip(text: str | None) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    if not text or len(text) > 64:
        return None
    try:
        return ipaddress.ip_address(text)
    except ValueError:
        return None


def _trusted(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address, trusted: Sequence[Network]
) -> bool:
    return any(address.version == net.version and address in net for net in trusted)
