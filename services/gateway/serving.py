"""The serving layer: one paid speech request from key to first audio, and the free listings.

    admit ─▶ validate ─▶ hold ─▶ synthesize ─▶ first piece ─▶ deliver ─▶ settle
    401, 429    400       402        └─ failure before the first piece: release, 502
                                         failure after it: release, connection cut

`admit` verifies the key and, in the same VerifyKey call, admits the request under the key's
limits (GATEWAY_KEY_LIMITS): a request over its key's requests a minute or concurrent streams is
a 429; an admitted speech request holds a stream slot (slots.py) until its delivery ends, or is
given back at once if the request fails before it streams. The admission's counts go on the
answer, whatever it is (rate_limit_headers.py).

Everything that can be checked before the credits are held is (length, voice, model, speed,
format, whether the voice's words can be timed), so a bad request costs no credit and holds
nothing; it has used one request of its key's minute (admission comes first: the key is verified
in that same call). Captioned speech is sold the same way: only the answer's shape differs
(delivery.py). The first audio piece is awaited before the response starts, so an early synth
failure is still a clean error answer with nothing charged. What a request costs, how its hold is
kept alive while it streams and how it is settled is billing.py's; relaying the audio, within its
time limit, is
delivery.py's.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass

import grpc

from services.common.client_address import UNKNOWN
from services.gateway.billing import Billing, Outcome, SpeechOrder, ledger_key
from services.gateway.catalog import Catalog
from services.gateway.clients import (
    Balance,
    KeyUse,
    Model,
    Principal,
    SynthesisRequest,
    UpstreamError,
    Upstreams,
    VerifiedKey,
    Voice,
)
from services.gateway.delivery import SpeechDelivery
from services.gateway.errors import (
    api_error,
    invalid_key,
    invalid_order,
    limit_reached,
    missing_key,
    rejects_the_key,
    synthesis_error,
    synthesis_not_started,
    too_many_invalid_keys,
)
from services.gateway.key_floods import InvalidKeyThrottle, Throttled, looks_like_key
from services.gateway.middleware import add_response_headers, timed
from services.gateway.protocol import SpeechBody
from services.gateway.rate_limit_headers import rate_limit_headers
from services.gateway.settings import GatewaySettings
from services.gateway.slots import NO_SLOT, StreamSlot, StreamSlots

_log = logging.getLogger("gateway.serving")


@dataclass(frozen=True)
class Admitted:
    """A verified key whose request its limits admitted."""

    principal: Principal
    # The most the key may have at once for this use (for a prediction: CreatePrediction's
    # max_active); None when nothing limits it (limits off, or auth gave no admission).
    concurrency_limit: int | None
    # A speech request's stream slot, held until its delivery ends; NO_SLOT otherwise.
    slot: StreamSlot = NO_SLOT


class SpeechSeller:
    """Sells speech by the character: checks the key, validates the order, holds its cost and
    starts the synthesis; also answers the balance and the catalog, and drains at shutdown."""

    def __init__(
        self,
        upstreams: Upstreams,
        catalog: Catalog,
        settings: GatewaySettings,
        key_throttle: InvalidKeyThrottle,
        slots: StreamSlots,
    ) -> None:
        self._auth = upstreams.auth
        self._key_throttle = key_throttle
        self._slots = slots
        # Said once: an auth that answers no admission leaves every key unlimited.
        self._warned_no_admission = False
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
        """The key's account, if auth verifies it; nothing is counted. `address` is the
        client's (its throttle key): one whose keys failed too often gets 429 before auth is
        asked (key_floods.py)."""
        verified = await self._verify(key, address)
        return verified.principal

    async def admit(self, key: str | None, address: str, use: KeyUse) -> Admitted:
        """authenticate(), and admit the request under the key's limits for `use` in the same
        VerifyKey call: 429 over a limit. An admitted speech request holds a stream slot, which
        the caller must see given back (`slot.given_back_on_failure()`, then the delivery)."""
        if not self._settings.key_limits:
            return Admitted(await self.authenticate(key, address), concurrency_limit=None)
        holder = self._slots.holder if use is KeyUse.SPEECH else ""
        verified = await self._verify(key, address, use=use, holder=holder)
        admission = verified.admission
        if admission is None:
            if not self._warned_no_admission:
                self._warned_no_admission = True
                _log.warning("auth answered VerifyKey without an admission: keys are not limited")
            return Admitted(verified.principal, concurrency_limit=None)
        add_response_headers(rate_limit_headers(admission))
        if not admission.admitted:
            raise limit_reached(use, admission)
        slot = NO_SLOT
        if admission.slot_id:
            slot = self._slots.took(holder, admission.slot_id, admission.lease)
        return Admitted(verified.principal, admission.concurrency_limit or None, slot)

    async def _verify(
        self,
        key: str | None,
        address: str,
        *,
        use: KeyUse | None = None,
        holder: str = "",
    ) -> VerifiedKey:
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
                    return await self._auth.verify_key(key, use=use, holder=holder)
            except UpstreamError as error:
                if rejects_the_key(error):
                    check.failed()
                elif holder:
                    # Auth may have taken a slot whose id never reached us (slots.py).
                    self._slots.suspect(holder)
                raise api_error(error) from error
            except asyncio.CancelledError:
                if holder:
                    self._slots.suspect(holder)
                raise

    async def balance(self, principal: Principal) -> Balance:
        try:
            with timed("ledger"):
                return await self._ledger.get_balance(principal.account_id)
        except UpstreamError as error:
            if error.code == grpc.StatusCode.NOT_FOUND:
                return Balance(0, 0, False)  # a key issued before the ledger opened the account
            raise api_error(error) from error

    async def validate(self, request: SpeechBody) -> SpeechOrder:
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
                if request.word_timestamps:
                    untimed = await self._catalog.word_timestamps_problem(voice)
                    if untimed is not None:
                        raise invalid_order(untimed)
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
            stream_format=request.answer_format,
            resolved_voice=resolved_voice,
            resolved_model=resolved_model,
            word_timestamps=request.word_timestamps,
        )

    async def sell(
        self,
        principal: Principal,
        order: SpeechOrder,
        *,
        request_id: str,
        request_id_is_ours: bool,
        idempotency_key: str | None,
        slot: StreamSlot = NO_SLOT,
    ) -> SpeechDelivery:
        """Hold the credits and wait for the first audio; the delivery relays the rest and
        gives `slot` back when it ends. If this fails, the caller's
        `slot.given_back_on_failure()` gives it back (here only sooner, before settling)."""
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
            SynthesisRequest(
                order.text,
                order.voice,
                order.model,
                order.speed,
                order.audio_format,
                word_timestamps=order.word_timestamps,
            )
        )
        try:
            with timed("synth"):  # the wait for the model's first audio
                first = await asyncio.wait_for(
                    stream.next(), self._settings.first_chunk_timeout_seconds
                )
            if first is None:
                raise UpstreamError("synth", grpc.StatusCode.INTERNAL, "empty audio stream")
        except BaseException as failure:
            slot.give_back()  # before settling, which may retry for seconds
            stream.cancel()
            await self._billing.settle(charge, Outcome.FAILED, delivered_characters=0)
            if isinstance(failure, UpstreamError):
                raise synthesis_error(failure) from failure
            if isinstance(failure, TimeoutError):
                raise synthesis_not_started() from failure
            raise
        delivery = SpeechDelivery(
            stream, first, order, charge, self._billing, self._live, deadline=deadline, slot=slot
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
