"""`python -m services.auth`: settings → secrets → store, passwords, people → servicer →
server."""

from __future__ import annotations

import asyncio
import sys

from kokoropay.auth.v1 import auth_pb2_grpc

from services.auth.keys import KeyHasher
from services.auth.limits import LimitPolicy
from services.auth.passwords import HashCost, Passwords
from services.auth.people import People, Rules
from services.auth.servicer import ERRORS, SERVICE_NAME, AuthServicer
from services.auth.settings import AuthSettings
from services.auth.store import AuthStore
from services.common.logs import configure_logging
from services.common.mesh import KEY_HASH_SECRET_ENV, KEY_HASH_SECRET_FILE
from services.common.server import ServiceSpec, serve
from services.common.settings import load_settings
from services.common.tracing import traces


def main() -> None:
    settings = load_settings(AuthSettings)
    configure_logging("auth", settings.log_level)
    hash_secret = settings.key_hash_secret_value()
    if not hash_secret:
        sys.exit(
            f"error: auth needs {KEY_HASH_SECRET_ENV} or the file .data/{KEY_HASH_SECRET_FILE}"
        )
    try:
        hasher = KeyHasher(hash_secret)
    except ValueError as exc:
        sys.exit(f"error: {exc}")

    store = AuthStore()
    passwords = Passwords(
        HashCost(
            time_cost=settings.password_time_cost,
            memory_kib=settings.password_memory_kib,
            parallelism=settings.password_parallelism,
        ),
        concurrency=settings.password_hash_concurrency,
    )
    rules = Rules.of(settings)
    servicer = AuthServicer(
        store,
        hasher,
        People(store, passwords, rules),
        max_keys_per_account=settings.max_keys_per_account,
        session_idle=rules.lifetimes.idle,
        limits=LimitPolicy.of(settings),
    )

    async def startup() -> None:
        await store.open(settings)
        await passwords.warm_up()

    async def shutdown() -> None:
        await store.close()
        passwords.close()

    spec = ServiceSpec(
        names=[SERVICE_NAME],
        register=lambda server: auth_pb2_grpc.add_AuthServiceServicer_to_server(servicer, server),
        errors=ERRORS,
        startup=startup,
        shutdown=shutdown,
    )
    with traces("auth"):
        asyncio.run(serve(spec, settings))


if __name__ == "__main__":
    main()
