"""Getting a started synthesis to the client, then settling its charge.

`SpeechDelivery` relays synth's pieces as raw audio, as SSE events (with the words each piece
speaks, when asked), or as captioned speech's JSON: one object at the end, or one line per piece.
It checkpoints what has been delivered while it streams (billing.HoldKeeper), and records how the
stream ended;
`DeliveryResponse` sends that body over HTTP, gives up on a client that stops reading or a
stream that reaches settings.max_stream_seconds, and settles once the response is over, however
it ended. Synthesis failing after audio went out cannot become an error answer any more: the
connection is cut, so the client sees a broken stream rather than a short file; a stream cut at
the time limit ends the same way, charged for what was delivered. A piece counts as delivered
once the body has handed on what carries it: captioned speech's single JSON object carries every
piece, so a client that leaves before it was sent has been delivered nothing.

Metrics (metrics.py): each piece's bytes and seconds once it has been handed over, the first
audio byte's delay from the request's arrival, and the streams in flight.
"""

from __future__ import annotations

import asyncio
import base64
import logging
import time
from collections.abc import AsyncIterator, Sequence

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from services.gateway import metrics
from services.gateway.billing import Billing, Charge, Outcome, SpeechOrder
from services.gateway.clients import AudioPiece, AudioStream, SpokenWord, UpstreamError
from services.gateway.middleware import ARRIVED_AT
from services.gateway.protocol import (
    CONTENT_TYPES,
    JSON_CONTENT_TYPE,
    JSON_LINES_CONTENT_TYPE,
    SSE_CONTENT_TYPE,
    CaptionedSpeech,
    SpeechAudioDelta,
    SpeechAudioDone,
    SpeechAudioWords,
    SpeechUsage,
    WordTimestamp,
)
from services.gateway.slots import NO_SLOT, StreamSlot

_log = logging.getLogger("gateway.delivery")

# Captioned speech's single JSON object goes out in body messages of at most this many bytes, so
# each is sent within send_timeout like an audio piece (synth's pieces are at most 1 MiB).
_JSON_SLICE_BYTES = 1 << 20


class SynthesisInterrupted(Exception):
    """Synthesis failed after audio went out: the response can only be cut, not completed."""


class ClientStalled(Exception):
    """The client took no body piece for send_timeout_seconds: treated as having left."""


