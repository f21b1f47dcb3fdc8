"""The address a request came from: what sign-in and sign-up throttling count by.

Behind the Ingress every connection comes from the controller, so the client's address is in
`X-Forwarded-For`. That header is whatever the client wrote plus what each proxy appended, so
it is read from the right: addresses of trusted proxies (DASHBOARD_TRUSTED_PROXIES) are
skipped, and the first other one is the client. A connection from anyone else is its own
address, header ignored: otherwise each attempt could claim a fresh address and never be
throttled.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence

from services.dashboard.settings import Network

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
    """What auth counts attempts by: the address, or an IPv6 address's /64, since one
    customer's connection typically holds a whole /64 and could rotate through it."""
    ip = _ip(address)
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is None:
        return str(ipaddress.ip_network(f"{ip}/64", strict=False))
    return address


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
