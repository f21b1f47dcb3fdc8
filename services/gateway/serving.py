"""The serving layer: one paid speech request from key to first audio, and the free listings.

    authenticate ─▶ validate ─▶ hold ─▶ synthesize ─▶ first piece ─▶ deliver ─▶ settle
      401, 429         400       402        └─ failure before the first piece: release, 502
                                                failure after it: release, connection cut

Everything that can be checked before the credits are held is (length, voice, model, speed,
format), so a bad request changes nothing. The first audio piece is awaited before the response
starts, so an early synth failure is still a clean error answer with nothing charged. What a
request costs, how its hold is kept alive while it streams and how it is settled is
billing.py's; relaying the audio, within its time limit, is delivery.py's.
"""

from __future__ import annotations

import asyncio

import grpc

from services.common.client_address import UNKNOWN
from services.gateway.billing import Billing, Outcome, SpeechOrder, ledger_key
from services.gateway.catalog import Catalog
from services.gateway.clients import (
    Balance,
    Model,
    Principal,
    SynthesisRequest,
    UpstreamError,
    Upstreams,
    Voice,
)
from services.gateway.delivery import SpeechDelivery
from services.gateway.errors import (
    api_error,
    invalid_key,
    invalid_order,
    missing_key,
    rejects_the_key,
    synthesis_error,
    synthesis_not_started,
    too_many_invalid_keys,
)
from services.gateway.key_floods import InvalidKeyThrottle, Throttled, looks_like_key
from services.gateway.middleware import timed
from services.gateway.protocol import SpeechRequest
from services.gateway.settings import GatewaySettings


class SpeechSeller:
    """Sells speech by the character: checks the key, validates the order, holds its cost and
    starts the synthesis; also answers the balance and the catalog, and drains at shutdown."""

    def __init__(
        self,
        upstreams: Upstreams,
        catalog: Catalog,
        settings: GatewaySettings,
        key_throttle: InvalidKeyThrottle,
    ) -> None:
        self._auth = upstreams.auth
        self._key_throttle = key_throttle
        self._ledger = upstreams.ledger
        self._synth = upstreams.synth
        self._catalog = catalog
        self._settings = settings
        self._billing = Billing(
            upstreams.ledger,
            settle_retry_delays=settings.settle_retry_delays_seconds,
            checkpoint_interval=settings.checkpoint_interval_seconds,
            hold_extension=settings.hold_extension_seconds,
            billing_url=settings.billing_url,
        )
        # Deliveries started and not yet finished; drain() waits for them.
        self._live: set[SpeechDelivery] = set()

    async def authenticate(self, key: str | None, address: str = UNKNOWN) -> Principal:
        """The key's account, if auth verifies it. `address` is the client's (its throttle
        key): one whose keys failed too often gets 429 before auth is asked (key_floods.py)."""
        if not key:
            raise missing_key()
        try:
            check = self._key_throttle.admit(address)
        except Throttled as throttled:
            raise too_many_invalid_keys(throttled.retry_after) from None
        with check:
            if not looks_like_key(key):
                # No key has this shape: answered here, so junk never travels to auth.
                check.failed()
                raise invalid_key()
            try:
                with timed("auth"):
                    return await self._auth.verify_key(key)
            except UpstreamError as error:
                if rejects_the_key(error):
                    check.failed()
                raise api_error(error) from error

    async def balance(self, principal: Principal) -> Balance:
        try:
            with timed("ledger"):
                return await self._ledger.get_balance(principal.account_id)
        except UpstreamError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return Balance(0, 0, False)  # a key issued before the ledger opened the account
            raise api_error(error) from error

    async def validate(self, request: SpeechRequest) -> SpeechOrder:
        """The checks that need settings or synth's lists; pydantic has checked the shape."""
        voice = (request.voice_name() or self._settings.default_voice).strip()
        model = request.model.strip()
        characters = len(request.input)  # code points
        limit = self._settings.max_input_chars
        if characters > limit:
            raise invalid_order(f"`input` is {characters} characters long; the limit is {limit}")
        try:
            with timed("catalog"):
                models = await self._catalog.model_names()
                voice_problem = await self._catalog.voice_problem(voice)
                if model not in models:
                    known = ", ".join(models)
                    raise invalid_order(f"unknown model {model!r}; known models: {known}")
                if voice_problem is not None:
                    raise invalid_order(voice_problem)
                resolved_voice = await self._catalog.resolved_voice(voice)
                resolved_model = await self._catalog.resolved_model(model)
        except UpstreamError as error:
            raise synthesis_error(error) from error
        return SpeechOrder(
            text=request.input,
            voice=voice,
            model=model,
            speed=request.speed,
            audio_format=request.response_format,
            stream_format=request.stream_format,
            resolved_voice=resolved_voice,
            resolved_model=resolved_model,
        )

    async def sell(
        self,
        principal: Principal,
        order: SpeechOrder,
        *,
        request_id: str,
        request_id_is_ours: bool,
        idempotency_key: str | None,
    ) -> SpeechDelivery:
        """Hold the credits and wait for the first audio; the delivery relays the rest."""
        key = ledger_key(request_id=request_id, request_id_is_ours=request_id_is_ours)
        with timed("reserve"):
            charge = await self._billing.hold(
                principal,
                order,
                key,
                self._settings.hold_ttl_seconds,
                idempotency_key,
            )
        # The stream's time limit counts from here: the wait for the first audio is part of it.
        deadline = asyncio.get_running_loop().time() + self._settings.max_stream_seconds
        stream = self._synth.synthesize(
            SynthesisRequest(order.text, order.voice, order.model, order.speed, order.audio_format)
        )
        try:
            with timed("synth"):  # the wait for the model's first audio
                first = await asyncio.wait_for(
                    stream.next(), self._settings.first_chunk_timeout_seconds
                )
            if first is None:
                raise UpstreamError("synth", grpc.StatusCode.INTERNAL, "empty audio stream")
        except BaseException as failure:
            stream.cancel()
            await self._billing.settle(charge, Outcome.FAILED, delivered_characters=0)
            if isinstance(failure, UpstreamError):
                raise synthesis_error(failure) from failure
            if isinstance(failure, TimeoutError):
                raise synthesis_not_started() from failure
            raise
        delivery = SpeechDelivery(
            stream, first, order, charge, self._billing, self._live, deadline=deadline
        )
        self._live.add(delivery)
        return delivery

    @property
    def send_timeout_seconds(self) -> float:
        return self._settings.send_timeout_seconds

    async def models(self) -> list[Model]:
        try:
            return await self._catalog.models()
        except UpstreamError as error:
            raise api_error(error) from error

    async def voices(self) -> list[Voice]:
        try:
            return await self._catalog.voices()
        except UpstreamError as error:
            raise api_error(error) from error

    async def drain(self, timeout: float = 10.0) -> None:
        """At shutdown: let deliveries still running finish and settle, then wait for every
        settlement. Deliveries not finished within `timeout` were cut by us: refunded."""
        if self._live:
            waits = [asyncio.ensure_future(d.finished.wait()) for d in self._live]
            _, pending = await asyncio.wait(waits, timeout=timeout)
            for wait in pending:
                wait.cancel()
        for delivery in list(self._live):
            delivery.server_stopped()
            await delivery.finish()
        await self._billing.drain()
