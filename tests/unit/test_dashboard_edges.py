"""The dashboard's pure parts: whose address a request is, CSRF tokens, the usage page's sums."""

from __future__ import annotations

import datetime as dt

import pytest
from google.protobuf.timestamp_pb2 import Timestamp
from kokoropay.ledger.v1 import ledger_pb2

from services.common.client_address import (
    MAX_FORWARDED_LENGTH,
    client_address,
    parse_networks,
    throttle_key,
)
from services.dashboard import csrf
from services.dashboard.usage import daily_chart, outcome, request_rows

PROXIES = parse_networks("10.0.0.0/8, 192.168.1.7")


@pytest.mark.parametrize(
    ("peer", "forwarded", "expected"),
    [
        # No proxy in front: the peer, whatever the header claims.
        ("203.0.113.9", "198.51.100.1", "203.0.113.9"),
        # Through the trusted controller: the address it appended.
        ("10.1.2.3", "198.51.100.1", "198.51.100.1"),
        # A client that writes its own header first cannot choose its address.
        ("10.1.2.3", "1.2.3.4, 198.51.100.1", "198.51.100.1"),
        # Chains of trusted proxies are walked from the right.
        ("10.1.2.3", "198.51.100.1, 192.168.1.7, 10.9.9.9", "198.51.100.1"),
        # Garbage stops the walk at the last hop we can vouch for.
        ("10.1.2.3", "198.51.100.1, not-an-ip", "10.1.2.3"),
        ("10.1.2.3", None, "10.1.2.3"),
        (None, "198.51.100.1", "unknown"),
        ("2001:db8::1", "198.51.100.1", "2001:db8::1"),
    ],
)
def test_client_address_believes_only_trusted_proxies(
    peer: str | None, forwarded: str | None, expected: str
) -> None:
    assert client_address(peer, forwarded, PROXIES) == expected


def test_a_huge_forwarded_header_is_read_in_bounded_time() -> None:
    # Padded on the left by the client; the controller's entry is the last one.
    header = "1.1.1.1, " * 1_000_000 + "198.51.100.1"
    assert len(header) > 100 * MAX_FORWARDED_LENGTH
    assert client_address("10.1.2.3", header, PROXIES) == "198.51.100.1"


def test_ipv6_clients_are_throttled_by_their_64() -> None:
    assert throttle_key("2001:db8:1:2:aaaa::1") == throttle_key("2001:db8:1:2:bbbb::9")
    assert throttle_key("2001:db8:1:2:aaaa::1") == "2001:db8:1:2::/64"
    assert throttle_key("198.51.100.1") == "198.51.100.1"
    assert throttle_key("unknown") == "unknown"


def test_a_bad_trusted_proxy_setting_names_the_entry() -> None:
    with pytest.raises(ValueError, match="'10.0.0.300'"):
        parse_networks("10.0.0.0/8, 10.0.0.300")


def test_csrf_tokens_belong_to_their_secret() -> None:
    session, other = "s" * 43, "t" * 43
    token = csrf.token_for(session)
    assert csrf.matches(session, token)
    assert not csrf.matches(other, token)
    assert not csrf.matches(session, "")
    assert not csrf.matches(None, token)
    assert not csrf.matches(session, token + "x" * 200)
    assert not csrf.matches(session, "é" * 43)  # refused, not a TypeError
    assert token != session  # the form never carries the cookie's secret itself


def _hold(state: int, amount: int, captured: int = 0, checkpointed: int = 0) -> ledger_pb2.Hold:
    created = Timestamp()
    created.FromDatetime(dt.datetime(2026, 11, 30, 12, 0, tzinfo=dt.UTC))
    return ledger_pb2.Hold(
        state=state,  # type: ignore[arg-type]
        amount=amount,
        captured_amount=captured,
        checkpointed=checkpointed,
        create_time=created,
        labels=ledger_pb2.UsageLabels(key_id="key_a", voice="af_sky", response_format="mp3"),
    )


def test_outcomes_say_what_the_customer_paid() -> None:
    assert outcome(_hold(ledger_pb2.HOLD_STATE_CAPTURED, 10, captured=10)) == "charged"
    assert outcome(_hold(ledger_pb2.HOLD_STATE_CAPTURED, 10, captured=4)) == "partly charged"
    assert outcome(_hold(ledger_pb2.HOLD_STATE_RELEASED, 10)) == "refunded"
    assert outcome(_hold(ledger_pb2.HOLD_STATE_EXPIRED, 10, checkpointed=3)) == "partly charged"
    assert outcome(_hold(ledger_pb2.HOLD_STATE_EXPIRED, 10)) == "refunded"
    assert outcome(_hold(ledger_pb2.HOLD_STATE_HELD, 10)) == "in progress"
    [row] = request_rows([_hold(ledger_pb2.HOLD_STATE_CAPTURED, 10, captured=4)], {"key_a": "ci"})
    assert (row.key, row.characters, row.charged, row.voice) == ("ci", 10, 4, "af_sky")
    assert row.time == "2026-11-30 12:00:00 UTC"


def test_the_chart_has_every_day_and_stacks_keys() -> None:
    today = dt.date(2026, 11, 30)
    usage = [
        ledger_pb2.DailyKeyUsage(day="2026-11-30", key_id="key_a", characters=30, requests=2),
        ledger_pb2.DailyKeyUsage(day="2026-11-30", key_id="key_b", characters=10, requests=1),
        ledger_pb2.DailyKeyUsage(day="2026-11-01", key_id="", characters=5, requests=1),
        ledger_pb2.DailyKeyUsage(day="2026-10-31", key_id="key_a", characters=99, requests=1),
    ]
    chart = daily_chart(usage, {"key_a": "laptop"}, today, days=30)
    assert len(chart.bars) == 30
    assert chart.bars[0].day == dt.date(2026, 11, 1) and chart.bars[-1].day == today
    assert chart.total == 45 and chart.peak == 40  # 10-31 is outside the 30 days
    last = chart.bars[-1]
    assert {(s.key, s.characters) for s in last.segments} == {
        ("laptop", 30),
        ("(deleted key)", 10),
    }
    assert sum(s.height for s in last.segments) == pytest.approx(chart.height)
    assert [label for label, _ in chart.legend] == ["(deleted key)", "(no key)", "laptop"]
