"""Usage request checks and ListHolds page tokens: the rules a caller meets before any SQL."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from services.ledger import validation
from services.ledger.paging import (
    decode_holds_page_token,
    decode_page_token,
    encode_holds_page_token,
    encode_page_token,
)
from services.ledger.store import UsageLabels
from services.ledger.validation import InvalidArgument


def test_labels_are_optional_and_kept_as_given() -> None:
    assert validation.usage_labels("", "", "", "") == UsageLabels()
    assert validation.usage_labels("key_1", " af_sky(2)+am_adam ", "mp3", "") == UsageLabels(
        key_id="key_1", voice=" af_sky(2)+am_adam ", response_format="mp3", model=None
    )
    longest = validation.usage_labels("k" * 64, "🔊" * 400, "f" * 16, "m" * 64)
    assert longest.voice == "🔊" * 400  # characters, not bytes


@pytest.mark.parametrize(
    "labels,complaint",
    [
        (("k" * 65, "", "", ""), "labels.key_id is longer than 64"),
        (("", "v" * 401, "", ""), "labels.voice is longer than 400"),
        (("", "", "f" * 17, ""), "labels.response_format is longer than 16"),
        (("", "", "", "m" * 65), "labels.model is longer than 64"),
        (("", "af\tsky", "", ""), "labels.voice contains control characters"),
        (("", "", "", "m\x00"), "labels.model contains control characters"),
    ],
)
def test_bad_labels_are_refused_naming_the_field(
    labels: tuple[str, str, str, str], complaint: str
) -> None:
    with pytest.raises(InvalidArgument, match=complaint):
        validation.usage_labels(*labels)


def test_days_zero_is_thirty_and_above_ninety_is_refused() -> None:
    assert [validation.usage_days(n) for n in (0, 1, 90)] == [30, 1, 90]
    with pytest.raises(InvalidArgument, match="days must be at most 90"):
        validation.usage_days(91)


def test_holds_page_size_defaults_to_50_and_is_capped_at_200() -> None:
    sizes = [validation.page_size(n, validation.MAX_HOLDS_PAGE_SIZE) for n in (0, 1, 200, 201)]
    assert sizes == [50, 1, 200, 200]


def test_holds_page_tokens_round_trip_to_the_microsecond_for_their_account_only() -> None:
    at = datetime(2025, 3, 1, 23, 59, 59, 999_999, tzinfo=UTC)
    token = encode_holds_page_token("acct_1", at, "hold_01J")

    assert decode_holds_page_token(token, "acct_1") == (at, "hold_01J")
    assert decode_holds_page_token("", "acct_1") is None
    with pytest.raises(InvalidArgument, match="another account"):
        decode_holds_page_token(token, "acct_2")


@pytest.mark.parametrize(
    "token",
    [
        "garbage!",
        "e30",
        encode_page_token("acct_1", 5),  # the journal's
        encode_holds_page_token("acct_1", datetime(1970, 1, 1, tzinfo=UTC), "hold_x"),
        encode_holds_page_token("acct_1", datetime(2025, 1, 1, tzinfo=UTC), ""),
        encode_holds_page_token("acct_1", datetime(2025, 1, 1, tzinfo=UTC), "hold\x00"),
    ],
)
def test_forged_holds_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_holds_page_token(token, "acct_1")


def test_a_holds_token_is_no_journal_token() -> None:
    token = encode_holds_page_token("acct_1", datetime(2025, 1, 1, tzinfo=UTC), "hold_x")
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token(token, "acct_1")
