"""Ledger request checks and page tokens: the rules a caller meets before any SQL runs."""

from __future__ import annotations

import pytest

from services.ledger import validation
from services.ledger.ids import new_hold_id
from services.ledger.paging import decode_page_token, encode_page_token
from services.ledger.validation import InvalidArgument


@pytest.mark.parametrize("value", ["a", "acct_01J" + "x" * 120, "ключ-🔑"])
def test_ids_and_keys_up_to_128_characters_pass(value: str) -> None:
    assert validation.require_id(value, "account_id") == value
    assert validation.require_key(value) == value


@pytest.mark.parametrize(
    "value,complaint",
    [("", "required"), ("x" * 129, "longer than 128"), ("a\x00b", "control"), ("a\tb", "control")],
)
def test_bad_ids_are_refused_naming_the_field(value: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=f"hold_id.*{complaint}"):
        validation.require_id(value, "hold_id")


@pytest.mark.parametrize("amount", [0, -1, validation.MAX_AMOUNT + 1])
def test_amounts_must_be_positive_and_bounded(amount: int) -> None:
    with pytest.raises(InvalidArgument, match="amount"):
        validation.require_amount(amount)


def test_ttl_zero_is_the_default_and_above_the_maximum_is_refused() -> None:
    assert validation.hold_ttl(0, default=900, maximum=3600) == 900
    assert validation.hold_ttl(3600, default=900, maximum=3600) == 3600
    with pytest.raises(InvalidArgument, match="ttl_seconds"):
        validation.hold_ttl(3601, default=900, maximum=3600)


def test_page_size_defaults_to_50_and_is_capped_at_500() -> None:
    assert [validation.page_size(n) for n in (0, 1, 500, 501, 10_000)] == [50, 1, 500, 500, 500]


def test_page_tokens_round_trip_for_their_account_only() -> None:
    token = encode_page_token("acct_1", 42)

    assert decode_page_token(token, "acct_1") == 42
    assert decode_page_token("", "acct_1") is None
    with pytest.raises(InvalidArgument, match="another account"):
        decode_page_token(token, "acct_2")


@pytest.mark.parametrize(
    "token",
    ["garbage!", "e30", encode_page_token("acct_1", 0), "eyJhIjoiYWNjdF8xIiwiYiI6IngifQ"],
)
def test_forged_page_tokens_are_refused(token: str) -> None:
    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token(token, "acct_1")


def test_hold_ids_are_unique_and_sort_by_creation_time() -> None:
    ids = [new_hold_id() for _ in range(1000)]

    assert len(set(ids)) == 1000
    assert all(hold_id.startswith("hold_") and len(hold_id) == 31 for hold_id in ids)
    # Same millisecond ids differ only in their random part; across milliseconds they sort.
    assert [hold_id[:15] for hold_id in ids] == sorted(hold_id[:15] for hold_id in ids)


@pytest.mark.parametrize("value", ["evt_1NqV2kLkdIwHu7ix", "e" * 128, "évènement 1"])
def test_payment_event_ids_of_1_to_128_printable_characters_pass(value: str) -> None:
    assert validation.require_payment_event_id(value) == value


@pytest.mark.parametrize(
    "value,complaint",
    [
        ("", "required"),
        ("e" * 129, "longer than 128"),
        ("evt\n1", "control"),
        ("evt\u200b1", "not printable"),  # a zero-width space: two ids that read the same
        ("evt\u00a01", "not printable"),
    ],
)
def test_bad_payment_event_ids_are_refused(value: str, complaint: str) -> None:
    with pytest.raises(InvalidArgument, match=f"payment_event_id.*{complaint}"):
        validation.require_payment_event_id(value)


def test_top_up_credits_are_positive_and_at_most_the_cap() -> None:
    assert validation.top_up_credits(1, maximum=100) == 1
    assert validation.top_up_credits(100, maximum=100) == 100
    for credits in (0, -1, 101):
        with pytest.raises(InvalidArgument, match="credits"):
            validation.top_up_credits(credits, maximum=100)


def test_grant_keys_stay_out_of_the_top_ups_keys() -> None:
    assert validation.require_grant_key("cli-grant:1") == "cli-grant:1"
    assert validation.require_grant_key("topup-1") == "topup-1"
    with pytest.raises(InvalidArgument, match="topup:"):
        validation.require_grant_key("topup:evt_1")
    with pytest.raises(InvalidArgument, match="required"):
        validation.require_grant_key("")
