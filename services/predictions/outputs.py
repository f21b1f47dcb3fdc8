"""Where a prediction's audio is kept: a small interface, so the store can change.

The default is PostgreSQL (`store.PostgresOutputs`: a bytea row per prediction in
`predictions.outputs`). An S3-compatible bucket fits the same interface (README, "Storage");
it is documented, not built.

Every implementation keeps these promises:
- `put` is idempotent: a second put for a prediction keeps the first audio and answers it, so a
  job that runs twice (its worker presumed dead) never swaps the bytes under a reader;
- `head` and `read` see nothing past the output's expiry, swept or not;
- `read` yields the bytes of [offset, offset + length) in order, at most MAX_CHUNK_BYTES at a
  time, without holding the whole output in memory.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Protocol

# ReadOutput's messages stay under gRPC's default 4 MiB receive limit.
MAX_CHUNK_BYTES = 1024 * 1024

# What each format is served as (the gateway's speech endpoint sends the same types): opus
# travels in Ogg; pcm is headerless 16-bit little-endian 24 kHz mono.
CONTENT_TYPES: dict[str, str] = {
    "mp3": "audio/mpeg",
    "opus": "audio/ogg",
    "aac": "audio/aac",
    "flac": "audio/flac",
    "wav": "audio/wav",
    "pcm": "audio/pcm",
}


@dataclass(frozen=True)
class StoredOutput:
    size: int
    content_type: str
    # When it is deleted; its URL expires then too.
    expire_time: datetime


class OutputStorage(Protocol):
    async def put(
        self, prediction_id: str, content_type: str, data: bytes, retention_seconds: int
    ) -> StoredOutput:
        """Keep `data` for `retention_seconds`; what is stored (the first put's, on a repeat)."""

    async def head(self, prediction_id: str) -> StoredOutput | None:
        """The output's size and type; None when there is none or it has expired."""

    def read(self, prediction_id: str, offset: int, length: int) -> AsyncIterator[bytes]:
        """The bytes of [offset, offset + length), in chunks of at most MAX_CHUNK_BYTES."""

    async def delete_expired(self, limit: int) -> int:
        """Delete up to `limit` outputs past their expiry; how many."""
