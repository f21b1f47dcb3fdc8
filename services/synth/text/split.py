"""Where text may be cut: sentence, clause and word boundaries, as spans of the input.

Spans index the original input in code points, so a chunk can say how many input characters
it has spoken, whatever normalization does to its text afterwards.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# A sentence ends at terminal punctuation (with any closing quotes or brackets) followed by
# whitespace, at full-width terminal punctuation (CJK puts no space after it), and at every line
# break: a new line is a new sentence or a heading.
_SENTENCE_END = re.compile(r"(?:[.!?…]+[\"'”’)\]]*(?=\s|$))|(?:[。！？]+[”’」』）]*)|\n")
# Clauses end at pausing punctuation followed by whitespace, or at full-width pausing marks.
_CLAUSE_END = re.compile(r"(?:(?:[,;:—–]|\s-)[\"'”’)\]]*(?=\s))|[，、；：]")
_WORD = re.compile(r"\S+")
# A full stop after one of these does not end a sentence.
_ABBREVIATION_LIST = "mr mrs ms dr prof sr jr st vs etc e.g i.e no fig approx dept est mt"
_ABBREVIATIONS = frozenset(_ABBREVIATION_LIST.split())


@dataclass(frozen=True)
class Span:
    start: int
    end: int

    def of(self, text: str) -> str:
        return text[self.start : self.end]


def _strip(text: str, start: int, end: int) -> Span | None:
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return Span(start, end) if end > start else None


def _split(text: str, within: Span, ends: list[int]) -> list[Span]:
    spans: list[Span] = []
    start = within.start
    for end in [*ends, within.end]:
        span = _strip(text, start, end)
        if span is not None:
            spans.append(span)
        start = end
    return spans


def _is_abbreviation(text: str, stop: int) -> bool:
    """Whether the full stop at `stop` closes an abbreviation like "Dr." or "e.g."."""
    if text[stop] != ".":
        return False
    word_start = stop
    while word_start > 0 and not text[word_start - 1].isspace():
        word_start -= 1
    word = text[word_start:stop].lower().lstrip("(\"'“")
    return word in _ABBREVIATIONS or (len(word) == 1 and word.isalpha())


def sentences(text: str) -> list[Span]:
    """The input's sentences, surrounding whitespace excluded."""
    ends = [
        match.end()
        for match in _SENTENCE_END.finditer(text)
        if match.group() == "\n" or not _is_abbreviation(text, match.start())
    ]
    return _split(text, Span(0, len(text)), ends)


def clauses(text: str, sentence: Span) -> list[Span]:
    """A sentence's clauses; the sentence itself when it has no pausing punctuation."""
    window = sentence.of(text)
    ends = [sentence.start + match.end() for match in _CLAUSE_END.finditer(window)]
    return _split(text, sentence, ends)


def words(text: str, span: Span) -> list[Span]:
    """A span's whitespace-separated words; one span per character when it has no spaces."""
    window = span.of(text)
    found = [Span(span.start + m.start(), span.start + m.end()) for m in _WORD.finditer(window)]
    if len(found) == 1 and found[0].end - found[0].start > 1:
        # Scripts written without spaces can still be cut, one character at a time.
        return [Span(i, i + 1) for i in range(found[0].start, found[0].end)]
    return found
