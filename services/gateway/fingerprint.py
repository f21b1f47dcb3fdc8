"""A request's fingerprint: what one Idempotency-Key may name, and how two requests differ.

A fingerprint is `field=digest,…` over the request as understood (billing.SpeechOrder says
which fields). The ledger stores it opaquely with the key; when a retry's fingerprint differs,
comparing the two field by field tells the customer which field changed, without the ledger ever
holding the text itself.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable


def fingerprint(fields: Iterable[tuple[str, str]]) -> str:
    return ",".join(f"{name}={_digest(value)}" for name, value in fields)


def fields_that_differ(stored: str, current: str) -> list[str]:
    """The fields in which two fingerprints differ, in `current`'s order."""
    before = dict(_pairs(stored))
    return [name for name, digest in _pairs(current) if before.get(name) != digest]


def _pairs(text: str) -> list[tuple[str, str]]:
    return [(name, digest) for name, _, digest in (part.partition("=") for part in text.split(","))]


def _digest(value: str) -> str:
    # 64 bits of SHA-256: a retry that differs by accident never collides in practice.
    return hashlib.sha256(value.encode()).hexdigest()[:16]
