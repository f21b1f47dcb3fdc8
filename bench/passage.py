"""The prose every synthesis bench speaks, so that their numbers describe the same text."""

from __future__ import annotations

PASSAGE = (
    "The lighthouse keeper climbed the spiral stairs each evening, counting the steps as his "
    "father had taught him. At the top, he wound the great clockwork, trimmed the wick, and "
    "watched the beam sweep across the dark water. Ships he would never meet passed safely "
    "in the night; their captains, far from home, trusted a light they could not name. "
    "Some winters the storms were so fierce that the glass shook in its frame, yet the lamp "
    "never failed. He kept a log of every vessel, every gale, and every quiet dawn, and when "
    "he grew old he gave the book to the girl from the village who had asked, year after "
    "year, to see the light up close. "
)


def text_of(length: int) -> str:
    """`length` characters of prose, cut at a word boundary and closed with a full stop."""
    repeated = (PASSAGE * (length // len(PASSAGE) + 2))[:length]
    return repeated[: repeated.rstrip().rfind(" ")].rstrip(",;") + "."
