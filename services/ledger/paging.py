"""Page tokens of ListEntries and ListHolds: opaque to callers, bound to the account they were
issued for, each readable only by the RPC that issued it.

A token is the position of the last row shown, and the next page starts strictly below it
(keyset pagination): rows written meanwhile never shift a page, so none is shown twice. The
journal is ordered by entry id alone. Holds are ordered by (create_time, id): create_time is the
database's clock, one for every replica, where a hold id's time is that of the replica that made
it; the id only breaks ties.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from services.ledger.validation import InvalidArgument, require_id

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def _encode(payload: dict[str, Any]) -> str:
    text = json.dumps(payload, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def _decode(token: str, account_id: str, *fields: str) -> list[Any]:
    """The token's `fields`; InvalidArgument if it is not one issued for `account_id`."""
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        values = [payload[field] for field in fields]
        issued_for = payload["a"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("page_token is not one this service issued") from exc
    if issued_for != account_id:
        raise InvalidArgument("page_token was issued for another account")
    return values


def _positive_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value > 0


def encode_page_token(account_id: str, before_id: int) -> str:
    """A token that resumes the journal below entry `before_id`."""
    return _encode({"a": account_id, "b": before_id})


def decode_page_token(token: str, account_id: str) -> int | None:
    """The entry id to resume below; None for the first page. InvalidArgument if forged."""
    if not token:
        return None
    [before_id] = _decode(token, account_id, "b")
    if not _positive_int(before_id):
        raise InvalidArgument("page_token is not one this service issued")
    return int(before_id)


def encode_holds_page_token(account_id: str, create_time: datetime, hold_id: str) -> str:
    """A token that resumes an account's holds below the hold (`create_time`, `hold_id`)."""
    # Whole microseconds since the epoch: exactly PostgreSQL's timestamptz resolution.
    micros = (create_time - _EPOCH) // _MICROSECOND
    return _encode({"a": account_id, "t": micros, "h": hold_id})


def decode_holds_page_token(token: str, account_id: str) -> tuple[datetime, str] | None:
    """The (create_time, hold id) to resume below; None for the first page. InvalidArgument
    if forged, or issued by ListEntries."""
    if not token:
        return None
    micros, hold_id = _decode(token, account_id, "t", "h")
    try:
        if not _positive_int(micros) or not isinstance(hold_id, str):
            raise InvalidArgument("not a position")
        return _EPOCH + micros * _MICROSECOND, require_id(hold_id, "page_token")
    except (InvalidArgument, OverflowError) as exc:
        raise InvalidArgument("page_token is not one this service issued") from exc
