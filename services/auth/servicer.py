"""AuthService over gRPC: validates requests, then asks the store.

Input is checked completely before anything is written, so a refused request leaves the
database as it was. Handlers raise; `ERRORS` is the one table that turns what they raise into a
status (services/common/errors.py). Who may call each RPC is declared in auth.proto.

| refusal                         | status           | reason                    |
|---------------------------------|------------------|---------------------------|
| a malformed field               | INVALID_ARGUMENT |                           |
| an account name already taken   | ALREADY_EXISTS   |                           |
| an unknown account or key       | NOT_FOUND        |                           |
| a key that does not verify      | UNAUTHENTICATED  | KEY_INVALID / KEY_REVOKED |
| the database out of reach       | UNAVAILABLE      |                           |
"""

from __future__ import annotations

import grpc
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc

from services.auth import ids
from services.auth.keys import KeyHasher, generate_key, looks_like_key
from services.auth.store import Account, AccountNameTaken, ApiKey, AuthStore
from services.common.errors import (
    ErrorTable,
    InvalidArgument,
    NotFound,
    ServiceError,
    Unavailable,
)
from services.common.timestamps import timestamp

SERVICE_NAME: str = auth_pb2.DESCRIPTOR.services_by_name["AuthService"].full_name
MAX_NAME_LENGTH = 64


class KeyRejected(ServiceError):
    """A presented API key that does not resolve to a live key."""


ERRORS = ErrorTable(
    "auth",
    {
        InvalidArgument: grpc.StatusCode.INVALID_ARGUMENT,
        AccountNameTaken: grpc.StatusCode.ALREADY_EXISTS,
        NotFound: grpc.StatusCode.NOT_FOUND,
        KeyRejected: grpc.StatusCode.UNAUTHENTICATED,
        Unavailable: grpc.StatusCode.UNAVAILABLE,
    },
)


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
        _check_name("name", request.name, required=True)
        account = await self._store.create_account(request.name)
        return auth_pb2.CreateAccountResponse(account=_account_message(account))

    async def GetAccount(
        self, request: auth_pb2.GetAccountRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.GetAccountResponse:
        lookup = request.WhichOneof("lookup")
        if lookup == "account_id":
            _check_account_id(request.account_id)
            account = await self._store.get_account_by_id(request.account_id)
        elif lookup == "name":
            _check_name("name", request.name, required=True)
            account = await self._store.get_account_by_name(request.name)
        else:
            raise InvalidArgument("set account_id or name")
        return auth_pb2.GetAccountResponse(account=_account_message(account))

    async def CreateKey(
        self, request: auth_pb2.CreateKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.CreateKeyResponse:
        _check_account_id(request.account_id)
        _check_name("name", request.name, required=False)
        new_key = generate_key()
        key = await self._store.create_key(
            request.account_id,
            request.name,
            new_key.visible_prefix,
            self._hasher.hash(new_key.plaintext),
        )
        return auth_pb2.CreateKeyResponse(key=_key_message(key), plaintext=new_key.plaintext)

    async def ListKeys(
        self, request: auth_pb2.ListKeysRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.ListKeysResponse:
        _check_account_id(request.account_id)
        keys = await self._store.list_keys(request.account_id)
        return auth_pb2.ListKeysResponse(keys=[_key_message(key) for key in keys])

    async def RevokeKey(
        self, request: auth_pb2.RevokeKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.RevokeKeyResponse:
        _check_id("key_id", request.key_id, ids.KEY, "a key id (key_…)")
        key = await self._store.revoke_key(request.key_id)
        return auth_pb2.RevokeKeyResponse(key=_key_message(key))

    async def VerifyKey(
        self, request: auth_pb2.VerifyKeyRequest, context: grpc.aio.ServicerContext
    ) -> auth_pb2.VerifyKeyResponse:
        # Strings that cannot be keys are answered here, so floods of junk never reach the pool.
        match = None
        if looks_like_key(request.key):
            match = await self._store.find_key(self._hasher.hash(request.key))
        if match is None:
            raise KeyRejected("invalid API key", reason="KEY_INVALID")
        if match.revoked:
            raise KeyRejected("API key has been revoked", reason="KEY_REVOKED")
        return auth_pb2.VerifyKeyResponse(account_id=match.account_id, key_id=match.key_id)


def _check_name(field: str, value: str, *, required: bool) -> None:
    problem = name_problem(value, required=required)
    if problem is not None:
        raise InvalidArgument(f"{field} {problem}")


def _check_account_id(account_id: str) -> None:
    _check_id("account_id", account_id, ids.ACCOUNT, "an account id (acct_…)")


def _check_id(field: str, value: str, prefix: str, kind: str) -> None:
    if not value:
        raise InvalidArgument(f"{field} is required")
    if not ids.is_id(prefix, value):
        raise InvalidArgument(f"{field} is not {kind}")


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
