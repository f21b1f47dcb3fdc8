"""ListEntries page tokens: opaque to callers, bound to the account they were issued for."""

from __future__ import annotations

import base64
import binascii
import json

from services.ledger.validation import InvalidArgument


def encode_page_token(account_id: str, before_id: int) -> str:
    """A token that resumes the journal below entry `before_id`."""
    payload = json.dumps({"a": account_id, "b": before_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(payload.encode()).decode().rstrip("=")


def decode_page_token(token: str, account_id: str) -> int | None:
    """The entry id to resume below; None for the first page. InvalidArgument if forged."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        before_id = payload["b"]
        issued_for = payload["a"]
    except (binascii.Error, ValueError, KeyError, TypeError) as exc:
        raise InvalidArgument("page_token is not one this service issued") from exc
    if issued_for != account_id:
        raise InvalidArgument("page_token was issued for another account")
    if not isinstance(before_id, int) or isinstance(before_id, bool) or before_id <= 0:
        raise InvalidArgument("page_token is not one this service issued")
    return before_id
