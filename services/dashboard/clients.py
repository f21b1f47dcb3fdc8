"""The dashboard's calls on auth and ledger, as the DASHBOARD caller over mutual TLS.

Auth's calls take the signed-in session's token, never an account id: auth resolves the session
and acts only on its account, so nothing the dashboard gets wrong can reach another account's
keys. The ledger's calls take the account id that auth resolved from that session. Failures
surface as `BackendError` with the status, the ErrorInfo reason and the field it names, which
the routes turn into a message beside the field that caused it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable
from dataclasses import dataclass, field
from typing import TypeVar

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc
from kokoropay.auth.v1 import auth_pb2, auth_pb2_grpc
from kokoropay.ledger.v1 import ledger_pb2, ledger_pb2_grpc
from kokoropay.predictions.v1 import predictions_pb2, predictions_pb2_grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.common.channels import open_channel
from services.common.errors import error_info
from services.common.pki import TlsIdentity

T = TypeVar("T")


@dataclass
class BackendError(Exception):
    """A call to auth or ledger failed; `reason` and `metadata` come from its ErrorInfo."""

    service: str
    code: grpc.StatusCode
    message: str
    reason: str = ""
    metadata: dict[str, str] = field(default_factory=dict)

    def __str__(self) -> str:
        return f"{self.service}: {self.code.name}: {self.message}"

    @property
    def field(self) -> str:
        """The request field the refusal is about, when auth named one."""
        return self.metadata.get("field", "")

    @property
    def retry_after_seconds(self) -> int:
        try:
            return max(1, int(self.metadata.get("retry_after_seconds", "1")))
        except ValueError:
            return 1


@dataclass(frozen=True)
class Usage:
    summary: ledger_pb2.SummarizeUsageResponse
    holds: list[ledger_pb2.Hold]


class Backends:
    """gRPC stubs for auth, ledger and synth with deadlines; channels open lazily on first call."""

    def __init__(
        self,
        auth_address: str,
        ledger_address: str,
        synth_address: str,
        predictions_address: str,
        tls: TlsIdentity,
        *,
        timeout: float,
        sign_in_timeout: float,
        ready_timeout: float,
    ) -> None:
        self._auth_channel = open_channel(auth_address, tls)
        self._ledger_channel = open_channel(ledger_address, tls)
        self._auth = auth_pb2_grpc.AuthServiceStub(self._auth_channel)
        self._ledger = ledger_pb2_grpc.LedgerServiceStub(self._ledger_channel)
        self._synth_channel = open_channel(synth_address, tls)
        self._synth = synth_pb2_grpc.SynthServiceStub(self._synth_channel)
        self._predictions_channel = open_channel(predictions_address, tls)
        self._predictions = predictions_pb2_grpc.PredictionServiceStub(self._predictions_channel)
        self._timeout = timeout
        self._sign_in_timeout = sign_in_timeout
        self._ready_timeout = ready_timeout

    async def close(self) -> None:
        await self._auth_channel.close()
        await self._ledger_channel.close()
        await self._synth_channel.close()
        await self._predictions_channel.close()

    # People and sessions (auth)

    async def sign_up(self, email: str, password: str, address: str) -> auth_pb2.SignInResponse:
        request = auth_pb2.SignUpRequest(email=email, password=password, client_address=address)
        return await _call("auth", self._auth.SignUp(request, timeout=self._sign_in_timeout))

    async def sign_in(self, email: str, password: str, address: str) -> auth_pb2.SignInResponse:
        request = auth_pb2.SignInRequest(email=email, password=password, client_address=address)
        return await _call("auth", self._auth.SignIn(request, timeout=self._sign_in_timeout))

    async def resolve_session(self, token: str) -> auth_pb2.ResolveSessionResponse:
        request = auth_pb2.ResolveSessionRequest(session_token=token)
        return await _call("auth", self._auth.ResolveSession(request, timeout=self._timeout))

    async def sign_out(self, token: str) -> None:
        request = auth_pb2.SignOutRequest(session_token=token)
        await _call("auth", self._auth.SignOut(request, timeout=self._timeout))

    async def change_password(self, token: str, current: str, new: str) -> None:
        request = auth_pb2.ChangePasswordRequest(
            session_token=token, current_password=current, new_password=new
        )
        await _call("auth", self._auth.ChangePassword(request, timeout=self._sign_in_timeout))

    # Keys (auth, scoped to the session's account)

    async def create_key(self, token: str, name: str) -> auth_pb2.CreateKeyResponse:
        request = auth_pb2.CreateOwnKeyRequest(session_token=token, name=name)
        return await _call("auth", self._auth.CreateOwnKey(request, timeout=self._timeout))

    async def list_keys(
        self, token: str, include_playground: bool = False
    ) -> list[auth_pb2.ApiKey]:
        request = auth_pb2.ListOwnKeysRequest(
            session_token=token, include_playground=include_playground
        )
        response = await _call("auth", self._auth.ListOwnKeys(request, timeout=self._timeout))
        return list(response.keys)

    async def revoke_key(self, token: str, key_id: str) -> auth_pb2.ApiKey:
        request = auth_pb2.RevokeOwnKeyRequest(session_token=token, key_id=key_id)
        response = await _call("auth", self._auth.RevokeOwnKey(request, timeout=self._timeout))
        return response.key

    async def playground_key(self, token: str) -> str:
        """The session's playground key (the same one for the whole session)."""
        request = auth_pb2.MintPlaygroundKeyRequest(session_token=token)
        response = await _call("auth", self._auth.MintPlaygroundKey(request, timeout=self._timeout))
        return response.plaintext

    # Credits and usage (ledger)

    async def start_account(self, account_id: str) -> None:
        """Open a new account's balance and grant its sign-up credits; both idempotent, so a
        sign-up interrupted between them is completed by calling this again."""
        await _call(
            "ledger",
            self._ledger.OpenAccount(
                ledger_pb2.OpenAccountRequest(account_id=account_id), timeout=self._timeout
            ),
        )
        await _call(
            "ledger",
            self._ledger.GrantSignupBonus(
                ledger_pb2.GrantSignupBonusRequest(account_id=account_id), timeout=self._timeout
            ),
        )

    async def grant_top_up(
        self, account_id: str, credits: int, event_id: str
    ) -> ledger_pb2.GrantTopUpResponse:
        request = ledger_pb2.GrantTopUpRequest(
            account_id=account_id, credits=credits, payment_event_id=event_id
        )
        return await _call("ledger", self._ledger.GrantTopUp(request, timeout=self._timeout))

    async def balance(self, account_id: str) -> ledger_pb2.GetBalanceResponse:
        """The account's balance. An account with none yet is a sign-up whose ledger step did
        not happen (the ledger was away): its balance is opened, with its sign-up credits."""
        request = ledger_pb2.GetBalanceRequest(account_id=account_id)
        try:
            return await _call("ledger", self._ledger.GetBalance(request, timeout=self._timeout))
        except BackendError as error:
            if error.code != grpc.StatusCode.NOT_FOUND:
                raise
        await self.start_account(account_id)
        return await _call("ledger", self._ledger.GetBalance(request, timeout=self._timeout))

    async def usage(self, account_id: str, days: int, recent: int) -> Usage:
        summary, holds = await asyncio.gather(
            _call(
                "ledger",
                self._ledger.SummarizeUsage(
                    ledger_pb2.SummarizeUsageRequest(account_id=account_id, days=days),
                    timeout=self._timeout,
                ),
            ),
            _call(
                "ledger",
                self._ledger.ListHolds(
                    ledger_pb2.ListHoldsRequest(account_id=account_id, page_size=recent),
                    timeout=self._timeout,
                ),
            ),
        )
        return Usage(summary=summary, holds=list(holds.holds))

    # Webhook signing secret (predictions)

    async def webhook_secret(self, account_id: str, rotate: bool = False) -> str:
        if rotate:
            call = self._predictions.RotateWebhookSecret(
                predictions_pb2.RotateWebhookSecretRequest(account_id=account_id),
                timeout=self._timeout,
            )
        else:
            call = self._predictions.GetWebhookSecret(
                predictions_pb2.GetWebhookSecretRequest(account_id=account_id),
                timeout=self._timeout,
            )
        return (await _call("predictions", call)).secret

    # Voices and previews (synth; never billed)

    async def list_voices(self) -> list[synth_pb2.Voice]:
        request = synth_pb2.ListVoicesRequest()
        response = await _call("synth", self._synth.ListVoices(request, timeout=self._timeout))
        return list(response.voices)

    async def synthesize_mp3(self, text: str, voice: str, timeout: float) -> bytes:
        """A whole short clip, for previews."""
        request = synth_pb2.SynthesizeRequest(
            text=text, voice=voice, format=synth_pb2.AUDIO_FORMAT_MP3
        )
        pieces = []
        try:
            async for chunk in self._synth.Synthesize(request, timeout=timeout):
                pieces.append(chunk.audio)
        except grpc.aio.AioRpcError as error:
            raise _backend_error("synth", error) from error
        return b"".join(pieces)

    async def ready(self) -> dict[str, bool]:
        """Whether auth and ledger each answer SERVING, within the readiness budget."""
        names = ("auth", "ledger")
        answers = await asyncio.gather(
            *(self._serving(channel) for channel in (self._auth_channel, self._ledger_channel))
        )
        return dict(zip(names, answers, strict=True))

    async def _serving(self, channel: grpc.aio.Channel) -> bool:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            response = await stub.Check(
                health_pb2.HealthCheckRequest(), timeout=self._ready_timeout
            )
        except grpc.aio.AioRpcError:
            return False
        return bool(response.status == health_pb2.HealthCheckResponse.SERVING)


async def _call(service: str, call: Awaitable[T]) -> T:
    try:
        return await call
    except grpc.aio.AioRpcError as error:
        raise _backend_error(service, error) from error


def _backend_error(service: str, error: grpc.aio.AioRpcError) -> BackendError:
    info = error_info(error)
    return BackendError(
        service,
        error.code(),
        error.details() or "",
        info.reason if info else "",
        dict(info.metadata) if info else {},
    )
