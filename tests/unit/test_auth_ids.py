"""Account and key ids: opaque, unique, recognisable by kind, ordered by creation."""

from __future__ import annotations

import re
import time

from services.auth import ids
from services.common.ids import is_id
from services.ledger.ids import HOLD, new_hold_id


def test_ids_name_their_kind_and_are_ulid_shaped() -> None:
    assert re.fullmatch(r"acct_[0-9A-HJKMNP-TV-Z]{26}", ids.new_id(ids.ACCOUNT))
    assert re.fullmatch(r"key_[0-9A-HJKMNP-TV-Z]{26}", ids.new_id(ids.KEY))


def test_ids_do_not_repeat() -> None:
    assert len({ids.new_id(ids.KEY) for _ in range(10_000)}) == 10_000


def test_later_ids_sort_after_earlier_ones() -> None:
    earlier = ids.new_id(ids.KEY)
    time.sleep(0.002)
    assert ids.new_id(ids.KEY) > earlier


def test_is_id_tells_kinds_and_junk_apart() -> None:
    account, key = ids.new_id(ids.ACCOUNT), ids.new_id(ids.KEY)
    assert ids.is_id(ids.ACCOUNT, account) and ids.is_id(ids.KEY, key)
    assert not ids.is_id(ids.ACCOUNT, key)
    assert not ids.is_id(ids.KEY, account)
    for junk in ("", "acct_", "acct_nope", account + "0", account.lower(), account[:-1] + "U"):
        assert not ids.is_id(ids.ACCOUNT, junk), junk


def test_hold_ids_come_from_the_same_generator() -> None:
    hold = new_hold_id()
    assert is_id(HOLD, hold) and not ids.is_id(ids.KEY, hold)
