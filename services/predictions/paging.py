"""ListPredictions' page tokens: opaque to callers, bound to the account they were issued for.

A token is the position of the last prediction shown, (create_time, id), and the next page
starts strictly below it (keyset pagination): predictions created meanwhile never shift a page,
so none is shown twice. create_time is the database's clock; the id only breaks ties.
"""

from __future__ import annotations

import base64
import binascii
import json
from datetime import UTC, datetime, timedelta

from services.predictions.ids import is_prediction_id
from services.predictions.validation import FieldInvalid

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
_MICROSECOND = timedelta(microseconds=1)


def encode_page_token(account_id: str, create_time: datetime, prediction_id: str) -> str:
    # Whole microseconds since the epoch: exactly PostgreSQL's timestamptz resolution.
    micros = (create_time - _EPOCH) // _MICROSECOND
    text = json.dumps({"a": account_id, "t": micros, "p": prediction_id}, separators=(",", ":"))
    return base64.urlsafe_b64encode(text.encode()).decode().rstrip("=")


def decode_page_token(token: str, account_id: str) -> tuple[datetime, str] | None:
    """The (create_time, id) to resume below; None for the first page. FieldInvalid if it is
    not a token this service issued for `account_id`."""
    if not token:
        return None
    try:
        padded = token + "=" * (-len(token) % 4)
        payload = json.loads(base64.urlsafe_b64decode(padded.encode()))
        issued_for, micros, prediction_id = payload["a"], payload["t"], payload["p"]
        if not (isinstance(micros, int) and not isinstance(micros, bool) and micros > 0):
            raise ValueError("not a position")
        if not (isinstance(prediction_id, str) and is_prediction_id(prediction_id)):
            raise ValueError("not a position")
        position = _EPOCH + micros * _MICROSECOND
    except (binascii.Error, ValueError, KeyError, TypeError, OverflowError) as exc:
        raise FieldInvalid("page_token", "is not one this service issued") from exc
    if issued_for != account_id:
        raise FieldInvalid("page_token", "was issued for another account")
    return position, prediction_id
