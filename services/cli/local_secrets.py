"""Secrets for the local run, created once under `.data/` and reused by every later start.

In a cluster they come from Kubernetes Secrets instead (deploy/k8s); the services read the
environment first and fall back to these files.
"""

from __future__ import annotations

import os
import secrets
from dataclasses import dataclass
from pathlib import Path

from services.common.mesh import (
    KEY_HASH_SECRET_ENV,
    KEY_HASH_SECRET_FILE,
    URL_SIGNING_SECRET_ENV,
    URL_SIGNING_SECRET_FILE,
)


@dataclass(frozen=True)
class LocalSecrets:
    key_hash_secret: str
    # Signs the predictions' output URLs (PREDICTIONS_URL_SIGNING_SECRET).
    url_signing_secret: str


def _read_or_create(path: Path) -> str:
    if path.exists():
        return path.read_text().strip()
    value = secrets.token_urlsafe(32)
    # Created owner-only from the first byte: whoever has one can forge stored key hashes or
    # output URLs.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as file:
        file.write(value + "\n")
    return value


def ensure_local_secrets(data_dir: Path) -> LocalSecrets:
    data_dir.mkdir(parents=True, exist_ok=True)
    return LocalSecrets(
        key_hash_secret=os.environ.get(KEY_HASH_SECRET_ENV)
        or _read_or_create(data_dir / KEY_HASH_SECRET_FILE),
        url_signing_secret=os.environ.get(URL_SIGNING_SECRET_ENV)
        or _read_or_create(data_dir / URL_SIGNING_SECRET_FILE),
    )
