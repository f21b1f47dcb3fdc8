"""AuthService over gRPC: validates requests, then asks the store.

Input is checked completely before anything is written, so a refused request leaves the
database as it was. Which methods are admin-only is derived from the service descriptor:
everything but VerifyKey, including any method added later unless it is listed as public.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import grpc
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth import ids
from services.auth.keys import KeyHasher, generate_key, looks_like_key
from services.auth.store import (
    Account,
    AccountNameTaken,
    AccountNotFound,
    ApiKey,
    AuthStore,
    DatabaseUnavailable,
    KeyNotFound,
)
from services.common.errors import abort
from services.common.timestamps import timestamp

SERVICE_NAME: str = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
# Callable without operator credentials: the gateway verifies customers' keys.
PUBLIC_METHODS = frozenset({f"/{SERVICE_NAME}/VerifyKey"})
ADMIN_METHODS = (
    frozenset(
        f"/{SERVICE_NAME}/{method.name}"
        for method in auth_pb2.DESCRIPTOR.services_by_name["AuthService"].methods
    )
    - PUBLIC_METHODS
)

DOMAIN = "auth.kokoropay"
_log = logging.getLogger("auth.servicer")
MAX_NAME_LENGTH = 64


def name_problem(name: str, *, required: bool) -> str | None:
    """Why `name` cannot be an account or key name, or None when it can."""
    if not name:
        return "is required" if required else None
    if len(name) > MAX_NAME_LENGTH:
        return f"must be at most {MAX_NAME_LENGTH} characters"
    if not name.isprintable():
        return "must contain only printable characters"
    if name != name.strip():
        return "must not start or end with whitespace"
    return None


class AuthServicer(auth_pb2_grpc.AuthServiceServicer):
    def __init__(self, store: AuthStore, hasher: KeyHasher) -> None:
        self._store = store
        self._hasher = hasher

    async def CreateAccount(
        self, request: auth_pb2.CreateAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateAccountResponse:
        await _check_name(context, "name", request.name, required=True)
        async with _database(context):
            try:
                account = await self._store.create_account(request.name)
            except AccountNameTaken:
                await abort(
                    context,
                    grpc.StatusCode.ALREADY_EXISTS,
                    f"an account named {request.name!r} already exists",
                )
        return auth_pb2.CreateAccountResponse(account=_account_message(account))

    async def GetAccount(
        self, request: auth_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetAccountResponse:
        lookup = request.WhichOneof("lookup")
        if lookup == "account_id":
            await _check_account_id(context, request.account_id)
        elif lookup == "name":
            await _check_name(context, "name", request.name, required=True)
        else:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "set account_id or name")
        async with _database(context):
            try:
                if lookup == "account_id":
                    account = await self._store.get_account_by_id(request.account_id)
                else:
                    account = await self._store.get_account_by_name(request.name)
            except AccountNotFound:
                await abort(context, grpc.StatusCode.NOT_FOUND, "no such account")
        return auth_pb2.GetAccountResponse(account=_account_message(account))

    async def CreateKey(
        self, request: auth_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        await _check_account_id(context, request.account_id)
        await _check_name(context, "name", request.name, required=False)
        new_key = generate_key()
        async with _database(context):
            try:
                key = await self._store.create_key(
                    request.account_id,
                    request.name,
                    new_key.visible_prefix,
                    self._hasher.hash(new_key.plaintext),
                )
            except AccountNotFound:
                await abort(context, grpc.StatusCode.NOT_FOUND, "no such account")
        return auth_pb2.CreateKeyResponse(key=_key_message(key), plaintext=new_key.plaintext)

    async def ListKeys(
        self, request: auth_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListKeysResponse:
        await _check_account_id(context, request.account_id)
        async with _database(context):
            try:
                keys = await self._store.list_keys(request.account_id)
            except AccountNotFound:
                await abort(context, grpc.StatusCode.NOT_FOUND, "no such account")
        return auth_pb2.ListKeysResponse(keys=[_key_message(key) for key in keys])

    async def RevokeKey(
        self, request: auth_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeKeyResponse:
        if not request.key_id:
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "key_id is required")
        if not ids.is_id(ids.KEY, request.key_id):
            await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "key_id is not a key id (key_…)")
        async with _database(context):
            try:
                key = await self._store.revoke_key(request.key_id)
            except KeyNotFound:
                await abort(context, grpc.StatusCode.NOT_FOUND, "no such key")
        return auth_pb2.RevokeKeyResponse(key=_key_message(key))

    async def VerifyKey(
        self, request: auth_pb2.VerifyKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.VerifyKeyResponse:
        # Strings that cannot be keys are answered here, so floods of junk never reach the pool.
        match = None
        if looks_like_key(request.key):
            async with _database(context):
                match = await self._store.find_key(self._hasher.hash(request.key))
        if match is None:
            await abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "invalid API key",
                reason="KEY_INVALID",
                domain=DOMAIN,
            )
        if match.revoked:
            await abort(
                context,
                grpc.StatusCode.UNAUTHENTICATED,
                "API key has been revoked",
                reason="KEY_REVOKED",
                domain=DOMAIN,
            )
        return auth_pb2.VerifyKeyResponse(account_id=match.account_id, key_id=match.key_id)


async def _check_name(
    context: grpc.aio.ServicerContext, field: str, value: str, *, required: bool
) -> None:
    problem = name_problem(value, required=required)
    if problem is not None:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, f"{field} {problem}")


async def _check_account_id(context: grpc.aio.ServicerContext, account_id: str) -> None:
    if not account_id:
        await abort(context, grpc.StatusCode.INVALID_ARGUMENT, "account_id is required")
    if not ids.is_id(ids.ACCOUNT, account_id):
        await abort(
            context, grpc.StatusCode.INVALID_ARGUMENT, "account_id is not an account id (acct_…)"
        )


@asynccontextmanager
async def _database(context: grpc.aio.ServicerContext) -> AsyncIterator[None]:
    """An unreachable database is UNAVAILABLE (retryable); any other failure is INTERNAL.

    The database's own words (SQL, constraint names) stay in the log, next to the request id.
    """
    try:
        yield
    except DatabaseUnavailable:
        await abort(context, grpc.StatusCode.UNAVAILABLE, "the auth database is unavailable")
    except grpc.aio.AbortError:
        raise
    except Exception:
        _log.exception("auth request failed")
        await abort(context, grpc.StatusCode.INTERNAL, "the auth service failed; see its logs")


def _account_message(account: Account) -> auth_pb2.Account:
    return auth_pb2.Account(
        id=account.id, name=account.name, create_time=timestamp(account.create_time)
    )


def _key_message(key: ApiKey) -> auth_pb2.ApiKey:
    message = auth_pb2.ApiKey(
        id=key.id,
        account_id=key.account_id,
        name=key.name,
        prefix=key.prefix,
        create_time=timestamp(key.create_time),
    )
    if key.revoke_time is not None:
        message.revoke_time.CopyFrom(timestamp(key.revoke_time))
    return message
