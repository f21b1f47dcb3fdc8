"""A prediction's stored audio over HTTP: which bytes a `Range` header asks for, and relaying
ReadOutput's pieces to the client as they come, never holding the whole file.

One range at a time (RFC 9110 14): `bytes=first-last`, `bytes=first-` and `bytes=-suffix` are
answered 206 with `Content-Range`, or 416 when they select nothing. Everything else a `Range`
header may say is ignored and the whole output served with 200, as RFC 9110 allows: no header,
another unit, a malformed header, an `If-Range` (the gateway sends no validators, so it cannot
tell whether the client's copy is current), and several ranges (serving them would need
multipart/byteranges; a player asks for one at a time).
"""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass

from starlette.responses import StreamingResponse
from starlette.types import Message, Receive, Scope, Send

from services.gateway.clients import OutputStream, UpstreamError

_log = logging.getLogger("gateway.output")

# Offsets and lengths travel as int64 (predictions.proto).
MAX_OFFSET = 2**63 - 1

# A real Range header for one range is a few dozen characters; longer ones are served whole
# without being read, so no header can cost more than a glance (this runs before any key or
# signature check). The pattern is matched on the header with all spaces and tabs removed,
# where each part is delimited and no two repetitions can trade characters: linear time.
MAX_RANGE_HEADER_CHARS = 100
_ONE_RANGE = re.compile(r"bytes=(?:([0-9]{1,20})-([0-9]{0,20})|-([0-9]{1,20}))", re.IGNORECASE)


@dataclass(frozen=True)
class ByteRange:
    """One range as sent: `first-last`, `first-` (last None) or `-suffix` (first None)."""

    first: int | None = None
    last: int | None = None
    suffix: int | None = None

    def select(self, size: int) -> tuple[int, int] | None:
        """The (offset, length) this range selects of `size` bytes; None if it selects none."""
        if self.first is None:
            count = min(self.suffix or 0, size)  # a suffix longer than the output is all of it
            return (size - count, count) if count else None
        if self.first >= size:
            return None
        last = size - 1 if self.last is None else min(self.last, size - 1)
        return self.first, last - self.first + 1


def parse_range(header: str | None, if_range: str | None = None) -> ByteRange | None:
    """The one range a request asks for; None to serve the whole output (see the module)."""
    if header is None or if_range is not None or len(header) > MAX_RANGE_HEADER_CHARS:
        return None
    match = _ONE_RANGE.fullmatch(header.replace(" ", "").replace("\t", ""))
    if match is None:
        return None
    first, last, suffix = match.groups()
    if suffix is not None:
        return ByteRange(suffix=int(suffix))
    if last and int(last) < int(first):
        return None  # invalid (RFC 9110 14.1.1): ignored
    return ByteRange(first=int(first), last=int(last) if last else None)


def content_range(offset: int, length: int, size: int) -> str:
    return f"bytes {offset}-{offset + length - 1}/{size}"


class OutputInterrupted(Exception):
    """The output stream ended before the promised bytes were sent."""


class _ClientStalled(Exception):
    pass


class OutputResponse(StreamingResponse):
    """`length` bytes of a started ReadOutput, `first` (the first message's data) included,
    with Content-Length. A client that takes no piece for `send_timeout` seconds is dropped. If
    the service fails or falls short after the headers went out, the response is cut (returned
    without its end, so the server closes the connection): the client sees a read shorter than
    Content-Length, not a short file. The upstream stream is cancelled however it ends."""

    def __init__(
        self,
        stream: OutputStream,
        first: bytes,
        *,
        length: int,
        status_code: int,
        media_type: str,
        headers: dict[str, str],
        send_timeout: float,
    ) -> None:
        super().__init__(
            self._body(stream, first, length),
            status_code=status_code,
            media_type=media_type,
            headers={**headers, "content-length": str(length)},
        )
        self.stream = stream
        self.send_timeout = send_timeout

    @staticmethod
    async def _body(stream: OutputStream, first: bytes, length: int) -> AsyncIterator[bytes]:
        remaining = length
        data = first
        while True:
            if data:
                # Never more than promised, whatever the service sends.
                data = data[:remaining]
                remaining -= len(data)
                yield data
            if remaining <= 0:
                return
            piece = await stream.next()  # a failure here cuts the response
            if piece is None:
                raise OutputInterrupted(f"the output ended {remaining} bytes short")
            data = piece.data

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        async def send_in_time(message: Message) -> None:
            if message["type"] != "http.response.body":
                await send(message)
                return
            try:
                async with asyncio.timeout(self.send_timeout):
                    await send(message)
            except TimeoutError as stalled:
                raise _ClientStalled(f"client took no bytes for {self.send_timeout}s") from stalled

        try:
            await super().__call__(scope, receive, send_in_time)
        except (OutputInterrupted, UpstreamError, _ClientStalled) as failure:
            _log.warning("output cut: %s", failure)
        finally:
            self.stream.cancel()