class SpeechDelivery:
    """A started synthesis: relays the pieces as they come, then settles the charge.

    `body()` is the HTTP body; `finish()` must run once the response is over, however it ended.
    `deadline` (event-loop time) is when the stream must be over: synthesis start plus
    settings.max_stream_seconds. `slot` is the key's stream slot, given back as finish() starts.
    """

    def __init__(
        self,
        stream: AudioStream,
        first: AudioPiece,
        order: SpeechOrder,
        charge: Charge,
        billing: Billing,
        live: set[SpeechDelivery] | None = None,
        *,
        deadline: float | None = None,
        slot: StreamSlot = NO_SLOT,
    ) -> None:
        self._stream = stream
        self._slot = slot
        self._first = first
        self._order = order
        self._charge = charge
        self._billing = billing
        self._delivered_characters = 0
        self._outcome: Outcome | None = None
        self._finished = False
        self._live = live
        self._keeper = billing.keeper(charge, lambda: self._delivered_characters)
        self.deadline = deadline
        # Set once finish() has settled the charge.
        self.finished = asyncio.Event()

    @property
    def content_type(self) -> str:
        answers = {
            "sse": SSE_CONTENT_TYPE,
            "json": JSON_CONTENT_TYPE,
            "jsonl": JSON_LINES_CONTENT_TYPE,
        }
        return answers.get(self._order.stream_format, CONTENT_TYPES[self._order.audio_format])

    @property
    def billable_characters(self) -> int:
        """The most this response can cost: len(input), what an Idempotency-Key still owes,
        or 0 for a free replay."""
        return self._charge.amount

    def body(self) -> AsyncIterator[bytes]:
        bodies = {
            "sse": self._events,
            "json": self._captioned_whole,
            "jsonl": self._captioned_lines,
        }
        return bodies.get(self._order.stream_format, self._audio)()

    async def finish(self) -> None:
        """Stop synthesis if it still runs, then capture or refund. Safe to call twice."""
        if self._finished:
            return
        self._finished = True
        # First: the stream is over for the client, so the key may open another now, not
        # once settling (which may retry for seconds) is done. It neither waits nor raises.
        self._slot.give_back()
        self._stream.cancel()
        self._keeper.stop()
        # No outcome recorded: the body was abandoned before its end, so the client left.
        outcome = self._outcome or Outcome.CLIENT_LEFT
        try:
            await self._billing.settle(
                self._charge, outcome, delivered_characters=self._delivered_characters
            )
        finally:
            if self._live is not None:
                self._live.discard(self)
            self.finished.set()

    def server_stopped(self) -> None:
        """The gateway cut the response (shutdown): our failure, refunded, unless it was over."""
        if self._outcome is None:
            self._outcome = Outcome.FAILED

    def time_limit_reached(self) -> None:
        """The stream ran for max_stream_seconds: ended as if the client had left."""
        if self._outcome is None:
            self._outcome = Outcome.TIME_LIMIT

    async def _pieces(self) -> AsyncIterator[AudioPiece]:
        """Synth's pieces, each asked for once the body has dealt with the one before. The body
        calls _handed_over() for each piece once what carries it has been sent, and records the
        outcome COMPLETED once it has sent the last."""
        if not self._finished:  # finish() may have run before the body was ever asked for
            self._keeper.start()
        piece: AudioPiece | None = self._first
        while piece is not None:
            yield piece
            try:
                piece = await self._stream.next()
            except UpstreamError as error:
                self._outcome = Outcome.FAILED
                _log.warning(
                    "synthesis failed mid-stream: %s",
                    error,
                    extra={"delivered_characters": self._delivered_characters},
                )
                raise SynthesisInterrupted(str(error)) from error

    def _handed_over(self, piece: AudioPiece) -> None:
        self._delivered_characters = max(self._delivered_characters, piece.characters_consumed)
        metrics.record_audio(self._order.audio_format, len(piece.audio), piece.duration_seconds)

    async def _audio(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces():
            if piece.audio:
                yield piece.audio
            self._handed_over(piece)
        self._outcome = Outcome.COMPLETED

    async def _events(self) -> AsyncIterator[bytes]:
        async for piece in self._pieces():
            if piece.words and self._order.word_timestamps:
                words = SpeechAudioWords(words=_timestamps(piece.words))
                yield _sse(words.model_dump_json())
            if piece.audio:
                delta = SpeechAudioDelta(audio=base64.b64encode(piece.audio).decode("ascii"))
                yield _sse(delta.model_dump_json())
            self._handed_over(piece)
        self._outcome = Outcome.COMPLETED
        n = self._order.characters
        done = SpeechAudioDone(usage=SpeechUsage(input_tokens=n, total_tokens=n, characters=n))
        yield _sse(done.model_dump_json())

    async def _captioned_lines(self) -> AsyncIterator[bytes]:
        media_type = CONTENT_TYPES[self._order.audio_format]
        async for piece in self._pieces():
            if piece.audio or piece.words:
                line = CaptionedSpeech(
                    audio=base64.b64encode(piece.audio).decode("ascii"),
                    audio_format=media_type,
                    timestamps=_timestamps(piece.words),
                )
                yield line.model_dump_json().encode() + b"\n"
            self._handed_over(piece)
        self._outcome = Outcome.COMPLETED

    async def _captioned_whole(self) -> AsyncIterator[bytes]:
        # Nothing is sent, so nothing delivered, until synthesis is over.
        pieces = [piece async for piece in self._pieces()]
        whole = CaptionedSpeech(
            audio=base64.b64encode(b"".join(piece.audio for piece in pieces)).decode("ascii"),
            audio_format=CONTENT_TYPES[self._order.audio_format],
            timestamps=_timestamps([word for piece in pieces for word in piece.words]),
        )
        body = whole.model_dump_json().encode()
        for start in range(0, len(body), _JSON_SLICE_BYTES):
            yield body[start : start + _JSON_SLICE_BYTES]
        for piece in pieces:
            self._handed_over(piece)
        self._outcome = Outcome.COMPLETED


def _sse(data: str) -> bytes:
    return f"data: {data}\n\n".encode()


def _timestamps(words: Sequence[SpokenWord]) -> list[WordTimestamp]:
    return [
        WordTimestamp(
            word=word.text,
            start_time=round(word.start_seconds, 3),
            end_time=round(word.end_seconds, 3),
        )
        for word in words
    ]


class DeliveryResponse(StreamingResponse):
    """Streams a delivery and settles its charge once the response is over, however it ended.

    Each body piece must be taken by the client within `send_timeout` seconds; a client that
    stops reading is treated as gone, so it cannot hold a synth slot forever. A stream still
    running at the delivery's deadline is cut there and settled like one whose client left. A
    cancellation from outside (the server shutting down) cuts the stream on our side: refunded.
    Either cut returns without the body's last message, so the server closes the connection
    without the chunked terminator (or, for SSE, the done event): the client sees a broken
    stream, not a short file.
    """

    def __init__(self, delivery: SpeechDelivery, send_timeout: float) -> None:
        super().__init__(
            delivery.body(),
            media_type=delivery.content_type,
            headers={
                "cache-control": "no-store",
                # Proxies such as nginx must pass audio on as it comes, not buffer it.
                "x-accel-buffering": "no",
                "x-billed-characters": str(delivery.billable_characters),
            },
        )
        self.delivery = delivery
        self.send_timeout = send_timeout

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        arrived_at: float | None = scope.get("state", {}).get(ARRIVED_AT)

        async def send_in_time(message: Message) -> None:
            nonlocal arrived_at
            if message["type"] != "http.response.body":
                await send(message)
                return
            if arrived_at is not None and message.get("body"):
                metrics.record_first_audio(time.perf_counter() - arrived_at)
                arrived_at = None  # once per request
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send(message)
            except TimeoutError as stalled:
                raise ClientStalled(f"client took no audio for {self.send_timeout}s") from stalled

        limit = asyncio.timeout_at(self.delivery.deadline)
        try:
            with metrics.streaming():
                async with limit:
                    await super().__call__(scope, receive, send_in_time)
        except ClientStalled as stalled:
            # Returning without completing the response makes the server close the connection.
            _log.warning("%s; treated as gone", stalled)
        except TimeoutError:
            if not limit.expired():
                raise
            self.delivery.time_limit_reached()
            _log.warning("the stream reached its time limit; ended as if the client had left")
        except asyncio.CancelledError:
            self.delivery.server_stopped()
            raise
        finally:
            await self.delivery.finish()
