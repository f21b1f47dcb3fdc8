"""The ledger and synth as the predictions service and its workers call them: mutual TLS with
the `predictions` certificate (PREDICTIONS may Reserve, Checkpoint, Capture and Release on the
ledger, and Synthesize and ListVoices on synth), and the voices synth lists, cached."""

from __future__ import annotations

import asyncio
import logging
import time

import grpc
from kokoropay.ledger.v1 import ledger_pb2_grpc
from kokoropay.synth.v1 import synth_pb2, synth_pb2_grpc

from services.common.channels import open_channel
from services.common.pki import TlsIdentity
from services.common.voice_expressions import VoiceExpressionError, parse_voice_expression

# Every unary call to the ledger gives up after this long (UNAVAILABLE-like: retried later).
LEDGER_TIMEOUT_SECONDS = 10.0
# Listing voices is a check CreatePrediction may skip: it waits this long at most…
VOICES_TIMEOUT_SECONDS = 2.0
# …and after synth could not list them, this long before synth is asked again.
VOICES_RETRY_SECONDS = 5.0
# Codes after which the same call may well succeed later.
TRANSIENT_CODES = frozenset(
    {
        grpc.StatusCode.UNAVAILABLE,
        grpc.StatusCode.DEADLINE_EXCEEDED,
        grpc.StatusCode.ABORTED,
        grpc.StatusCode.CANCELLED,
    }
)

_log = logging.getLogger("predictions.clients")


class Upstreams:
    """Channels to the ledger and synth, open for the process's life."""

    def __init__(self, ledger_address: str, synth_address: str, tls: TlsIdentity) -> None:
        self._ledger_channel = open_channel(ledger_address, tls)
        self._synth_channel = open_channel(synth_address, tls)
        self.ledger = ledger_pb2_grpc.LedgerServiceStub(self._ledger_channel)
        self.synth = synth_pb2_grpc.SynthServiceStub(self._synth_channel)

    async def close(self) -> None:
        await self._ledger_channel.close()
        await self._synth_channel.close()


class VoiceCatalog:
    """The voice ids synth accepts, refreshed every `ttl` seconds. When synth cannot be asked
    (and nothing is cached), voices go unchecked here: a prediction is queued work, and synth
    refuses an unknown voice when it runs (the prediction then fails, refunded)."""

    def __init__(self, synth: synth_pb2_grpc.SynthServiceStub, ttl: float) -> None:
        self._synth = synth
        self._ttl = ttl
        self._known: frozenset[str] | None = None
        self._fetched_at = float("-inf")
        self._retry_at = float("-inf")
        self._lock = asyncio.Lock()

    async def _voices(self) -> frozenset[str] | None:
        now = time.monotonic()
        if now - self._fetched_at < self._ttl or now < self._retry_at:
            return self._known
        async with self._lock:
            if time.monotonic() - self._fetched_at < self._ttl:
                return self._known
            try:
                response = await self._synth.ListVoices(
                    synth_pb2.ListVoicesRequest(), timeout=VOICES_TIMEOUT_SECONDS
                )
            except grpc.RpcError as error:
                _log.warning("synth did not list its voices: %s", error.code().name)
                self._retry_at = time.monotonic() + VOICES_RETRY_SECONDS
                return self._known
            self._known = frozenset(voice.id for voice in response.voices)
            self._fetched_at = time.monotonic()
            return self._known

    async def problem(self, expression: str) -> str | None:
        """Why synth would refuse `expression`, or None (also when synth cannot be asked)."""
        known = await self._voices()
        if known is None or expression in known:
            return None
        try:
            components = parse_voice_expression(expression)
        except VoiceExpressionError as error:
            return str(error)
        for name, _ in components:
            if name not in known:
                return f"unknown voice {name!r}; see /v1/audio/voices"
        return None
