"""Hold identifiers: `hold_` and a ULID (time-ordered, so new rows land at the index's end)."""

from __future__ import annotations

from services.common.ids import new_id

HOLD = "hold"


def new_hold_id() -> str:
    return new_id(HOLD)
