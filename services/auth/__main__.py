"""`python -m services.auth`: settings → secrets → store → servicer → server."""

from __future__ import annotations

import asyncio
import sys

from kokoropay.auth.v1 import auth_pb2_grpc
from pydantic import SecretStr

from services.auth.keys import KeyHasher
from services.auth.servicer import ADMIN_METHODS, SERVICE_NAME, AuthServicer
from services.auth.settings import AuthSettings
from services.auth.store import MIGRATIONS_DIR, SCHEMA, AuthStore
from services.common.interceptors import OperatorAuthInterceptor
from services.common.logs import configure_logging
from services.common.postgres import apply_migrations
from services.common.server import ServiceSpec, serve
from services.common.settings import load_settings, read_secret


def _secret_or_exit(value: SecretStr | None, env_name: str, file_name: str) -> str:
    secret = read_secret(value.get_secret_value() if value else None, file_name)
    if not secret:
        sys.exit(f"error: auth needs {env_name} or the file .data/{file_name}")
    return secret


def main() -> None:
    settings = load_settings(AuthSettings)
    configure_logging("auth", settings.log_level)
    operator_token = _secret_or_exit(
        settings.operator_token,
        "KOKOROPAY_OPERATOR_TOKEN",
        "operator-token",
    )
    hash_secret = _secret_or_exit(
        settings.key_hash_secret,
        "AUTH_KEY_HASH_SECRET",
        "key-hash-secret",
    )
    try:
        hasher = KeyHasher(hash_secret)
    except ValueError as exc:
        sys.exit(f"error: {exc}")

    store = AuthStore(
        settings.database_url,
        min_size=settings.pool_min_size,
        max_size=settings.pool_max_size,
        acquire_timeout=settings.pool_timeout_seconds,
    )
    servicer = AuthServicer(store, hasher)

    async def startup() -> None:
        await apply_migrations(settings.database_url, SCHEMA, MIGRATIONS_DIR)
        await store.open()

    spec = ServiceSpec(
        names=[SERVICE_NAME],
        register=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server),
        startup=startup,
        shutdown=store.close,
        interceptors=[OperatorAuthInterceptor(ADMIN_METHODS, operator_token)],
    )
    asyncio.run(serve(spec, settings.bind_address, settings.grace_seconds))


if __name__ == "__main__":
    main()
