"""What the usage page shows, computed from the ledger's answers: a chart and a table.

Pure functions over the protobuf messages, so the page's arithmetic (stacking by key, scaling,
naming outcomes) is tested without a browser. The chart is drawn on the server as inline SVG:
no charting script to ship or to trust, and a table of the same numbers beside it for screen
readers.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from kokoropay.ledger.v1 import ledger_pb2

# Colour-blind-safe (Okabe–Ito); keys beyond eight share colours, and the legend still names them.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#CC79A7", "#56B4E9", "#D55E00", "#F0E442", "#000000")
CHART_HEIGHT = 160
BAR_WIDTH = 16
BAR_GAP = 4
NO_KEY = "(no key)"
UNKNOWN_KEY = "(deleted key)"


@dataclass(frozen=True)
class Segment:
    key: str
    characters: int
    colour: str
    y: float
    height: float


@dataclass(frozen=True)
class Bar:
    day: dt.date
    x: int
    total: int
    segments: tuple[Segment, ...]


@dataclass(frozen=True)
class Chart:
    bars: tuple[Bar, ...]
    legend: tuple[tuple[str, str], ...]  # (key name, colour)
    peak: int
    width: int
    height: int
    total: int


@dataclass(frozen=True)
class RequestRow:
    time: str
    key: str
    characters: int
    charged: int
    voice: str
    response_format: str
    outcome: str


def key_label(key_id: str, key_names: Mapping[str, str]) -> str:
    if not key_id:
        return NO_KEY
    return key_names.get(key_id, UNKNOWN_KEY)


def daily_chart(
    usage: Iterable[ledger_pb2.DailyKeyUsage],
    key_names: Mapping[str, str],
    today: dt.date,
    days: int,
) -> Chart:
    """One bar per UTC day, oldest first, stacked by key; every day shown, empty ones too."""
    first = today - dt.timedelta(days=days - 1)
    per_day: dict[dt.date, dict[str, int]] = {}
    for row in usage:
        day = dt.date.fromisoformat(row.day)
        if first <= day <= today and row.characters > 0:
            label = key_label(row.key_id, key_names)
            keys = per_day.setdefault(day, {})
            keys[label] = keys.get(label, 0) + row.characters
    labels = sorted({label for keys in per_day.values() for label in keys})
    colours = {label: PALETTE[i % len(PALETTE)] for i, label in enumerate(labels)}
    peak = max((sum(keys.values()) for keys in per_day.values()), default=0)
    scale = CHART_HEIGHT / peak if peak else 0.0
    bars = []
    for index in range(days):
        day = first + dt.timedelta(days=index)
        keys = per_day.get(day, {})
        top = float(CHART_HEIGHT)
        segments = []
        for label in sorted(keys):
            height = max(keys[label] * scale, 1.0)  # a request is never invisible
            top -= height
            segments.append(Segment(label, keys[label], colours[label], top, height))
        bars.append(Bar(day, index * (BAR_WIDTH + BAR_GAP), sum(keys.values()), tuple(segments)))
    return Chart(
        bars=tuple(bars),
        legend=tuple(colours.items()),
        peak=peak,
        width=days * (BAR_WIDTH + BAR_GAP),
        height=CHART_HEIGHT,
        total=sum(bar.total for bar in bars),
    )


def charged(hold: ledger_pb2.Hold) -> int:
    """Credits the request cost: its capture, or for an expired hold the checkpoint it took."""
    if hold.state == ledger_pb2.HOLD_STATE_CAPTURED:
        return hold.captured_amount
    if hold.state == ledger_pb2.HOLD_STATE_EXPIRED:
        return hold.checkpointed
    return 0


def outcome(hold: ledger_pb2.Hold) -> str:
    """charged, partly charged, refunded, or in progress."""
    if hold.state == ledger_pb2.HOLD_STATE_HELD:
        return "in progress"
    spent = charged(hold)
    if spent == 0:
        return "refunded"
    return "charged" if spent >= hold.amount else "partly charged"


def request_rows(
    holds: Iterable[ledger_pb2.Hold], key_names: Mapping[str, str]
) -> list[RequestRow]:
    return [
        RequestRow(
            time=hold.create_time.ToDatetime(dt.UTC).strftime("%Y-%m-%d %H:%M:%S UTC"),
            key=key_label(hold.labels.key_id, key_names),
            characters=hold.amount,
            charged=charged(hold),
            voice=hold.labels.voice or "—",
            response_format=hold.labels.response_format or "—",
            outcome=outcome(hold),
        )
        for hold in holds
    ]
