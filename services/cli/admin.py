"""Operator actions over the real gRPC services: what the CLI and the local run's bootstrap do.

An account lives in two places by design: auth owns its identity, keys and the person who signs
in for it, the ledger its credits. Creating one is therefore auth.CreateAccount, then
ledger.OpenAccount and Grant.
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from types import TracebackType

import grpc
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from kokoropay.predictions.v1 import predictions_pb2, predictions_pb2_grpc

from services.common.channels import open_channel
from services.common.mesh import local_address
from services.common.pki import TlsIdentity


@dataclass(frozen=True)
class CreatedKey:
    key: auth_pb2.ApiKey
    plaintext: str


class AdminClient:
    """Operator calls on auth, ledger and predictions; use as
    `async with AdminClient(...) as admin:`."""

    def __init__(
        self,
        auth_address: str,
        ledger_address: str,
        tls: TlsIdentity,
        predictions_address: str = local_address("predictions"),
    ) -> None:
        """`tls` is the operator's certificate: it is what proves the OPERATOR role."""
        self.auth_address = auth_address
        self.ledger_address = ledger_address
        self._auth_channel = open_channel(auth_address, tls)
        self._ledger_channel = open_channel(ledger_address, tls)
        self._predictions_channel = open_channel(predictions_address, tls)
        self.auth = auth_pb2_grpc.AuthServiceStub(self._auth_channel)
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self._ledger_channel)
        self.predictions = predictions_pb2_grpc.PredictionServiceStub(self._predictions_channel)

    async def __aenter__(self) -> AdminClient:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self._auth_channel.close()
        await self._ledger_channel.close()
        await self._predictions_channel.close()

    async def find_account(self, reference: str) -> auth_pb2.Account:
        """An account by name, or by id when no account has that name."""
        try:
            response = await self.auth.GetAccount(auth_pb2.GetAccountRequest(name=reference))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.NOT_FOUND:
                raise
            response = await self.auth.GetAccount(auth_pb2.GetAccountRequest(account_id=reference))
        return response.account

    async def create_account(
        self, name: str, credits: int = 0, unlimited: bool = False
    ) -> tuple[auth_pb2.Account, ledger_pb2.GetBalanceResponse]:
        """Create the account in auth, open its balance, grant the opening credits.

        Resumable: when the name already exists (a run that stopped after auth, or a repeat),
        that account is opened again, which the ledger treats as a no-op, and the opening
        grant, keyed on the account id, adds nothing the second time.
        """
        try:
            response = await self.auth.CreateAccount(auth_pb2.CreateAccountRequest(name=name))
        except grpc.aio.AioRpcError as error:
            if error.code() != grpc.StatusCode.ALREADY_EXISTS:
                raise
            account = (await self.auth.GetAccount(auth_pb2.GetAccountRequest(name=name))).account
        else:
            account = response.account
        balance = (
            await self.ledger.OpenAccount(ledger_pb2.OpenAccountRequest(account_id=account.id))
        ).balance
        if credits:
            # Keyed on the account so a retried bootstrap cannot grant the opening credits twice.
            balance = await self.grant(account.id, credits, f"opening-grant:{account.id}")
        if unlimited:
            balance = await self.set_unlimited(account.id, True)
        return account, balance

    async def grant(
        self, account_id: str, amount: int, idempotency_key: str | None = None
    ) -> ledger_pb2.GetBalanceResponse:
        request = ledger_pb2.GrantRequest(
            account_id=account_id,
            amount=amount,
            idempotency_key=idempotency_key or f"cli-grant:{uuid.uuid4().hex}",
        )
        return (await self.ledger.Grant(request)).balance

    async def set_unlimited(
        self, account_id: str, unlimited: bool
    ) -> ledger_pb2.GetBalanceResponse:
        request = ledger_pb2.SetUnlimitedRequest(account_id=account_id, unlimited=unlimited)
        return (await self.ledger.SetUnlimited(request)).balance

    async def balance(self, account_id: str) -> ledger_pb2.GetBalanceResponse:
        return await self.ledger.GetBalance(ledger_pb2.GetBalanceRequest(account_id=account_id))

    async def verify_books(self) -> ledger_pb2.VerifyResponse:
        """The ledger's own check of its books, after expiring what is overdue."""
        return await self.ledger.Verify(ledger_pb2.VerifyRequest())

    async def recent_entries(self, account_id: str) -> list[ledger_pb2.Entry]:
        """The newest page of the account's journal, newest first."""
        request = ledger_pb2.ListEntriesRequest(account_id=account_id)
        return list((await self.ledger.ListEntries(request)).entries)

    async def create_key(self, account_id: str, name: str = "") -> CreatedKey:
        response = await self.auth.CreateKey(
            auth_pb2.CreateKeyRequest(account_id=account_id, name=name)
        )
        return CreatedKey(key=response.key, plaintext=response.plaintext)

    async def list_keys(self, account_id: str) -> list[auth_pb2.ApiKey]:
        response = await self.auth.ListKeys(auth_pb2.ListKeysRequest(account_id=account_id))
        return list(response.keys)

    async def revoke_key(self, key_id: str) -> auth_pb2.ApiKey:
        response = await self.auth.RevokeKey(auth_pb2.RevokeKeyRequest(key_id=key_id))
        return response.key

    async def get_account_limits(self, account_id: str) -> auth_pb2.AccountLimitsResponse:
        """The account's limits per key: its overrides (0: the default) and those in force."""
        request = auth_pb2.GetAccountLimitsRequest(account_id=account_id)
        response: auth_pb2.AccountLimitsResponse = await self.auth.GetAccountLimits(request)
        return response

    async def set_account_limits(
        self, account_id: str, **changes: int
    ) -> auth_pb2.AccountLimitsResponse:
        """Override the account's limits named in `changes` (auth_pb2.KeyLimits fields; 0 goes
        back to the default) and keep its other overrides. SetAccountLimits replaces all four, so
        the current ones are read first; two operators changing one account at once may each
        undo the other's change."""
        overrides = (await self.get_account_limits(account_id)).overrides
        for name, value in changes.items():
            setattr(overrides, name, value)
        request = auth_pb2.SetAccountLimitsRequest(account_id=account_id, overrides=overrides)
        response: auth_pb2.AccountLimitsResponse = await self.auth.SetAccountLimits(request)
        return response

    async def create_user(self, account_id: str, email: str, password: str) -> auth_pb2.User:
        """Give an existing account the person who signs in to the dashboard for it."""
        request = auth_pb2.CreateUserRequest(account_id=account_id, email=email, password=password)
        return (await self.auth.CreateUser(request)).user

    async def reset_password(self, email: str, password: str) -> auth_pb2.ResetPasswordResponse:
        """Set a person's password without the current one; all their sessions end."""
        request = auth_pb2.ResetPasswordRequest(email=email, new_password=password)
        response: auth_pb2.ResetPasswordResponse = await self.auth.ResetPassword(request)
        return response

    async def webhook_secret(self, account_id: str, rotate: bool = False) -> str:
        """The account's webhook signing secret (Standard Webhooks), rotated first if asked."""
        if rotate:
            request = predictions_pb2.RotateWebhookSecretRequest(account_id=account_id)
            return (await self.predictions.RotateWebhookSecret(request)).secret
        lookup = predictions_pb2.GetWebhookSecretRequest(account_id=account_id)
        return (await self.predictions.GetWebhookSecret(lookup)).secret

    async def key_is_live(self, account_id: str, key_id: str) -> bool:
        """Whether the account still has the key, unrevoked. (The operator may not call
        VerifyKey, the gateway's; the account's key list says as much.)"""
        try:
            keys = (await self.auth.ListKeys(auth_pb2.ListKeysRequest(account_id=account_id))).keys
        except grpc.aio.AioRpcError as error:
            if error.code() == grpc.StatusCode.NOT_FOUND:
                return False
            raise
        return any(key.id == key_id and not key.HasField("revoke_time") for key in keys)
